use std::collections::{BTreeMap, HashMap};
use std::path::Path;
fn inputs(d: &Path, p: &Path) -> Vec<(String, kiln_ir::Tensor)> {
    let bytes = std::fs::read(p).unwrap();
    let Ok(m) = kiln_onnx::decode_model(bytes.into()) else { return vec![] };
    let g = m.graph.unwrap();
    let inits: std::collections::HashSet<_> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    let names: Vec<String> = g.input.iter().map(|i| i.name().to_string()).filter(|n| !inits.contains(n)).collect();
    let mut out = vec![];
    for (i, n) in names.iter().enumerate() {
        let Ok(b) = std::fs::read(d.join(format!("test_data_set_0/input_{i}.pb"))) else { continue };
        if let Ok(t) = kiln_onnx::decode_tensor_proto(&b) { out.push((n.clone(), t)); }
    }
    out
}
fn main() {
    let root = std::env::args().nth(1).unwrap();
    let mut cats: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut ok, mut ok_frozen) = (0, 0);
    for suite in ["node", "simple", "pytorch-converted", "pytorch-operator", "light", "models"] {
        let Ok(rd) = std::fs::read_dir(format!("{root}/{suite}")) else { continue };
        let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let p = d.join("model.onnx");
            let name = format!("{suite}/{}", d.file_name().unwrap().to_string_lossy());
            let ins = inputs(&d, &p);
            let mut opts = kiln_onnx::ImportOptions::default();
            for (n, t) in &ins { opts.input_shapes.insert(n.clone(), t.shape().to_vec()); }
            let mut r = std::panic::catch_unwind(|| kiln_onnx::import_path(&p, &opts));
            let mut frozen = false;
            if let Ok(Err(e)) = &r {
                if e.to_string().contains("computed at run time") {
                    let consts: HashMap<String, kiln_ir::Tensor> = ins.iter().filter(|(_, t)| t.dtype() != kiln_ir::DType::F32).cloned().collect();
                    let mut o2 = opts.clone();
                    for k in consts.keys() { o2.input_shapes.remove(k); }
                    r = std::panic::catch_unwind(|| kiln_onnx::import_path_with_constants(&p, &o2, &consts));
                    frozen = true;
                }
            }
            match r {
                Err(_) => cats.entry("PANIC".into()).or_default().push(name),
                Ok(Ok(g)) => match kiln_ir::verify::verify(&g) {
                    Ok(()) => {
                        if frozen { ok_frozen += 1 } else { ok += 1 }
                        let work: usize = g.order().iter().map(|&n| g.node(n).outputs.iter().map(|&v| g.ty(v).numel()).sum::<usize>()).sum();
                        if work > 300_000 || suite == "models" || suite == "light" { continue; }
                        let r = std::panic::catch_unwind(|| run_check(&g, &d, &ins));
                        match r {
                            Err(_) => cats.entry("EVAL PANIC".into()).or_default().push(name),
                            Ok(Err(e)) => cats.entry(format!("NUM {}", e.chars().take(150).collect::<String>())).or_default().push(name),
                            Ok(Ok(())) => *cats.entry("NUM-OK".into()).or_default() = vec![format!("{}", cats.get("NUM-OK").map(|v| v[0].parse::<usize>().unwrap()+1).unwrap_or(1))],
                        }
                    }
                    Err(e) => cats.entry(format!("VERIFY {e}")).or_default().push(name),
                },
                Ok(Err(e)) => {
                    let s = e.to_string();
                    let key = match &e {
                        kiln_onnx::ImportError::UnsupportedOps(l) => format!("UNSUP {}", l.iter().map(|o| format!("{}{}", o.op_type, o.reason.as_deref().map(|r| format!(" [{r}]")).unwrap_or_default())).collect::<Vec<_>>().join(",")),
                        kiln_onnx::ImportError::Node { op_type, .. } => format!("NODE {op_type}: {s}"),
                        _ => s.clone(),
                    };
                    cats.entry(key).or_default().push(name);
                }
            }
        }
    }
    println!("OK {ok} OK-frozen {ok_frozen}");
    for (k, v) in &cats {
        println!("{:4} {}  e.g. {}", v.len(), k.chars().take(300).collect::<String>(), v[..v.len().min(3)].join(" "));
    }
}

fn run_check(g: &kiln_ir::Graph, d: &Path, ins: &[(String, kiln_ir::Tensor)]) -> Result<(), String> {
    use kiln_ir::{Data, ValueId};
    let mut vals: HashMap<ValueId, kiln_ir::Tensor> = HashMap::new();
    for &v in &g.inputs {
        let n = &g.value(v).name;
        let t = ins.iter().find(|(m, _)| m == n).ok_or("no input data")?.1.clone();
        vals.insert(v, t);
    }
    let get = |vals: &HashMap<ValueId, kiln_ir::Tensor>, v: ValueId| -> kiln_ir::Tensor {
        g.const_of(v).cloned().unwrap_or_else(|| vals[&v].clone())
    };
    for &n in g.order() {
        let node = g.node(n);
        let ts: Vec<kiln_ir::Tensor> = node.inputs.iter().map(|&v| get(&vals, v)).collect();
        let refs: Vec<&kiln_ir::Tensor> = ts.iter().collect();
        let outs = kiln_ir::eval::eval(&node.op, &refs).map_err(|e| format!("eval {}: {e}", node.op.name()))?;
        for (&v, t) in node.outputs.iter().zip(outs) { vals.insert(v, t); }
    }
    for (k, &v) in g.outputs.iter().enumerate() {
        let Ok(b) = std::fs::read(d.join(format!("test_data_set_0/output_{k}.pb"))) else { return Err("no output".into()) };
        let want = kiln_onnx::decode_tensor_proto(&b).map_err(|e| e.to_string())?;
        let got = get(&vals, v);
        if got.ty != want.ty { return Err(format!("output {k}: type {} want {}", got.ty, want.ty)); }
        match (got.data(), want.data()) {
            (Data::F32(a), Data::F32(b)) => {
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-4 + 1e-3 * y.abs();
                    if !ok { return Err(format!("output {k}: element {i}: {x} vs {y}")); }
                }
            }
            (a, b) => if a != b { return Err(format!("output {k}: values differ")); },
        }
    }
    Ok(())
}
