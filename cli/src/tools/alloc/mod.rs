//! `ljprobe alloc`: who allocates on the Lua heap, as flame graphs weighed by
//! bytes or by count, with table growth shown as its own frame. Kernel side:
//! `probes-ebpf/src/alloc.rs`; when the probe is on: `sampler.rs`.

mod attacher;
pub(crate) mod probe;
mod report;
pub(crate) mod sampler;
pub(crate) mod site;
pub(crate) mod tally;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use ljprobe_common::{AllocTotals, ALLOC_LOST, ALLOC_STACKS_FULL};

use self::{
    probe::AllocProbe,
    sampler::Sampler,
    tally::Tally,
};
use super::run_args::{RunArgs, StackArgs};
use crate::{
    bpf,
    collect::{self, Source},
    report::Outputs,
    target::{aim::Aim, Process},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    Bytes,
    Count,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    stacks: StackArgs,
    /// What the flame graph's widths add up: bytes allocated, or allocator calls.
    #[arg(long, value_enum, default_value = "bytes")]
    weight: Weight,
    /// Share of the target's time the probe may cost, in percent: the probe is
    /// on in short windows sized to it, and the counts are scaled up.
    #[arg(long, default_value_t = 1.0, value_parser = parse_budget, conflicts_with = "all")]
    overhead: f64,
    /// Record every allocation (exact counts): each one traps into the kernel,
    /// which slows an allocation-heavy target many times over; for tests and
    /// small targets.
    #[arg(long)]
    all: bool,
    /// Never fall back to a hardware watchpoint on the collector's state where
    /// the atomic phase's code is not found for a uprobe (docs/alloc.md):
    /// totals are then scaled by time instead of by the VM's own accounting
    /// (low for a target that allocates flat out). On a VM a watchpoint has
    /// killed a target with SIGTRAP (docs/gc.md#cost).
    #[arg(long)]
    no_watchpoint: bool,
    #[command(flatten)]
    outputs: Outputs,
}

pub(crate) fn parse_budget(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("not a percentage: {s}"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err("the overhead budget is a percentage above 0 and at most 100".into())
    }
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let default_svg = format!("ljprobe-alloc-{}.svg", args.run.pid);
    args.outputs.check(&default_svg)?;
    // The allocator is found through the VM, whatever stacks are drawn.
    let aim = Aim::open(args.run.pid, true, "", "")?;
    aim.needs_gc64("alloc")?;
    let probe = AllocProbe::load(&aim, &args.stacks, false)?;
    let probed = probe.probed();
    let AllocProbe { mut ebpf, allocators: _, resize, maps, mut programs, builder, native } = probe;
    if args.no_watchpoint {
        programs.cycles = programs.cycles.map(|c| crate::bpf::gc_cycles::CyclePrograms { watch: None, ..c });
    }
    let budget = (!args.all).then_some(args.overhead);
    let sampler = Sampler::start(probed, programs, maps, budget)?;
    let mut ring: RingBuf<MapData> = RingBuf::try_from(ebpf.take_map("RECORDS").context("RECORDS map missing")?)?;
    let mut source = AllocSource { ring: &mut ring, tally: Tally::new(builder, native), sampler: &sampler, aim: &aim };
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "stacks" };
    let collected = collect::watch(run, Duration::from_millis(100), &mut source).await;
    let tally = source.tally;
    let (sampling, _config, counts) = sampler.finish();
    let collected = collected?;

    let stacks: PerCpuHashMap<MapData, u64, AllocTotals> =
        PerCpuHashMap::try_from(ebpf.take_map("STACKS").context("STACKS map missing")?)?;
    let kernel_totals: Vec<(u64, AllocTotals)> = stacks
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, per_cpu)| {
            let sum = per_cpu.iter().fold(AllocTotals::default(), |a, t| AllocTotals {
                count: a.count + t.count,
                bytes: a.bytes + t.bytes,
                events: a.events + t.events,
            });
            (k, sum)
        })
        .collect();
    let hist: PerCpuArray<MapData, u64> = PerCpuArray::try_from(ebpf.take_map("HIST").context("HIST map missing")?)?;
    let lost = bpf::per_cpu_total(&counts, ALLOC_LOST) + bpf::per_cpu_total(&counts, ALLOC_STACKS_FULL);
    drop(ebpf);
    report::write(report::Run {
        args: &args,
        aim_root: &aim.root,
        default_svg,
        collected,
        sampling,
        tally: &tally,
        kernel_totals: &kernel_totals,
        counts: &counts,
        hist: &hist,
        lost,
        resize_known: resize.is_some(),
    })?;
    Ok(ExitCode::SUCCESS)
}

struct AllocSource<'a> {
    ring: &'a mut RingBuf<MapData>,
    tally: Tally,
    sampler: &'a Sampler,
    aim: &'a Aim,
}

impl Source for AllocSource<'_> {
    fn tick(&mut self) -> Result<u64> {
        let tally = &mut self.tally;
        Ok(collect::drain(self.ring, &mut |b: &[u8]| tally.record(b)))
    }

    fn status(&self, records: u64) -> String {
        format!("stacks {records:<9}")
    }

    fn lost(&self) -> u64 {
        0
    }

    fn joined(&mut self, p: &Process, g: Option<u64>) -> Result<()> {
        probe::joined(self.sampler, &mut self.tally, p, g, self.aim)
    }
}
