//! `ljprobe gc`: the Lua heap and its collector over time. User space reads
//! each VM's `global_State.gc` every few milliseconds (`poll.rs`, `heap.rs`);
//! the kernel program `probes-ebpf/src/gc.rs` counts the target's CPU samples
//! by VM state, for the collector's share of the CPU. `report.rs` prints and
//! writes the results.

mod heap;
mod poll;
mod report;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::PerCpuArray;

use self::poll::{Poller, Vm};
use super::run_args::RunArgs;
use crate::{
    bpf::{
        self, attach,
        gc_cycles::{CycleHook, CyclePrograms},
        objects,
    },
    collect,
    target::aim::Aim,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// One point of the time series per interval (the heap is read far more often).
    #[arg(long, default_value = "100ms", value_parser = ljprobe_host::duration::parse)]
    interval: Duration,
    /// CPU samples per second per CPU, for the collector's share of the target's CPU.
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    freq: u64,
    /// Count every collector cycle and every byte allocated exactly, with a
    /// uprobe on the atomic phase's code (or, where that is not found, a
    /// hardware watchpoint) that traps once a cycle (tens of microseconds
    /// each; hundreds of cycles a second under heavy allocation). Without it
    /// both come from the readings and are lower bounds when cycles are
    /// shorter than the time between two readings.
    #[arg(long)]
    exact: bool,
    /// Line chart SVG [default: ljprobe-gc-<pid>.svg in the current directory].
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Summary and time series a script can read ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How often each VM's collector fields are read (one pread of 88 bytes): the
/// heap's line and its range within each interval, and, without `--exact`,
/// the cycles and allocation. Every wake-up of ljprobe costs the target
/// something on a small machine (see docs/gc.md#cost), so not faster than this.
pub const POLL: Duration = Duration::from_millis(20);

pub async fn run(args: Args) -> Result<ExitCode> {
    report::check(&args)?;
    if args.interval < POLL * 2 {
        bail!("--interval {:?} is too short: the heap is read every {POLL:?}, so give at least {:?}", args.interval, POLL * 2);
    }
    let aim = Aim::open(args.run.pid, true, "", "")?;
    aim.needs_gc64("gc")?;
    let mut ebpf = bpf::load(objects::GC, "gc")?;
    let found = bpf::aim_seeded(&mut ebpf, &aim)?;
    let watch = if args.exact {
        let flip = bpf::loaded_fd(&mut ebpf, "gc_flip", "loading the collector's uprobe")?;
        let watch = Some(bpf::loaded_fd(&mut ebpf, "gc_atomic", "loading the collector watch")?);
        let luajit = aim.luajit.as_ref().map(|lj| lj.host_path.clone());
        Some(CycleHook { progs: CyclePrograms { flip, watch }, luajit })
    } else {
        None
    };
    let mut vms = Vec::new();
    let mut notes = Vec::new();
    for (pid, g) in found {
        match g.and_then(|g| Vm::open(pid, g, aim.build.gc, watch.as_ref(), &mut notes)) {
            Some(vm) => vms.push(vm),
            None => notes.push(format!("process {pid}: its Lua VM was not found in its memory; its heap is not in the figures")),
        }
    }
    if vms.is_empty() {
        bail!(
            "found no Lua VM in the memory of process {} ({}), so there is no heap to read: is its Lua state created yet?",
            aim.root.pid,
            aim.root.comm
        );
    }
    for n in &notes {
        eprintln!("ljprobe: note: {n}");
    }
    let states = PerCpuArray::try_from(ebpf.take_map("STATES").context("STATES map missing")?)?;
    attach::cpu_clock(&mut ebpf, "gc_sample", args.freq, Some(&aim.pids))?;
    let cycles = aya::maps::HashMap::try_from(ebpf.take_map("CYCLES").context("CYCLES map missing")?)?;
    let mut poller = Poller::new(vms, aim.build.gc, states, cycles, watch, args.interval);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "samples" };
    let collected = collect::watch(run, POLL, &mut poller).await?;
    drop(ebpf);
    let result = poller.finish();
    notes.extend(result.notes.iter().cloned());
    let title = format!("ljprobe gc: PID {} ({}), Lua heap over time", args.run.pid, aim.root.comm);
    report::write(&args, &report::Report { title, result, collected, notes })?;
    Ok(ExitCode::SUCCESS)
}
