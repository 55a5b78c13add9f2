//! `ljprobe epoll-loop`: how long each event-loop iteration runs between one
//! `epoll_wait` return and the next call (the `epoll-loop-blocking-distr` job),
//! and which Lua function held the loop in the long ones. Kernel side:
//! `probes-ebpf/src/epoll_loop.rs`.

use std::{collections::HashMap, fs, io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, PerCpuArray, RingBuf};
use ljprobe_common::{
    LoopConfig, LoopHead, LoopStack, LOOP_BUCKETS, LOOP_ITERATION, LOOP_OFF_CPU, LOOP_ON_CPU,
};
use ljprobe_flamegraph::{
    histogram::{Bucket, HistogramSvgOptions},
    Frame, Log2Histogram,
};
use serde::Serialize;

use super::run_args::RunArgs;
use crate::{
    bpf::{self, attach, objects, tracepoint},
    collect::{self, Collected},
    report,
    stacks::{wait_frame, StackBuilder, StackKind},
    target::aim::Aim,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Iterations at least this long count as blocking the loop; their Lua stacks are recorded.
    #[arg(long, default_value = "10ms", value_parser = crate::duration::parse)]
    threshold: Duration,
    /// On-CPU samples per second per CPU, taken only inside iterations already running long.
    #[arg(long, default_value_t = 499, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    freq: u64,
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

pub async fn run(args: Args) -> Result<ExitCode> {
    let aim = Aim::open(args.run.pid, false, "", "; iteration times are measured, culprits cannot be named")?;
    let sched = tracepoint::sched_switch_format()?;
    let mut ebpf = bpf::load(objects::EPOLL_LOOP, "epoll-loop")?;
    bpf::aim(&mut ebpf, &aim.pids, aim.layout)?;
    bpf::seed_vms(&mut ebpf, &aim)?;
    let config = LoopConfig {
        long_ns: args.threshold.as_nanos() as u64,
        stack_after_ns: args.threshold.min(STACK_AFTER).as_nanos() as u64,
        sample_ns: 1_000_000_000 / args.freq,
        sched,
    };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    let mut ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let hist_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("HIST").context("HIST map missing")?)?;
    for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
        if tracepoint::exists("syscalls", &format!("sys_enter_{call}")) {
            tracepoint::attach(&mut ebpf, "loop_wait_enter", "syscalls", &format!("sys_enter_{call}"))?;
            tracepoint::attach(&mut ebpf, "loop_wait_exit", "syscalls", &format!("sys_exit_{call}"))?;
        }
    }
    tracepoint::attach(&mut ebpf, "loop_switch", "sched", "sched_switch")?;
    attach::cpu_clock(&mut ebpf, "loop_sample", args.freq)?;

    let Aim { processes, pids, luajit_path, root, .. } = aim;
    let builder = StackBuilder::new(StackKind::Lua, false, false, &processes, luajit_path.as_deref())?;
    let mut loops = Loops { builder, running: HashMap::new(), culprits: HashMap::new(), long: 0, unexplained: 0 };
    let lost = || lost_map.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
    let mut collected =
        collect::run(&mut ring, &processes, args.run.duration, "events", lost, |bytes| loops.record(bytes)).await?;
    drop(ebpf);
    collected.records += collect::drain(&mut ring, &mut |bytes: &[u8]| loops.record(bytes));
    collected.lost = lost();
    let counts: Vec<u64> =
        (0..LOOP_BUCKETS).map(|i| hist_map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)).collect();
    let hist = Log2Histogram::from_counts(&counts);

    let title = format!("ljprobe epoll-loop: PID {} ({}), event-loop iteration times", args.run.pid, root.comm);
    write(&args, &Report { title, pids, hist, loops, collected })?;
    Ok(ExitCode::SUCCESS)
}

/// What held one long iteration: its heaviest Lua function.
#[derive(Default)]
struct Culprit {
    iterations: u64,
    total_ns: u64,
    max_ns: u64,
    /// The heaviest stack seen under it, root first.
    stack: Vec<Frame>,
    stack_ns: u64,
}

/// The records of the iteration a thread is running, kept raw: most
/// iterations end short and their stacks are never named. Long ones end
/// within a drain or two (100 ms), while their functions are still there.
struct Running {
    iteration_ns: u64,
    records: Vec<LoopStack>,
}

struct Loops {
    builder: StackBuilder,
    /// Per thread, the stacks of the iteration it is running.
    running: HashMap<u32, Running>,
    culprits: HashMap<Frame, Culprit>,
    long: u64,
    /// Long iterations without any stack (blocked or ran in pieces under 1 ms).
    unexplained: u64,
}

impl Loops {
    fn record(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<LoopHead>() {
            return;
        }
        // SAFETY: every record starts with a LoopHead; read_unaligned copes with
        // the ring buffer's alignment.
        let head: LoopHead = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
        match head.kind {
            LOOP_ITERATION => self.iteration_ended(&head),
            LOOP_ON_CPU | LOOP_OFF_CPU if bytes.len() >= std::mem::size_of::<LoopStack>() => {
                // SAFETY: as above, a whole LoopStack.
                let r: LoopStack = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
                let fresh = || Running { iteration_ns: head.iteration_ns, records: vec![] };
                let running = self.running.entry(head.tid).or_insert_with(fresh);
                if running.iteration_ns != head.iteration_ns {
                    *running = fresh();
                }
                running.records.push(r);
            }
            _ => {}
        }
    }

    fn iteration_ended(&mut self, head: &LoopHead) {
        self.long += 1;
        let records = match self.running.remove(&head.tid) {
            Some(r) if r.iteration_ns == head.iteration_ns => r.records,
            _ => vec![],
        };
        let stacks: Vec<(Vec<Frame>, u64)> = records
            .iter()
            .map(|r| {
                let wait = (r.head.kind == LOOP_OFF_CPU).then(|| wait_frame(r.syscall, false));
                (self.builder.build(&r.lua, None, wait), r.head.ns)
            })
            .collect();
        let mut by_function: HashMap<Frame, (u64, usize)> = HashMap::new();
        for (i, (stack, ns)) in stacks.iter().enumerate() {
            let entry = by_function.entry(culprit_frame(stack)).or_insert((0, i));
            entry.0 += ns;
            if *ns > stacks[entry.1].1 {
                entry.1 = i;
            }
        }
        let Some((frame, (_, heaviest))) = by_function.into_iter().max_by_key(|(_, (ns, _))| *ns) else {
            self.unexplained += 1;
            return;
        };
        let c = self.culprits.entry(frame).or_default();
        c.iterations += 1;
        c.total_ns += head.ns;
        c.max_ns = c.max_ns.max(head.ns);
        let (stack, ns) = &stacks[heaviest];
        if *ns > c.stack_ns {
            c.stack = stack.clone();
            c.stack_ns = *ns;
        }
    }
}

/// The innermost Lua function of a stack, else its innermost frame that is
/// not a wait (a VM state, "no Lua running").
fn culprit_frame(stack: &[Frame]) -> Frame {
    stack
        .iter()
        .rev()
        .find(|f| matches!(f, Frame::Lua { .. }))
        .or_else(|| stack.iter().rev().find(|f| !matches!(f, Frame::Wait(_))))
        .cloned()
        .unwrap_or_else(|| Frame::Vm("[no stack]".into()))
}

struct Report {
    title: String,
    pids: Vec<u32>,
    hist: Log2Histogram,
    loops: Loops,
    collected: Collected,
}

#[derive(Serialize)]
struct CulpritJson {
    frame: String,
    iterations: u64,
    /// Of the long iterations.
    share: f64,
    total_ms: f64,
    max_ms: f64,
    stack: Vec<String>,
}

#[derive(Serialize)]
struct Summary<'a> {
    tool: &'static str,
    pids: &'a [u32],
    duration_secs: f64,
    stopped_by: collect::StopReason,
    threshold_us: u64,
    iterations: u64,
    long_iterations: u64,
    long_without_stack: u64,
    lost_events: u64,
    /// Log2 buckets of iteration time, bucket i = [2^(i-1), 2^i) µs.
    histogram: Vec<Bucket>,
    fullest_bucket: Option<Bucket>,
    culprits: Vec<CulpritJson>,
    svg: String,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn write(args: &Args, r: &Report) -> Result<()> {
    let svg_path = args.svg.clone().unwrap_or_else(|| PathBuf::from(format!("ljprobe-epoll-loop-{}.svg", args.run.pid)));
    let threshold_us = args.threshold.as_micros() as u64;
    let long = r.loops.long;
    let mut culprits: Vec<(&Frame, &Culprit)> = r.loops.culprits.iter().collect();
    culprits.sort_by(|a, b| b.1.iterations.cmp(&a.1.iterations).then(b.1.total_ns.cmp(&a.1.total_ns)));
    let culprits: Vec<CulpritJson> = culprits
        .into_iter()
        .take(args.top)
        .map(|(f, c)| CulpritJson {
            frame: f.label(),
            iterations: c.iterations,
            share: c.iterations as f64 / long.max(1) as f64,
            total_ms: ms(c.total_ns),
            max_ms: ms(c.max_ns),
            stack: c.stack.iter().map(Frame::label).collect(),
        })
        .collect();

    let c = &r.collected;
    let subtitle = format!(
        "{} over {:.1}s: {} iterations, {} of at least {}ms, {} events lost",
        r.pids.iter().map(|p| format!("PID {p}")).collect::<Vec<_>>().join(", "),
        c.elapsed_secs,
        r.hist.total(),
        long,
        threshold_us as f64 / 1000.0,
        c.lost
    );
    let mut svg = Vec::new();
    let opts = HistogramSvgOptions { title: r.title.clone(), subtitle, mark_from_us: Some(threshold_us) };
    r.hist.write_svg(&opts, &mut svg).context("drawing the histogram")?;
    fs::write(&svg_path, svg).with_context(|| format!("cannot write {}", svg_path.display()))?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", r.title)?;
    writeln!(out, "distribution of iteration times (us), {} iterations in {:.1}s:", r.hist.total(), c.elapsed_secs)?;
    r.hist.write_text(&mut out)?;
    if r.hist.total() == 0 {
        writeln!(out, "  (no epoll_wait calls seen: is this process an event loop, and was it busy?)")?;
    }
    writeln!(out, "{long} iterations of at least {}ms; histogram: {}", threshold_us as f64 / 1000.0, svg_path.display())?;
    if long > 0 {
        writeln!(out, "what held the loop in them (innermost Lua function):")?;
        for cj in &culprits {
            writeln!(
                out,
                "  {:>5.1}%  {}  ({} iterations, max {:.1} ms)",
                cj.share * 100.0,
                cj.frame,
                cj.iterations,
                cj.max_ms
            )?;
        }
        if r.loops.unexplained > 0 {
            writeln!(out, "  {} long iterations without a stack (no single piece of 1ms or more)", r.loops.unexplained)?;
        }
    }
    drop(out);
    if let Some(path) = &args.json {
        let summary = Summary {
            tool: "epoll-loop",
            pids: &r.pids,
            duration_secs: c.elapsed_secs,
            stopped_by: c.stopped_by,
            threshold_us,
            iterations: r.hist.total(),
            long_iterations: long,
            long_without_stack: r.loops.unexplained,
            lost_events: c.lost,
            histogram: r.hist.buckets(),
            fullest_bucket: r.hist.fullest(),
            culprits,
            svg: svg_path.display().to_string(),
        };
        if report::write_json(path, &summary)? {
            println!("summary: {}", path.display());
        }
    }
    Ok(())
}
