//! Per-kernel profiles: the compiled code calls [`hook`] around each instruction that does
//! work (ABI 1.8), a run's [`Recorder`] notes the times, and the session's [`Profiler`]
//! keeps every run's spans until [`crate::Session::end_profiling`] hands them over as a
//! [`Profile`]: Chrome trace events (what Perfetto and `chrome://tracing` open) and tables by
//! op type and by kernel.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use kiln_abi::manifest::{KernelInfo, Manifest};

/// One timed span of a run, in nanoseconds since the profiler started.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// What ran: an index into [`Profile::kernels`], or a step of the runtime's own.
    pub what: SpanKind,
    pub start_ns: u64,
    pub dur_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SpanKind {
    Kernel(usize),
    /// A step of the runtime's own: a partition on a GPU (its copies and launches), or the
    /// copy of a slot from one partition's result to where the caller or another reads it.
    Runtime(String),
}

/// One run: its span (the whole call, input checks included), the thread it ran for, and
/// the spans of the work it did.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub start_ns: u64,
    pub dur_ns: u64,
    pub thread: u32,
    pub spans: Vec<Span>,
}

/// Everything a session's runs recorded since profiling started.
#[derive(Clone, Debug)]
pub struct Profile {
    pub model: String,
    /// The manifest's description of each timed instruction.
    pub kernels: Vec<KernelInfo>,
    pub runs: Vec<RunRecord>,
}

/// The per-session collector.
pub(crate) struct Profiler {
    origin: Instant,
    /// Index in `kernels` of each (part, event).
    index: BTreeMap<(u32, u32), usize>,
    kernels: Vec<KernelInfo>,
    model: String,
    runs: Mutex<Vec<RunRecord>>,
}

/// One run's marks, written by [`hook`] on whichever thread runs the entry.
pub(crate) struct Recorder {
    pub(crate) part: u32,
    start: Instant,
    marks: Vec<(u32, u32, u32, Instant)>,
    extra: Vec<(String, Instant, Instant)>,
}

/// The context's profiling hook: `data` is the run's [`Recorder`].
///
/// # Safety
/// `data` must point at a live `Recorder` that nothing else touches during the call (the
/// entry calls the hook from the one thread that runs it, between the instructions).
pub(crate) unsafe extern "C" fn hook(data: *mut core::ffi::c_void, event: u32, end: u32) {
    let now = Instant::now();
    // SAFETY: as the function's contract says.
    let rec = unsafe { &mut *(data as *mut Recorder) };
    rec.marks.push((rec.part, event, end, now));
}

/// A small number per calling thread, for the trace's thread ids.
fn thread_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    thread_local! {
        static ID: u32 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

impl Profiler {
    pub(crate) fn new(manifest: &Manifest) -> Profiler {
        let index = manifest.kernels.iter().enumerate().map(|(i, k)| ((k.part, k.event), i)).collect();
        Profiler {
            origin: Instant::now(),
            index,
            kernels: manifest.kernels.clone(),
            model: manifest.model_name.clone(),
            runs: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn recorder(&self) -> Recorder {
        Recorder {
            part: 0,
            start: Instant::now(),
            marks: Vec::with_capacity(2 * self.kernels.len()),
            extra: Vec::new(),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Pairs the run's marks into spans and keeps them.
    pub(crate) fn finish(&self, rec: Recorder) {
        let end = Instant::now();
        let mut spans = Vec::with_capacity(rec.marks.len() / 2 + rec.extra.len());
        let mut open: Option<(u32, u32, Instant)> = None;
        for &(part, event, is_end, t) in &rec.marks {
            match (is_end, open) {
                (0, _) => open = Some((part, event, t)),
                (_, Some((p, e, t0))) if p == part && e == event => {
                    if let Some(&k) = self.index.get(&(part, event)) {
                        let start_ns = self.ns(t0);
                        spans.push(Span { what: SpanKind::Kernel(k), start_ns, dur_ns: self.ns(t) - start_ns });
                    }
                    open = None;
                }
                _ => open = None,
            }
        }
        for (label, t0, t1) in rec.extra {
            let start_ns = self.ns(t0);
            spans.push(Span { what: SpanKind::Runtime(label), start_ns, dur_ns: self.ns(t1) - start_ns });
        }
        spans.sort_by_key(|s| s.start_ns);
        let start_ns = self.ns(rec.start);
        let run = RunRecord { start_ns, dur_ns: self.ns(end) - start_ns, thread: thread_number(), spans };
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).push(run);
    }

    /// Hands over what was recorded so far and starts afresh.
    pub(crate) fn take(&self) -> Profile {
        let runs = std::mem::take(&mut *self.runs.lock().unwrap_or_else(|e| e.into_inner()));
        Profile { model: self.model.clone(), kernels: self.kernels.clone(), runs }
    }
}

impl Recorder {
    /// Notes a step of the runtime's own that ran from `start` until now.
    pub(crate) fn step(&mut self, label: String, start: Instant) {
        self.extra.push((label, start, Instant::now()));
    }
}

/// Time totals of one row of a [`Profile::table`].
#[derive(Clone, Debug, Default)]
struct Row {
    ns: u64,
    calls: u64,
    flops: u64,
    bytes: u64,
}

impl Profile {
    /// A span's name, op types and the arguments the trace shows for it.
    fn describe(&self, what: &SpanKind) -> (String, String, serde_json::Value) {
        match what {
            SpanKind::Kernel(k) => {
                let info = &self.kernels[*k];
                let ops: Vec<&str> = info.ops.iter().map(|s| if s.is_empty() { "?" } else { s.as_str() }).collect();
                let cat = if ops.is_empty() { info.kind.clone() } else { ops.join(",") };
                let args = serde_json::json!({
                    "kind": info.kind,
                    "nodes": info.nodes,
                    "ops": info.ops,
                    "flops": info.flops,
                    "bytes": info.bytes,
                    "part": info.part,
                    "event": info.event,
                });
                (info.name.clone(), cat, args)
            }
            SpanKind::Runtime(label) => (label.clone(), "runtime".into(), serde_json::json!({})),
        }
    }

    /// The profile as Chrome trace events (the JSON object format: `traceEvents` of complete
    /// events, `ph: "X"`, times in microseconds): one per run and one per kernel of each run,
    /// on the thread the run was called from.
    pub fn chrome_trace(&self) -> serde_json::Value {
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut events = vec![serde_json::json!({
            "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
            "args": { "name": format!("kiln: {}", self.model) },
        })];
        for (i, run) in self.runs.iter().enumerate() {
            events.push(serde_json::json!({
                "name": "run", "cat": "run", "ph": "X", "pid": 1, "tid": run.thread,
                "ts": us(run.start_ns), "dur": us(run.dur_ns), "args": { "run": i },
            }));
            for s in &run.spans {
                let (name, cat, args) = self.describe(&s.what);
                events.push(serde_json::json!({
                    "name": name, "cat": cat, "ph": "X", "pid": 1, "tid": run.thread,
                    "ts": us(s.start_ns), "dur": us(s.dur_ns), "args": args,
                }));
            }
        }
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }

    /// Writes [`Profile::chrome_trace`] to `path`.
    pub fn write_chrome_trace(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = serde_json::to_string(&self.chrome_trace()).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// Per run: its wall time and the sum of its kernels' (and runtime steps') times, in ns.
    pub fn run_totals(&self) -> Vec<(u64, u64)> {
        self.runs.iter().map(|r| (r.dur_ns, r.spans.iter().map(|s| s.dur_ns).sum())).collect()
    }

    /// Tables of where the time went, over every recorded run: by op type (a kernel counted
    /// under its first node's op, the one the others are fused into) and by kernel, each with
    /// its share of the kernels' total, time per run, calls per run and achieved GFLOP/s and
    /// GB/s; at most `top` kernels.
    pub fn table(&self, top: usize) -> String {
        let runs = self.runs.len().max(1) as u64;
        let mut by_op: BTreeMap<String, Row> = BTreeMap::new();
        let mut by_kernel: BTreeMap<String, Row> = BTreeMap::new();
        let mut total = 0u64;
        for s in self.runs.iter().flat_map(|r| &r.spans) {
            total += s.dur_ns;
            let (name, op, flops, bytes) = match &s.what {
                SpanKind::Kernel(k) => {
                    let info = &self.kernels[*k];
                    let op = info.ops.first().filter(|o| !o.is_empty()).cloned().unwrap_or_else(|| info.kind.clone());
                    // Each kernel a row of its own (two may share a name), its name cut short.
                    let mut name: String = info.name.chars().take(100).collect();
                    if name.len() < info.name.len() {
                        name.push('…');
                    }
                    (format!("{name} #{}.{}", info.part, info.event), op, info.flops, info.bytes)
                }
                SpanKind::Runtime(label) => (label.clone(), "(runtime)".into(), 0, 0),
            };
            for (map, key) in [(&mut by_op, op), (&mut by_kernel, name)] {
                let row = map.entry(key).or_default();
                row.ns += s.dur_ns;
                row.calls += 1;
                row.flops += flops;
                row.bytes += bytes;
            }
        }
        let wall: u64 = self.runs.iter().map(|r| r.dur_ns).sum();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "profile: {} run(s), {:.3} ms a run, kernels {:.3} ms a run ({:.1}% of the run)",
            self.runs.len(),
            wall as f64 / runs as f64 / 1e6,
            total as f64 / runs as f64 / 1e6,
            100.0 * total as f64 / wall.max(1) as f64
        );
        let mut section = |title: &str, map: BTreeMap<String, Row>, limit: usize| {
            let mut rows: Vec<(String, Row)> = map.into_iter().collect();
            rows.sort_by(|a, b| b.1.ns.cmp(&a.1.ns).then_with(|| a.0.cmp(&b.0)));
            let _ = writeln!(
                out,
                "\n{:>7} {:>11} {:>7} {:>9} {:>8}  {title}",
                "share", "ms/run", "calls", "GFLOP/s", "GB/s"
            );
            let shown = rows.len().min(limit);
            for (name, r) in &rows[..shown] {
                let secs = r.ns as f64 / 1e9;
                let rate =
                    |x: u64| if r.ns > 0 && x > 0 { format!("{:.1}", x as f64 / secs / 1e9) } else { "-".into() };
                let _ = writeln!(
                    out,
                    "{:>6.1}% {:>11.4} {:>7} {:>9} {:>8}  {name}",
                    100.0 * r.ns as f64 / total.max(1) as f64,
                    r.ns as f64 / runs as f64 / 1e6,
                    r.calls / runs,
                    rate(r.flops),
                    rate(r.bytes)
                );
            }
            if rows.len() > shown {
                let rest: u64 = rows[shown..].iter().map(|(_, r)| r.ns).sum();
                let _ = writeln!(
                    out,
                    "{:>6.1}% {:>11.4} {:>7} {:>9} {:>8}  ({} more)",
                    100.0 * rest as f64 / total.max(1) as f64,
                    rest as f64 / runs as f64 / 1e6,
                    "",
                    "",
                    "",
                    rows.len() - shown
                );
            }
        };
        section("op type", by_op, usize::MAX);
        section("kernel", by_kernel, top);
        out
    }
}
