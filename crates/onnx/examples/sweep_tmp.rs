use std::collections::BTreeMap;
fn main() {
    let root = std::env::args().nth(1).unwrap();
    let mut cats: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ok = 0;
    for suite in ["node", "simple", "pytorch-converted", "pytorch-operator", "light", "models"] {
        let Ok(rd) = std::fs::read_dir(format!("{root}/{suite}")) else { continue };
        let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let p = d.join("model.onnx");
            let name = format!("{suite}/{}", d.file_name().unwrap().to_string_lossy());
            let r = std::panic::catch_unwind(|| kiln_onnx::import_path(&p, &Default::default()));
            match r {
                Err(_) => cats.entry("PANIC".into()).or_default().push(name),
                Ok(Ok(g)) => match kiln_ir::verify::verify(&g) {
                    Ok(()) => ok += 1,
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
    println!("OK {ok}");
    for (k, v) in &cats {
        println!("{:4} {}  e.g. {}", v.len(), k.chars().take(300).collect::<String>(), v[..v.len().min(3)].join(" "));
    }
}
