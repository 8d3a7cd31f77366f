//! `kiln inspect MODEL --html FILE`: one self-contained page (no network) showing what the
//! compiler did. The page holds the data as JSON and a small script that draws it as SVG:
//!
//! * the kernels of the lowered program as a graph in schedule order (an edge where a kernel
//!   reads a buffer another wrote), each box coloured by the op type of its first node, with
//!   the model's nodes fused into it, its estimated FLOPs and bytes, the layout of what it
//!   writes (channels-last marked), its partition where the model is split, and its measured
//!   time when a profile (`kiln bench --profile`) is given;
//! * the memory plan: each arena buffer as a box from the instruction that first touches it
//!   to the last, at its arena offset, so the sharing of the arena over time shows.

use std::collections::{HashMap, HashSet};

use kiln_ir::lir::{BufferKind, Instr, Program};
use serde_json::{json, Value};

/// The page's data: kernels (the instructions that do work, numbered as profile events),
/// their edges, the arena buffers' live ranges, and the partition each kernel's nodes are in
/// (`partition_of`: by source node name; empty when the model is not split).
pub fn report_data(
    p: &Program,
    weights_bytes: u64,
    partition_of: &HashMap<String, usize>,
    devices: &[String],
    measured_us: &HashMap<u32, f64>,
) -> Value {
    let infos = crate::kernel_infos(p, 0);
    let mut writer: HashMap<u32, usize> = HashMap::new();
    let mut kernels = Vec::new();
    let mut edges = Vec::new();
    let mut range: HashMap<u32, (usize, usize)> = HashMap::new();
    let mut event = 0usize;
    let channels_last = channels_last_buffers(p);
    let layout = |b: u32| if channels_last.contains(&b) { "NHWC" } else { "" };
    for (i, ins) in p.instrs.iter().enumerate() {
        let (reads, writes) = ins.reads_writes();
        let (reads, write): (Vec<u32>, Option<u32>) =
            (reads.iter().map(|b| b.0).collect(), writes.first().map(|b| b.0));
        for b in reads.iter().chain(&write) {
            range.entry(*b).and_modify(|r| r.1 = i).or_insert((i, i));
        }
        if !ins.does_work() {
            continue;
        }
        let info = &infos[event];
        let mut from: Vec<usize> = reads.iter().filter_map(|b| writer.get(b).copied()).collect();
        from.sort();
        from.dedup();
        for f in from {
            edges.push(json!([f, event]));
        }
        let partition = info.nodes.iter().find_map(|n| partition_of.get(n)).copied();
        kernels.push(json!({
            "event": event,
            "name": info.name,
            "kind": info.kind,
            "nodes": info.nodes,
            "ops": info.ops,
            "flops": info.flops,
            "bytes": info.bytes,
            "layout": write.map_or("", layout),
            "partition": partition,
            "time_us": measured_us.get(&(event as u32)),
        }));
        if let Some(b) = write {
            writer.insert(b, event);
        }
        event += 1;
    }
    let buffers: Vec<Value> = p
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.kind, BufferKind::Activation) && b.offset.is_some())
        .filter_map(|(id, b)| {
            let (first, last) = range.get(&(id as u32))?;
            Some(json!({
                "name": b.name,
                "bytes": b.bytes,
                "offset": b.offset,
                "first": first,
                "last": last,
                "layout": layout(id as u32),
            }))
        })
        .collect();
    json!({
        "model": p.name,
        "arena": p.arena_bytes,
        "weights": weights_bytes,
        "instructions": p.instrs.len(),
        "devices": devices,
        "kernels": kernels,
        "edges": edges,
        "buffers": buffers,
        "profiled": !measured_us.is_empty(),
    })
}

/// The buffers some 4-D view of which has its channels (axis 1) innermost, as the layout pass
/// lays out convolutions' activations (shown `NHWC`; the others are row-major).
fn channels_last_buffers(p: &Program) -> HashSet<u32> {
    p.instrs
        .iter()
        .filter_map(|ins| if let Instr::Kernel(k) = ins { Some(k) } else { None })
        .flat_map(|k| &k.inputs)
        .filter(|v| v.extents.len() == 4 && v.extents[1] > 1 && v.strides[1] == 1 && v.strides[3] > 1)
        .map(|v| v.buffer.0)
        .collect()
}

/// The mean time of each profile event over the runs of a Chrome trace written by
/// `kiln bench --profile` (kernel events carry their event number in `args.event`).
pub fn measured_times(trace: &Value) -> HashMap<u32, f64> {
    let mut sums: HashMap<u32, (f64, u32)> = HashMap::new();
    for e in trace["traceEvents"].as_array().into_iter().flatten() {
        let (Some(ev), Some(dur)) = (e["args"]["event"].as_u64(), e["dur"].as_f64()) else { continue };
        let s = sums.entry(ev as u32).or_default();
        s.0 += dur;
        s.1 += 1;
    }
    sums.into_iter().map(|(k, (t, n))| (k, t / n as f64)).collect()
}

/// The whole page for `data` ([`report_data`]).
pub fn html_page(data: &Value) -> String {
    // `</` cannot appear inside the script element: the JSON escapes it.
    let json = data.to_string().replace("</", "<\\/");
    let title = data["model"].as_str().unwrap_or("model").replace(['<', '>', '&'], "_");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>kiln: {title}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<header id=\"summary\"></header>\n\
         <section><h2>Kernels</h2><p class=\"note\">In schedule order; an arrow where a kernel reads what another \
         wrote. Colour: op type of the kernel's first node (the one the others are fused into). Hover a box for its \
         nodes.</p><div id=\"legend\"></div><div class=\"scroll\"><svg id=\"graph\"></svg></div></section>\n\
         <section><h2>Memory plan</h2><p class=\"note\">Each arena buffer from the first instruction that touches \
         it to the last (x), at its offset in the arena (y).</p><div class=\"scroll\"><svg id=\"memory\"></svg></div>\
         </section>\n<script id=\"data\" type=\"application/json\">{json}</script>\n<script>{SCRIPT}</script>\n\
         </body>\n</html>\n"
    )
}

const STYLE: &str = "body{font:13px system-ui,sans-serif;margin:16px;color:#222}h1{font-size:20px;margin:0 0 4px}\
h2{font-size:16px;margin:18px 0 4px}.note{color:#666;margin:2px 0 6px}.scroll{overflow:auto;border:1px solid #ddd;\
max-height:1400px}svg text{font:11px system-ui,sans-serif}#legend span{display:inline-block;margin:0 10px 4px 0}\
#legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}.stat{margin-right:18px}";

const SCRIPT: &str = r###"
"use strict";
window.addEventListener("error", e => { document.body.dataset.errors = (document.body.dataset.errors || "") + e.message + ";"; });
const D = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function bytes(n) {
  if (n == null) return "-";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < 3) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function si(n) { return n >= 1e9 ? (n / 1e9).toFixed(2) + " G" : n >= 1e6 ? (n / 1e6).toFixed(2) + " M" : n >= 1e3 ? (n / 1e3).toFixed(1) + " k" : String(n); }
const palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295"];
const opOf = k => (k.ops.find(o => o) || k.kind);
const ops = [...new Set(D.kernels.map(opOf))].sort();
const colour = {}; ops.forEach((o, i) => colour[o] = palette[i % palette.length]);
const partColour = ["#222", "#c00", "#070", "#00a", "#a0a", "#0aa"];

const totalFlops = D.kernels.reduce((a, k) => a + k.flops, 0);
const summary = document.getElementById("summary");
const h1 = document.createElement("h1"); h1.textContent = "kiln: " + D.model; summary.appendChild(h1);
const stats = [["kernels", D.kernels.length], ["instructions", D.instructions], ["arena", bytes(D.arena)],
  ["weights", bytes(D.weights)], ["FLOPs", si(totalFlops)]];
if (D.devices.length > 1) stats.push(["partitions", D.devices.join(", ")]);
if (D.profiled) stats.push(["measured", (D.kernels.reduce((a, k) => a + (k.time_us || 0), 0) / 1000).toFixed(2) + " ms a run"]);
for (const [k, v] of stats) { const s = document.createElement("span"); s.className = "stat"; s.textContent = k + ": " + v; summary.appendChild(s); }
const legend = document.getElementById("legend");
for (const o of ops) { const s = document.createElement("span"); const i = document.createElement("i"); i.style.background = colour[o]; s.appendChild(i); s.appendChild(document.createTextNode(o)); legend.appendChild(s); }

// Kernel graph: rank = 1 + the highest rank of the kernels it reads from; columns within a rank.
const rank = new Array(D.kernels.length).fill(0);
const preds = D.kernels.map(() => []);
for (const [a, b] of D.edges) preds[b].push(a);
for (const k of D.kernels) for (const a of preds[k.event]) rank[k.event] = Math.max(rank[k.event], rank[a] + 1);
const rows = []; D.kernels.forEach(k => (rows[rank[k.event]] = rows[rank[k.event]] || []).push(k.event));
const W = 230, H = 46, GX = 20, GY = 30;
const width = Math.max(...rows.map(r => r.length)) * (W + GX) + GX;
const g = document.getElementById("graph");
g.setAttribute("width", width); g.setAttribute("height", rows.length * (H + GY) + GY);
const pos = {};
rows.forEach((r, y) => r.forEach((e, x) => pos[e] = [GX + x * (W + GX), GY / 2 + y * (H + GY)]));
el("defs", {}, g).innerHTML = '<marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#999"/></marker>';
for (const [a, b] of D.edges) {
  const [x1, y1] = pos[a], [x2, y2] = pos[b];
  el("path", { d: `M${x1 + W / 2},${y1 + H} C${x1 + W / 2},${y1 + H + GY / 2} ${x2 + W / 2},${y2 - GY / 2} ${x2 + W / 2},${y2}`, fill: "none", stroke: "#999", "marker-end": "url(#arrow)" }, g);
}
for (const k of D.kernels) {
  const [x, y] = pos[k.event];
  const box = el("g", { transform: `translate(${x},${y})` }, g);
  const part = k.partition == null ? null : k.partition;
  el("rect", { width: W, height: H, rx: 5, fill: colour[opOf(k)], "fill-opacity": 0.85, stroke: part == null ? "#333" : partColour[part % partColour.length], "stroke-width": part == null ? 1 : 3 }, box);
  const label = k.name.length > 34 ? k.name.slice(0, 33) + "…" : k.name;
  el("text", { x: 6, y: 15, fill: "#fff", "font-weight": "bold" }, box, label);
  let line = `${si(k.flops)}FLOP ${bytes(k.bytes)}` + (k.layout ? " · " + k.layout : "");
  el("text", { x: 6, y: 29, fill: "#fff" }, box, line);
  let third = k.nodes.length + " node" + (k.nodes.length == 1 ? "" : "s");
  if (part != null) third += " · " + (D.devices[part] || "partition " + part);
  if (k.time_us != null) third += ` · ${k.time_us.toFixed(1)} µs`;
  el("text", { x: 6, y: 42, fill: "#fff" }, box, third);
  el("title", {}, box, `${k.name}\n${k.kind}, event ${k.event}\nnodes: ${k.nodes.map((n, i) => n + " (" + (k.ops[i] || "?") + ")").join(", ")}\nFLOPs ${k.flops}, bytes ${k.bytes}` + (k.time_us != null ? `\nmeasured ${k.time_us.toFixed(2)} µs` : ""));
}

// Memory plan: instructions across, arena offsets down.
const m = document.getElementById("memory");
const MW = 1200, MH = 420, L = 70, T = 10;
m.setAttribute("width", MW + L + 20); m.setAttribute("height", MH + T + 40);
const xs = i => L + (i / Math.max(1, D.instructions)) * MW;
const ys = o => T + (o / Math.max(1, D.arena)) * MH;
el("rect", { x: L, y: T, width: MW, height: MH, fill: "#f7f7f7", stroke: "#ccc" }, m);
D.buffers.forEach((b, i) => {
  const r = el("rect", { x: xs(b.first), y: ys(b.offset), width: Math.max(1.5, xs(b.last + 1) - xs(b.first)), height: Math.max(1, ys(b.offset + b.bytes) - ys(b.offset)), fill: palette[i % palette.length], "fill-opacity": 0.75, stroke: "#fff", "stroke-width": 0.5 }, m);
  el("title", {}, r, `${b.name}: ${bytes(b.bytes)} at ${b.offset}, instructions ${b.first}–${b.last}` + (b.layout ? ", " + b.layout : ""));
});
for (let t = 0; t <= 4; t++) {
  const o = Math.round(D.arena * t / 4);
  el("text", { x: L - 6, y: ys(o) + 4, "text-anchor": "end" }, m, bytes(o));
}
el("text", { x: L + MW / 2, y: T + MH + 28, "text-anchor": "middle" }, m, `instruction (0–${D.instructions - 1})`);
document.body.dataset.rendered = "ok";
"###;
