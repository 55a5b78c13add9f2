//! `ljprobe jit`: why code falls out of the JIT, from outside the process
//! (the `jit.v`, `ngx-lj-trace-exits` and `ngx-lj-vm-states` jobs). Kernel
//! side: `probes-ebpf/src/jit.rs`. `watch.rs` runs it, `analysis.rs` groups
//! what came back, `report.rs` shows it.

mod analysis;
mod decode;
mod report;
mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, PerCpuArray};
use ljprobe_common::jit::{JIT_REQ_SLOTS, JIT_STATE_SLOTS};
use ljprobe_flamegraph::histogram::Log2Histogram;

use self::{
    report::{ExitWatch, Report, RequestExits, StateShare},
    watch::{Collector, KernelMaps, Programs, RequestProbe, Settings, Vm},
};
use super::{latency::nginx::FREE, run_args::RunArgs};
use crate::{
    bpf::{self, attach, objects, perf_link::uprobe_pmu},
    collect,
    stacks::{StackBuilder, StackKind},
    target::{aim::Aim, elf},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// CPU samples per second per CPU, for the VM states.
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    freq: u64,
    /// Rows per list (hot functions, aborts, traces, exits).
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Everything found, for a script ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Flame graph of the Lua stacks with their VM state (trace or interpreter) on top.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Trace exits watched per second and process at most; past that the
    /// exit watch is off for the rest of the second and exit rates are
    /// estimated from the watched time. Each watched exit costs the target a
    /// debug trap (about 20 us on the virtual machine it was measured on: docs/bench.md#jit). 0: every exit.
    #[arg(long, default_value_t = 1000)]
    max_exits: u64,
    /// nginx: count exits per request from the start. By default requests
    /// are followed only once a worker takes 100 exits in a second, since
    /// following them costs every request a trap (about 1.5 us).
    #[arg(long)]
    per_request: bool,
}

/// How often the rings are drained; aborts and samples wait in them meanwhile.
const TICK: Duration = Duration::from_millis(100);

/// `LJ_TRACE_START` and `LJ_TRACE_ASM`: one write per trace attempt and per
/// trace handed to the assembler.
const STATE_START: u32 = 0x13;
const STATE_ASM: u32 = 0x15;

pub async fn run(args: Args) -> Result<ExitCode> {
    for p in args.svg.iter().chain(args.json.iter().filter(|p| p.as_os_str() != "-")) {
        crate::output::check(p)?;
    }
    let aim = Aim::open(args.run.pid, true, "", "")?;
    aim.needs_gc64("jit")?;
    let build = aim.build;
    let jl = build.jit;
    let mut ebpf = bpf::load(objects::JIT, "jit")?;
    let found = bpf::aim_seeded(&mut ebpf, &aim)?;
    Array::try_from(ebpf.map_mut("JIT_LAYOUT").context("JIT_LAYOUT map missing")?)?.set(0, jl.probe, 0)?;
    let mut notes = Vec::new();
    let programs = Programs {
        state: watch_program(&mut ebpf, "jit_state_write")?,
        exit: watch_program(&mut ebpf, "jit_exit")?,
        request: request_probe(&mut ebpf, &aim, &mut notes)?,
    };

    let mut vms = Vec::new();
    for (p, (pid, g)) in aim.processes.iter().zip(found) {
        match g {
            Some(g) => vms.push(Vm::open(p, g, build, &programs, args.max_exits, &mut notes)?),
            None => notes.push(format!("process {pid}: its Lua VM was not found in its memory; its aborts and exits are not counted")),
        }
    }
    if vms.is_empty() {
        bail!(
            "found no Lua VM in the memory of process {} ({}), so there is no JIT to look at: is its Lua state created yet?",
            aim.root.pid,
            aim.root.comm
        );
    }
    for vm in vms.iter().filter(|v| v.jit_on == Some(false)) {
        eprintln!("ljprobe: process {}: the JIT compiler is off (jit.off()), so nothing is compiled; VM states only", vm.pid);
    }

    let builder = StackBuilder::new(StackKind::Lua, false, false, &aim)?;
    attach::cpu_clock(&mut ebpf, "jit_sample", args.freq, Some(&aim.pids))?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let follows_requests = programs.request.is_some();
    let settings = Settings { build, max_exits: args.max_exits, per_request: args.per_request };
    let mut c = Collector::new(builder, maps, vms, programs, settings, notes);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "samples" };
    let collected = collect::watch(run, TICK, &mut c).await?;
    c.look();

    let states: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("STATE_WRITES").context("STATE_WRITES map missing")?)?;
    let writes = |s: u32| bpf::per_cpu_total(&states, s & (JIT_STATE_SLOTS - 1));
    let hist: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("REQ_HIST").context("REQ_HIST map missing")?)?;
    let hist: Vec<u64> = (0..JIT_REQ_SLOTS).map(|i| bpf::per_cpu_total(&hist, i)).collect();

    let secs = collected.elapsed_secs;
    let mut notes = std::mem::take(&mut c.notes);
    if c.vms.iter().any(|v| !v.watches_set()) {
        notes.push("aborts and exits come only from the processes whose watchpoints were set (see above)".into());
    }
    let aborts = analysis::group_aborts(&c.events);
    let mut findings: Vec<_> = c.findings.iter().collect();
    findings.sort_by_key(|(pid, _)| **pid);
    let findings: Vec<_> = findings.into_iter().map(|(_, f)| f).collect();
    let traces = analysis::merge_traces(&findings);
    let blacklisted: Vec<_> = findings.iter().flat_map(|f| f.blacklisted.iter().cloned()).collect();
    let penalized: Vec<_> = findings.iter().flat_map(|f| f.penalized.iter().cloned()).collect();
    let watched: HashMap<u32, f64> = c.vms.iter().map(|v| (v.pid, v.budget.watched().as_secs_f64().min(secs))).collect();
    let exits = analysis::exits(&c.exit_counts, &c.exit_places, &watched);
    let exit_watch: Vec<ExitWatch> = c
        .vms
        .iter()
        .map(|v| ExitWatch { pid: v.pid, watched_secs: watched[&v.pid], capped_seconds: v.budget.capped_windows })
        .collect();
    if exit_watch.iter().any(|w| w.capped_seconds > 0) {
        notes.push(format!(
            "trace exits came faster than --max-exits {} a second: the exit watch was off for the rest of those seconds, so exit counts are of the watched time and rates are estimates (--max-exits 0 watches every exit)",
            args.max_exits
        ));
    }
    let total = c.builder.folded.total();
    let folded = std::mem::take(&mut c.builder.folded);
    let mut functions = analysis::functions(&c.by_function, total, args.top);
    analysis::verdicts(&mut functions, &aborts, &blacklisted, &penalized, &exits);
    let summary = functions.iter().filter(|f| f.share >= analysis::HOT_SHARE).map(|f| f.verdict.clone()).collect();
    let [lost_samples, lost_aborts, lost_exits] = c.lost_counts();
    let jit_off = c.vms.iter().filter(|v| v.jit_on == Some(false)).map(|v| v.pid).collect();

    let report = Report {
        tool: "jit",
        title: format!("ljprobe jit: PID {} ({})", args.run.pid, aim.root.comm),
        pids: collected.pids_seen.clone(),
        frequency: args.freq,
        samples: total,
        jit_off,
        vm_states: c
            .by_state
            .iter()
            .map(|(k, &n)| (k.clone(), StateShare { samples: n, share: n as f64 / total.max(1) as f64 }))
            .collect(),
        functions,
        trace_attempts: writes(STATE_START),
        traces_assembled: writes(STATE_ASM),
        aborts_total: c.events.len() as u64,
        aborts,
        blacklisted,
        penalty_cache: penalized,
        traces,
        exits_total: c.exit_counts.iter().map(|e| e.1).sum(),
        // + 0.0: an empty f64 sum is -0.0.
        exits_per_sec: exits.iter().map(|e| e.per_sec).sum::<f64>() + 0.0,
        exits,
        exits_per_request: if c.vms.iter().any(|v| v.requests_followed()) {
            Some(request_exits(&hist))
        } else {
            if follows_requests {
                notes.push(format!(
                    "exits per request were not counted: no worker took {} exits in a second (--per-request counts them anyway)",
                    watch::REQUEST_EXITS
                ));
            }
            None
        },
        exit_watch,
        summary,
        lost: BTreeMap::from([("samples", lost_samples), ("aborts", lost_aborts), ("exits", lost_exits)]),
        collected,
        notes,
    };
    drop(c);
    drop(ebpf);
    if let Some(path) = &args.svg {
        let subtitle = format!("{} samples at {} Hz over {:.1}s", report.samples, args.freq, secs);
        report::write_svg(path, &folded, &report.title, subtitle)?;
    }
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
    }
    // With the JSON on standard output, the report for a person goes to standard error.
    if args.json.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        report::print(&report, args.top, args.svg.as_deref(), &mut std::io::stderr().lock())?;
    } else {
        report::print(&report, args.top, args.svg.as_deref(), &mut std::io::stdout().lock())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn watch_program(ebpf: &mut aya::Ebpf, name: &str) -> Result<std::os::fd::RawFd> {
    bpf::loaded_fd(ebpf, name, &format!("loading {name}"))
}

/// In nginx, the uprobe that closes each request's count of exits (put in
/// place per worker once it takes exits). Why it cannot be goes to `notes`.
fn request_probe(ebpf: &mut aya::Ebpf, aim: &Aim, notes: &mut Vec<String>) -> Result<Option<RequestProbe>> {
    let root = &aim.root;
    if !(root.is_nginx_master() || root.is_nginx_worker()) {
        return Ok(None);
    }
    // Through /proc: the program as the processes run it, even if replaced on disk.
    let data = elf::read_file(Path::new(&format!("/proc/{}/exe", root.pid)))?;
    let offset = object::File::parse(&*data).ok().and_then(|file| elf::exported_probe_offset(&data, &file, FREE));
    let Some(offset) = offset else {
        notes.push(format!("exits per request are not counted: {} does not export {FREE}", root.exe));
        return Ok(None);
    };
    let prog = bpf::loaded_fd(ebpf, "jit_request", "loading jit_request")?;
    Ok(Some(RequestProbe { pmu: uprobe_pmu()?, prog, path: root.host_path(&root.exe), offset }))
}

fn request_exits(hist: &[u64]) -> RequestExits {
    let buckets = hist
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        // The kernel buckets as the duration histograms do (`bucket_of`).
        .map(|(i, &n)| {
            let (lo, hi) = Log2Histogram::bounds(i);
            (lo, hi, n)
        })
        .collect();
    RequestExits {
        requests: hist.iter().sum(),
        buckets,
        note: "exits taken between the end of one request and the end of the next, timers included, are charged to the next",
    }
}
