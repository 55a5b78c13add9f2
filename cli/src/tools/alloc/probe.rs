//! The allocator probe loaded and aimed at every target's allocator: what
//! `ljprobe alloc` and `ljprobe leak` (with `addresses`) both start from.

use anyhow::{Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    Ebpf,
};
use ljprobe_common::{AllocConfig, GcCycles};

use super::{
    sampler::{Maps, Probed, Programs},
    site::Allocator,
};
use crate::{
    bpf::{self, gc_cycles::CyclePrograms, objects},
    stacks::StackBuilder,
    target::aim::Aim,
    tools::run_args::StackArgs,
};

pub struct AllocProbe {
    pub ebpf: Ebpf,
    pub allocators: Vec<Allocator>,
    /// `lj_tab_resize`'s code, when symbols name it.
    pub resize: Option<(u64, u64)>,
    pub maps: Maps,
    pub programs: Programs,
    pub builder: StackBuilder,
    pub native: bool,
}

impl AllocProbe {
    /// `addresses`: the return probe is loaded too and each new block's
    /// address is sent (`ljprobe leak`).
    pub fn load(aim: &Aim, stacks: &StackArgs, addresses: bool) -> Result<AllocProbe> {
        let mut ebpf = bpf::load(objects::ALLOC, "alloc")?;
        let seeded = bpf::aim_seeded(&mut ebpf, aim)?;
        let mut allocators = Vec::new();
        for (p, (_, g)) in aim.processes.iter().zip(&seeded) {
            allocators.push(Allocator::find(p, *g, aim.luajit.as_ref())?);
        }
        for (p, a) in aim.processes.iter().zip(&allocators) {
            log::info!(
                "pid {}: the VM allocates through {:#x} in {} (probed at file offset {:#x}, {})",
                p.pid,
                a.addr,
                a.file,
                a.site.offset,
                if a.entry.emulated { "one trap a call" } else { "single-stepped: two traps a call" }
            );
        }
        let resize = allocators.iter().find_map(|a| a.resize);
        let native = stacks.native();
        let base = AllocConfig {
            scale: 0,
            resize_lo: resize.map_or(0, |r| r.0),
            resize_hi: resize.map_or(0, |r| r.1),
            native: u32::from(native),
            kernel: u32::from(stacks.kernel),
            addresses: u32::from(addresses),
            _pad: 0,
        };
        let mut config: Array<MapData, AllocConfig> = Array::try_from(ebpf.take_map("CONFIG").context("CONFIG map missing")?)?;
        config.set(0, base, 0)?;
        let counts: PerCpuArray<MapData, u64> = PerCpuArray::try_from(ebpf.take_map("COUNTS").context("COUNTS map missing")?)?;
        let cycles: aya::maps::HashMap<MapData, u32, GcCycles> =
            aya::maps::HashMap::try_from(ebpf.take_map("CYCLES").context("CYCLES map missing")?)?;
        let builder = StackBuilder::new(stacks.stack, stacks.kernel, stacks.per_worker, aim)?;
        let uprobe = bpf::loaded_fd(&mut ebpf, "alloc_call", "loading the alloc program")?;
        let uretprobe = if addresses {
            Some(bpf::loaded_fd(&mut ebpf, "alloc_return", "loading the allocator's return probe")?)
        } else {
            None
        };
        let flip = bpf::loaded_fd(&mut ebpf, "alloc_gc_flip", "loading the collector's uprobe")?;
        let watch = Some(bpf::loaded_fd(&mut ebpf, "alloc_gc_atomic", "loading the collector watch")?);
        Ok(AllocProbe {
            ebpf,
            allocators,
            resize,
            maps: Maps { config, counts, cycles, base },
            programs: Programs { uprobe, uretprobe, cycles: Some(CyclePrograms { flip, watch }) },
            builder,
            native,
        })
    }

    /// The sites the sampler probes.
    pub fn probed(&self) -> Vec<Probed> {
        self.allocators.iter().map(Allocator::probed).collect()
    }
}

/// A process that joined the run (a new nginx worker): its stacks named, its
/// allocator probed from the next window on.
pub fn joined(sampler: &super::sampler::Sampler, tally: &mut super::tally::Tally, p: &crate::target::Process, g: Option<u64>, aim: &Aim) -> Result<()> {
    tally.builder.add_process(p)?;
    match Allocator::find(p, g, aim.luajit.as_ref()) {
        Ok(a) => sampler.add(a.probed()),
        Err(e) => eprintln!("ljprobe: not probing the allocator of new process {}: {e:#}", p.pid),
    }
    Ok(())
}
