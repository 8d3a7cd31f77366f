//! `kiln-decode`: greedy generation with a decoder compiled with a run-time key/value cache,
//! for the peer script's decode mode (`benches/peers/run.py --decode`).
//!
//! The decoder takes `input_ids` and `position_ids` (`[1, 1]` i64) and a `past_*` input per
//! cached tensor, and gives the logits first and a `present_*` output per cached tensor (one
//! longer along the run-time past axis), as Hugging Face's decoders are exported. A
//! generation feeds the prompt token by token, then its own greedy picks, each step's
//! `present_*` fed back as the next `past_*`.
//!
//!     kiln-decode ARTIFACT --prompt 17,101,3 --tokens 32 [--threads N]          prints tokens=…
//!     kiln-decode ARTIFACT --prompt 17,101,3 --tokens 32 [--threads N] --serve
//!
//! With `--serve` it reads a count per line from stdin and answers `times_ms=<t1>,…`, one
//! figure per generation: its time divided by its steps (milliseconds per token).

use std::io::BufRead;
use std::time::Instant;

use kiln::{Session, SessionOptions, TensorRef};

struct Decoder {
    s: Session,
    /// Per input: `Some(k)` when it is the past of output `k`.
    past_of: Vec<Option<usize>>,
    /// The inputs' bound shapes (their run-time past axis at 0 to begin with).
    empty: Vec<Vec<usize>>,
}

impl Decoder {
    fn new(path: &str, threads: usize) -> Result<Decoder, String> {
        let s =
            Session::load_with(path, &SessionOptions { threads, ..Default::default() }).map_err(|e| e.to_string())?;
        let outs: Vec<String> = s.outputs().iter().map(|o| o.name.clone()).collect();
        let mut past_of = Vec::new();
        let mut empty = Vec::new();
        for (i, spec) in s.inputs().iter().enumerate() {
            let name = &spec.name;
            if i < 2 {
                let want = ["input_ids", "position_ids"][i];
                if name != want {
                    return Err(format!("input {i} is `{name}`, not `{want}`"));
                }
                past_of.push(None);
                empty.push(vec![1, 1]);
                continue;
            }
            let present = name.replacen("past", "present", 1);
            let k = outs.iter().position(|o| *o == present).ok_or(format!("no output `{present}` for `{name}`"))?;
            // The past axis is the input's run-time dim: empty before the first token.
            let shape = spec
                .shape
                .iter()
                .zip(spec.dim_slots.iter().copied().chain(std::iter::repeat(-1)))
                .map(|(&n, slot)| if slot >= 0 { 0 } else { n as usize })
                .collect();
            past_of.push(Some(k));
            empty.push(shape);
        }
        Ok(Decoder { s, past_of, empty })
    }

    /// Greedy generation of `n` tokens after `prompt`: the tokens and the steps run.
    fn generate(&self, prompt: &[i64], n: usize) -> Result<(Vec<i64>, usize), String> {
        let mut cache: Vec<(Vec<usize>, Vec<f32>)> = self.empty[2..].iter().map(|s| (s.clone(), vec![])).collect();
        let mut tokens = Vec::with_capacity(n);
        let steps = prompt.len() + n - 1;
        for pos in 0..steps {
            let tok = [if pos < prompt.len() { prompt[pos] } else { tokens[tokens.len() - 1] }];
            let at = [pos as i64];
            let mut inputs = vec![TensorRef::i64(&[1, 1], &tok), TensorRef::i64(&[1, 1], &at)];
            inputs.extend(cache.iter().map(|(shape, data)| TensorRef::f32(shape, data)));
            let outs = self.s.run(&inputs).map_err(|e| e.to_string())?;
            if pos + 1 >= prompt.len() {
                let logits = outs[0].to_f32().ok_or("the logits are not f32")?;
                let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0);
                tokens.push(best as i64);
            }
            for (c, k) in cache.iter_mut().zip(self.past_of[2..].iter().flatten()) {
                let t = &outs[*k];
                *c = (t.shape.clone(), t.to_f32().ok_or("a present output is not f32")?);
            }
        }
        Ok((tokens, steps))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kiln-decode: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let (mut prompt, mut n, mut threads, mut serve) = (vec![], 32usize, 0usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--prompt" => {
                prompt = value()?
                    .split(',')
                    .map(|t| t.trim().parse::<i64>().map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--tokens" => n = value()?.parse().map_err(|e| format!("--tokens: {e}"))?,
            "--threads" => threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--serve" => serve = true,
            p if path.is_none() && !p.starts_with("--") => path = Some(p.to_string()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let path = path.ok_or("usage: kiln-decode ARTIFACT --prompt IDS [--tokens N] [--threads N] [--serve]")?;
    if prompt.is_empty() || n == 0 {
        return Err("--prompt needs at least one token and --tokens at least 1".into());
    }
    let d = Decoder::new(&path, threads)?;
    if !serve {
        let (tokens, _) = d.generate(&prompt, n)?;
        let t: Vec<String> = tokens.iter().map(i64::to_string).collect();
        println!("tokens={}", t.join(","));
        return Ok(());
    }
    d.generate(&prompt, n)?;
    for line in std::io::stdin().lock().lines() {
        let count: usize = line.map_err(|e| e.to_string())?.trim().parse().map_err(|e| format!("count: {e}"))?;
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            let (_, steps) = d.generate(&prompt, n)?;
            times.push(format!("{:.4}", t.elapsed().as_secs_f64() * 1e3 / steps as f64));
        }
        println!("times_ms={}", times.join(","));
    }
    Ok(())
}
