//! A compilation's progress on the terminal: a line (indicatif) with the phase, the elapsed
//! time and, during code generation, the kernel bodies done, drawn on standard error once a
//! compilation has taken a second, and only when standard error is a terminal (piped or
//! redirected output stays as it was). Cleared when the compilation ends.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::{Progress, ProgressEvent};

/// The bar of the compilation under way, if one is drawn.
static BAR: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();

fn slot() -> &'static Mutex<Option<ProgressBar>> {
    BAR.get_or_init(|| Mutex::new(None))
}

/// The callback for a compilation's options: none when standard error is not a terminal.
pub fn for_terminal() -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::default();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    let style = |t: &str| ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_spinner());
    let (phase, counted) = (
        style("{spinner} compiling: {msg} [{elapsed}]"),
        style("{spinner} compiling: {msg} [{elapsed}] {wide_bar} {pos}/{len} kernels"),
    );
    bar.set_style(phase.clone());
    *slot().lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    let shown = bar.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        if !shown.is_finished() {
            shown.set_draw_target(ProgressDrawTarget::stderr());
            shown.enable_steady_tick(Duration::from_millis(120));
        }
    });
    Progress::new(move |event| match event {
        ProgressEvent::Phase(name) => {
            let what = match name {
                "import" => "importing the model",
                "optimize" => "optimizing, lowering, planning memory",
                "codegen" => "generating code",
                "link" => "linking",
                "write" => "writing the artifact",
                other => other,
            };
            bar.set_style(phase.clone());
            bar.set_message(what);
        }
        ProgressEvent::Kernels { done, total } => {
            if bar.length() != Some(total as u64) {
                bar.set_style(counted.clone());
                bar.set_length(total as u64);
            }
            bar.set_position(done as u64);
        }
    })
}

/// Ends the compilation's line, if one was drawn.
pub fn done() {
    if let Some(bar) = slot().lock().unwrap_or_else(|e| e.into_inner()).take() {
        bar.finish_and_clear();
    }
}
