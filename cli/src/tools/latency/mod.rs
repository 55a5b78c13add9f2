//! `ljprobe latency`: which nginx requests are slow and where their time went
//! (the `ngx-req-latency-distr` / `ngx-single-req-latency` jobs): per
//! location, URI or status, the latency percentiles and histogram, and each
//! request's time split by nginx phase and by kind (on the CPU in Lua or in C,
//! blocked, waiting on an upstream or anything else, waiting behind other
//! requests). Kernel side: `probes-ebpf/src/latency.rs`; `nginx.rs` finds what
//! it probes, `requests.rs` groups the requests, `report.rs` writes them out.

pub(crate) mod nginx;
mod report;
mod requests;
mod windows;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};

use aya::maps::{Array, PerCpuArray, RingBuf};
use ljprobe_common::latency::LatencyConfig;

pub use self::requests::GroupBy;
use self::{
    nginx::Nginx,
    requests::Requests,
    windows::{Companions, Probe, Windows},
};
use super::run_args::RunArgs;
use crate::{
    bpf::{
        self, attach, objects,
        perf_link::{uprobe_pmu, Link},
        tracepoint,
    },
    clock, collect,
    stacks::{StackBuilder, StackKind},
    target::{aim::Aim, Process},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// What a group of requests is: the nginx location that served them, the
    /// URI (without its query), or the response status.
    #[arg(long, value_enum, default_value = "location")]
    by: GroupBy,
    /// How many of the slowest requests to show, each with its breakdown.
    #[arg(long, default_value_t = 10)]
    slowest: usize,
    /// Count only requests at least this long [default: all].
    #[arg(long, value_parser = ljprobe_host::duration::parse)]
    min: Option<Duration>,
    /// On-CPU samples per second while a request runs: they split its CPU
    /// time into Lua and C and name the Lua function that held it (0: none).
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    freq: u64,
    /// Follow only the requests that begin in windows covering PERCENT of the
    /// time (one window every 10 s: run for a minute or more): the cost at high
    /// request rates falls with it (docs/latency.md#cost); counts and rates are
    /// scaled up by nginx's own count of requests.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    sample: Option<u32>,
    /// Latency histograms and breakdowns, one row per group [default: ljprobe-latency-<pid>.svg].
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Summary a script can read ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The program on each probed function (`nginx.rs` says why these), the
/// one that sees requests begin last.
const PROGRAMS: [(&str, &str); 7] = [
    (nginx::RUNS, "lat_runs"),
    (nginx::ACCESS, "lat_access"),
    (nginx::CONTENT, "lat_content"),
    (nginx::UPSTREAM, "lat_upstream"),
    (nginx::FREE, "lat_free"),
    (nginx::LUA_RUNS, "lat_lua_runs"),
    (nginx::CREATE, "lat_create"),
];

/// The tracepoints that see a worker go back to its event loop, come out of
/// it, and switch off and on the CPU: (program, category, name).
fn tracepoints() -> Vec<(&'static str, &'static str, String)> {
    let mut v = Vec::new();
    for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
        if tracepoint::exists("syscalls", &format!("sys_enter_{call}")) {
            v.push(("lat_wait_enter", "syscalls", format!("sys_enter_{call}")));
            v.push(("lat_wait_exit", "syscalls", format!("sys_exit_{call}")));
        }
    }
    v.push(("lat_switch", "sched", "sched_switch".to_string()));
    v
}

/// `--sample`: the uprobes, the tracepoints and the timer samples open in
/// windows (`windows.rs`) instead of for the whole run (and
/// `LatencyConfig::sampled` has the kernel follow only the requests that
/// began in one).
fn sampled(
    ebpf: &mut aya::Ebpf,
    probes: &[(&str, &std::path::Path, &str, u64)],
    pids: &[u32],
    percent: u32,
    freq: u64,
) -> Result<Windows> {
    let mut windowed = Vec::new();
    for (program, object, function, offset) in probes {
        let prog_fd = bpf::loaded_fd(ebpf, program, &format!("loading {program}"))?;
        windowed.push(Probe { object: object.to_path_buf(), offset: *offset, prog_fd, starts: *function == nginx::CREATE });
    }
    let mut tps = Vec::new();
    for (program, category, name) in tracepoints() {
        let (id, fd) = (tracepoint::id(category, &name)?, bpf::loaded_fd(ebpf, program, &format!("loading {program}"))?);
        // Opened once now so that a kernel that refuses it says so at the
        // start; the windows then open it quietly.
        drop(Link::tracepoint(id, fd).with_context(|| format!("cannot attach to the {category}:{name} tracepoint"))?);
        tps.push((id, fd));
    }
    let sampler = if freq > 0 { Some((freq, bpf::loaded_fd(ebpf, "lat_sample", "loading lat_sample")?)) } else { None };
    let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map missing"));
    let companions = Companions {
        tracepoints: tps,
        sampler,
        threads: aya::maps::HashMap::try_from(map("THREADS")?)?,
        created: aya::maps::HashMap::try_from(map("CREATED")?)?,
    };
    let reqs = aya::maps::HashMap::try_from(map("REQS")?)?;
    Ok(Windows::start(uprobe_pmu()?, windowed, companions, pids, f64::from(percent) / 100.0, reqs)?)
}

/// Blocks shorter than this send no stack: they cannot hold much of a request.
const STACK_AFTER: Duration = Duration::from_millis(1);

pub async fn run(args: Args) -> Result<ExitCode> {
    report::check(&args)?;
    // nginx first: a process that is not nginx gets that one sentence.
    let process = Process::open(args.run.pid)?;
    crate::target::traceable(&process)?;
    let nginx = Nginx::find(&process)?;
    let aim = Aim::open(args.run.pid, false, "", "; Lua functions are not named")?;
    let sched = tracepoint::sched_switch_format()?;
    let mut ebpf = bpf::load(objects::LATENCY, "latency")?;
    bpf::aim_seeded(&mut ebpf, &aim)?;
    let config = LatencyConfig {
        nginx: nginx.layout,
        sched,
        sample_ns: 1_000_000_000 / args.freq.max(1),
        realtime_offset_ns: clock::realtime_offset_ns(),
        stack_after_ns: STACK_AFTER.as_nanos() as u64,
        sampled: u64::from(args.sample.is_some()),
    };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    let mut ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let builder = StackBuilder::new(StackKind::Lua, false, false, &aim)?;

    if args.sample.is_none() {
        for (program, category, name) in tracepoints() {
            tracepoint::attach(&mut ebpf, program, category, &name)?;
        }
        if args.freq > 0 {
            attach::cpu_clock(&mut ebpf, "lat_sample", args.freq, Some(&aim.pids))?;
        }
    }
    // In this order: everything but the start of requests first, so that a
    // request counts only if its whole life is seen.
    let mut probes: Vec<(&str, &std::path::Path, &str, u64)> = Vec::new();
    for (function, program) in PROGRAMS {
        if let Some((object, _, offset)) = nginx.offsets.iter().find(|(_, f, _)| f == &function) {
            probes.push((program, object, function, *offset));
        }
    }
    let windows = match args.sample {
        None => {
            for (program, object, function, offset) in &probes {
                attach::uprobes_followed(&mut ebpf, program, object, &[(function, Some(*offset))], &aim.pids)?;
            }
            None
        }
        Some(percent) => Some(sampled(&mut ebpf, &probes, &aim.pids, percent, args.freq)?),
    };
    let taken_before = nginx.requests_taken(&process);
    let attached_ns = clock::monotonic_ns();

    let min_ns = args.min.map_or(0, |d| d.as_nanos() as u64);
    let mut requests = Requests::new(builder, args.by, min_ns, args.slowest, attached_ns);
    requests.on_join = windows.as_ref().map(Windows::joined);
    let lost = || bpf::per_cpu_total(&lost_map, 0);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "records" };
    let collected = collect::run(run, &mut ring, lost, &mut requests).await;
    let stats = windows.map(Windows::finish);
    let mut collected = collected?;
    let taken = taken_before.zip(nginx.requests_taken(&process)).map(|(a, b)| b.saturating_sub(a));
    drop(ebpf);
    collected.records += collect::drain(&mut ring, &mut |bytes: &[u8]| requests.record(bytes));
    collected.lost = lost();
    requests.finish();
    if requests.implausible > 0 && requests.implausible * 2 > requests.ended {
        anyhow::bail!(
            "{} of {} requests read as garbage (no HTTP method or URI where nginx {} keeps them): the request layout does not fit this nginx build; file an issue with `nginx -V`",
            requests.implausible,
            requests.ended,
            nginx.version
        );
    }
    let title = format!("ljprobe latency: PID {} ({}), {}", args.run.pid, aim.root.comm, nginx.version);
    let sampling = args.sample.zip(stats).map(|(percent, stats)| report::Sampling::new(percent, stats, taken, requests.ended, collected.elapsed_secs));
    report::write(&args, &report::Report { title, pids: collected.pids_seen.clone(), requests, collected, sampling })?;
    Ok(ExitCode::SUCCESS)
}
