//! The text forms a compilation can stop at: HIR or LIR after any step of the pipeline, LLVM
//! IR, assembly, the GPU partitions' PTX.

use std::path::Path;

use kiln_backend_cpu::Emit;
use kiln_passes::partition::DeviceKind;
use kiln_passes::pipeline::{self, Until};

use crate::{Compiler, Error};

impl Compiler {
    /// The PTX of each GPU partition of the ONNX file `path` (`kiln compile --emit ptx`): the
    /// partition's index and its module's text. An error when no partition runs on a GPU.
    pub fn emit_ptx(&self, path: impl AsRef<Path>) -> Result<Vec<(usize, String)>, Error> {
        let no_gpu = || Error::Devices {
            target: if self.partitioned() { self.devices_text() } else { "cpu".into() },
            message: "no partition runs on a GPU, so there is no PTX (give a target list with `cuda`)".into(),
        };
        if !self.opts.devices.iter().any(|d| d.kind == DeviceKind::Cuda) {
            return Err(no_gpu());
        }
        let mut g = self.import_path(path)?;
        let split = self.split(&mut g)?;
        let mut out = Vec::new();
        for (i, (p, l)) in split.plan.partitions.iter().zip(&split.partitions).enumerate() {
            if split.plan.devices[p.device].kind == DeviceKind::Cuda {
                out.push((i, kiln_backend_cuda::compile(&l.lowered.program, &self.opts.cuda)?.ptx));
            }
        }
        if out.is_empty() {
            return Err(no_gpu());
        }
        Ok(out)
    }

    /// The LIR programs the ONNX file `path` compiles to (one per partition, in order), after
    /// the whole pipeline: what `--emit lir` prints.
    pub fn lower_path(&self, path: impl AsRef<Path>) -> Result<Vec<kiln_ir::lir::Program>, Error> {
        let mut g = self.import_path(path)?;
        if self.partitioned() {
            let split = self.split(&mut g)?;
            return Ok(split.partitions.into_iter().map(|l| l.lowered.program).collect());
        }
        let cpu = self.cpu_steps();
        let out = pipeline::run(&mut g, &pipeline::Context::new(&cpu, self.opts.verify), Until::End)?;
        Ok(out.lowered.into_iter().map(|l| l.program).collect())
    }

    /// The IR after pass `after` (or the whole pipeline) as text: HIR, LIR, LLVM IR or assembly.
    /// For a model split across devices, each partition's, after a `# partition` line.
    pub fn emit(&self, path: impl AsRef<Path>, what: &str, after: Option<&str>) -> Result<String, Error> {
        if what == "ptx" {
            let ptx = self.emit_ptx(path)?;
            return Ok(ptx.into_iter().map(|(_, text)| text).collect::<Vec<_>>().join("\n"));
        }
        if self.partitioned() && after.is_none() {
            let mut g = self.import_path(path)?;
            let split = self.split(&mut g)?;
            let plan = &split.plan;
            let mut out = String::new();
            for (i, (p, l)) in plan.partitions.iter().zip(&split.partitions).enumerate() {
                out.push_str(&format!("# partition {i} on device {} ({})\n", p.device, plan.devices[p.device]));
                out.push_str(&match what {
                    "hir" => kiln_ir::text::print(&l.graph),
                    "lir" => kiln_ir::lir::print(&l.lowered.program),
                    "llvm" | "asm" => {
                        let e = if what == "llvm" { Emit::Llvm } else { Emit::Asm };
                        kiln_backend_cpu::emit_text(&l.lowered.program, &self.opts.target, e)?
                    }
                    other => return Err(Error::UnknownTarget(format!("--emit {other}"))),
                });
            }
            return Ok(out);
        }
        let mut g = self.import_path(path)?;
        // Stop after `after` (`import`: before every step); without it, HIR stops after the
        // last HIR step and the others run the whole pipeline.
        let until = match after {
            Some("import") => None,
            Some(a) => {
                Self::check_pass_name(a)?;
                Some(Until::After(a))
            }
            None if what == "hir" => Some(Until::Hir),
            None => Some(Until::End),
        };
        let lowered = match until {
            Some(until) => {
                let cpu = self.cpu_steps();
                pipeline::run(&mut g, &pipeline::Context::new(&cpu, self.opts.verify), until)?.lowered
            }
            None => None,
        };
        let step = after.unwrap_or_default().to_string();
        match (what, lowered) {
            ("hir", None) => Ok(kiln_ir::text::print(&g)),
            ("hir", Some(_)) => Err(Error::AfterInOtherIr(step, "LIR", "lir, llvm or asm")),
            ("lir" | "llvm" | "asm", None) => Err(Error::AfterInOtherIr(step, "HIR", "hir")),
            ("lir", Some(l)) => Ok(kiln_ir::lir::print(&l.program)),
            ("llvm" | "asm", Some(l)) => {
                let e = if what == "llvm" { Emit::Llvm } else { Emit::Asm };
                Ok(kiln_backend_cpu::emit_text(&l.program, &self.opts.target, e)?)
            }
            (other, _) => Err(Error::UnknownTarget(format!("--emit {other}"))),
        }
    }
}
