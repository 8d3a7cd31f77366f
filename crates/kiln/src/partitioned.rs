//! Compiling a model split across devices into one artifact.

use std::collections::HashMap;

use kiln_abi::manifest::{Manifest, TensorSpec};
use kiln_ir::Graph;
use kiln_passes::memory::{MemoryReport, WeightSection};
use kiln_passes::partition::DeviceKind;

use crate::{lap_timer, Artifact, Compiler, Error};

impl Compiler {
    /// Compiles a graph split across devices: each partition into a program with entry
    /// points of its own (`kiln_p<i>_entry`), all linked into one library; the weight
    /// sections laid end to end; the manifest lists the partitions and the slots they read
    /// and write.
    pub(crate) fn compile_partitioned(
        &self,
        mut g: Graph,
        mut timings: Vec<(&'static str, std::time::Duration)>,
    ) -> Result<Artifact, Error> {
        let mut lap = lap_timer();
        let kiln_passes::partition::Split { plan, partitions: lowered, .. } = self.split(&mut g)?;
        lap("lower", &mut timings);
        let mut objects = Vec::new();
        let mut gpu: HashMap<usize, kiln_backend_cuda::CudaModule> = HashMap::new();
        for (i, (p, l)) in plan.partitions.iter().zip(&lowered).enumerate() {
            match plan.devices[p.device].kind {
                DeviceKind::Cpu => {
                    let names = kiln_backend_cpu::EntryNames::with_prefix(&format!("kiln_p{i}"));
                    let cache = &self.opts.kernel_cache;
                    let program = &l.lowered.program;
                    self.opts.progress.phase("codegen");
                    let report = self.opts.progress.kernels();
                    let report = report.as_ref().map(|f| f as &(dyn Fn(usize, usize) + Sync));
                    objects.push(kiln_backend_cpu::compile_objects(program, &self.opts.target, cache, &names, report)?);
                }
                DeviceKind::Cuda => {
                    gpu.insert(i, kiln_backend_cuda::compile(&l.lowered.program, &self.opts.cuda)?);
                }
            }
        }
        lap("codegen", &mut timings);
        let refs: Vec<&kiln_backend_cpu::CpuObjects> = objects.iter().collect();
        let code = if refs.is_empty() {
            Vec::new()
        } else {
            kiln_backend_cpu::link_shared_all(&refs, &self.opts.target, &self.opts.kernel_cache)?
        };
        lap("link", &mut timings);

        let slots = kiln_passes::partition::Slots::assign(&g, &plan);
        let mut weights = WeightSection::default();
        let mut partitions = Vec::with_capacity(lowered.len());
        let mut kernels = Vec::new();
        for (i, (p, l)) in plan.partitions.iter().zip(lowered.iter().map(|l| &l.lowered)).enumerate() {
            let base = weights.len.next_multiple_of(64);
            weights.pieces.extend(l.weights.pieces.iter().map(|(off, b)| (base + off, b.clone())));
            weights.len = base + l.weights.len;
            let cuda = gpu.remove(&i);
            if cuda.is_none() {
                kernels.extend(crate::kernel_infos(&l.program, i as u32));
            }
            partitions.push(kiln_abi::manifest::Partition {
                device: plan.devices[p.device].kind.name().to_string(),
                device_index: p.device as u32,
                entry: if cuda.is_some() { String::new() } else { format!("kiln_p{i}_entry") },
                arena_bytes: l.program.arena_bytes,
                weights_offset: base,
                weights_len: l.weights.len,
                inputs: p.inputs.iter().map(|v| slots.home[v]).collect(),
                outputs: p.outputs.iter().map(|v| slots.home[v]).collect(),
                check_messages: l.program.assert_messages(),
                ptx_arch: cuda.as_ref().map(|c| c.arch.clone()).unwrap_or_default(),
                launches: cuda.as_ref().map(|c| c.launches.clone()).unwrap_or_default(),
                ptx: cuda.map(|c| c.ptx).unwrap_or_default(),
            });
        }
        let reports = || lowered.iter().map(|l| &l.lowered.memory);
        let memory = MemoryReport {
            arena_bytes: reports().map(|m| m.arena_bytes).max().unwrap_or(0),
            lower_bound: reports().map(|m| m.lower_bound).max().unwrap_or(0),
            buffers: reports().map(|m| m.buffers).sum(),
            in_place: reports().map(|m| m.in_place).sum(),
        };
        let spec = |v: &kiln_ir::ValueId| {
            let t = g.ty(*v);
            TensorSpec {
                name: g.value(*v).name.clone(),
                dtype: t.dtype.code() as i32,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                ..Default::default()
            }
        };
        let manifest = Manifest {
            abi_major: kiln_abi::ABI_MAJOR,
            abi_minor: kiln_abi::ABI_MINOR,
            target_triple: self.opts.target.triple.clone(),
            target_cpu: self.opts.target.cpu.clone(),
            inputs: g.inputs.iter().map(spec).collect(),
            outputs: g.outputs.iter().map(spec).collect(),
            arena_bytes: memory.arena_bytes,
            model_name: g.name.clone(),
            producer: format!("kiln {}", env!("CARGO_PKG_VERSION")),
            partitions,
            kernels,
            intermediates: slots.intermediates.iter().map(spec).collect(),
            copies: slots.copies.iter().map(|&(from, to)| kiln_abi::manifest::SlotCopy { from, to }).collect(),
            devices: self.devices_text(),
            frozen_inputs: self.frozen_specs(),
            precision: self.opts.precision.name().into(),
            target_features: self.opts.target.features.clone(),
            ..Default::default()
        };
        Ok(Artifact { manifest, code, weights, memory, timings, external_weights: self.opts.external_weights })
    }
}
