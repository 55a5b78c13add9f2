//! `ljprobe epoll-loop`: how long each event-loop iteration runs between one
//! `epoll_wait` return and the next call (the `epoll-loop-blocking-distr` job),
//! and which Lua function held the loop in the long ones. Kernel side:
//! `probes-ebpf/src/epoll_loop.rs`; `loops.rs` assigns culprits, `report.rs`
//! prints and writes the results.

mod loops;
mod report;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, PerCpuArray, RingBuf};
use ljprobe_common::{LoopConfig, LOOP_BUCKETS};
use ljprobe_flamegraph::Log2Histogram;

use self::{loops::Loops, report::Report};
use super::run_args::RunArgs;
use crate::{
    bpf::{self, attach, objects, tracepoint},
    collect,
    stacks::{Lines, StackBuilder, StackKind},
    target::aim::Aim,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Iterations at least this long count as blocking the loop; their Lua stacks are recorded.
    #[arg(long, default_value = "10ms", value_parser = ljprobe_host::duration::parse)]
    threshold: Duration,
    /// On-CPU samples per second of each target thread; only those inside
    /// iterations already 1 ms long are kept [default: one per --threshold,
    /// 100 at 10ms].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    freq: Option<u64>,
    /// Culprits carry the line they were executing (`--lines`), or every Lua
    /// frame of their stacks does (`--lines all`).
    #[arg(long, value_enum, num_args = 0..=1, default_value = "none", default_missing_value = "innermost")]
    lines: Lines,
    /// How many culprits to list.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Histogram SVG [default: ljprobe-epoll-loop-<pid>.svg in the current directory].
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Summary a script can read ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Stacks are kept for blocks and samples of at least this much, or the
/// threshold if lower: shorter pieces cannot make an iteration long.
const STACK_AFTER: Duration = Duration::from_millis(1);

/// The sampler's default rate: one tick per threshold, so an iteration at
/// the threshold is sampled about nine times in ten and one of twice the
/// threshold always. Every tick interrupts the worker whether or not it is
/// kept (at 499 Hz on a worker serving 80,000 short requests a second, 2
/// points of CPU a request more than at 99 Hz: docs/bench.md#high-rate).
fn default_freq(threshold: Duration) -> u64 {
    (1_000_000_000 / threshold.as_nanos().max(1) as u64).clamp(1, 1000)
}

pub async fn run(args: Args) -> Result<ExitCode> {
    report::check(&args)?;
    let freq = args.freq.unwrap_or_else(|| default_freq(args.threshold));
    let aim = Aim::open(args.run.pid, false, "", "; iteration times are measured, culprits cannot be named")?;
    let sched = tracepoint::sched_switch_format()?;
    let mut ebpf = bpf::load(objects::EPOLL_LOOP, "epoll-loop")?;
    bpf::aim_seeded(&mut ebpf, &aim)?;
    let config = LoopConfig {
        long_ns: args.threshold.as_nanos() as u64,
        stack_after_ns: args.threshold.min(STACK_AFTER).as_nanos() as u64,
        sample_ns: 1_000_000_000 / freq,
        sched,
    };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    let mut ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let hist_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("HIST").context("HIST map missing")?)?;

    let builder = StackBuilder::new(StackKind::Lua, false, false, &aim)?.with_lines(args.lines);
    // Attached once everything is read: the iterations counted start with the run.
    for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
        if tracepoint::exists("syscalls", &format!("sys_enter_{call}")) {
            tracepoint::attach(&mut ebpf, "loop_wait_enter", "syscalls", &format!("sys_enter_{call}"))?;
            tracepoint::attach(&mut ebpf, "loop_wait_exit", "syscalls", &format!("sys_exit_{call}"))?;
        }
    }
    tracepoint::attach(&mut ebpf, "loop_switch", "sched", "sched_switch")?;
    attach::cpu_clock(&mut ebpf, "loop_sample", freq, Some(&aim.pids))?;
    let mut loops = Loops::new(builder, config.stack_after_ns);
    let lost = || bpf::per_cpu_total(&lost_map, 0);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "events" };
    let mut collected = collect::run(run, &mut ring, lost, &mut loops).await?;
    drop(ebpf);
    collected.records += collect::drain(&mut ring, &mut |bytes: &[u8]| loops.record(bytes));
    collected.lost = lost();
    let counts: Vec<u64> =
        (0..LOOP_BUCKETS).map(|i| bpf::per_cpu_total(&hist_map, i)).collect();
    let hist = Log2Histogram::from_counts(&counts);

    let title = format!("ljprobe epoll-loop: PID {} ({}), event-loop iteration times", args.run.pid, aim.root.comm);
    report::write(&args, &Report { title, pids: collected.pids_seen.clone(), hist, loops, collected, sample_hz: freq })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_ticks_once_per_threshold() {
        assert_eq!(default_freq(Duration::from_millis(10)), 100);
        assert_eq!(default_freq(Duration::from_millis(2)), 500);
        assert_eq!(default_freq(Duration::from_micros(100)), 1000);
        assert_eq!(default_freq(Duration::from_secs(5)), 1);
    }
}
