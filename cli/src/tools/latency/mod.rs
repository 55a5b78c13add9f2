//! `ljprobe latency`: which nginx requests are slow and where their time went
//! (the `ngx-req-latency-distr` / `ngx-single-req-latency` jobs): per
//! location, URI or status, the latency percentiles and histogram, and each
//! request's time split by nginx phase and by kind (on the CPU in Lua or in C,
//! blocked, waiting on an upstream or anything else, waiting behind other
//! requests). Kernel side: `probes-ebpf/src/latency.rs`; `nginx.rs` finds what
//! it probes, `requests.rs` groups the requests, `report.rs` writes them out.

mod nginx;
mod report;
mod requests;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, PerCpuArray, RingBuf};
use ljprobe_common::latency::LatencyConfig;

pub use self::requests::GroupBy;
use self::{nginx::Nginx, requests::Requests};
use super::run_args::RunArgs;
use crate::{
    bpf::{self, attach, objects, tracepoint},
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
    /// Latency histograms and breakdowns, one row per group [default: ljprobe-latency-<pid>.svg].
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Summary a script can read ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
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
    };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    let mut ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let builder = StackBuilder::new(StackKind::Lua, false, false, &aim.processes, aim.luajit_path())?;

    // Everything but the start of requests first: a request counts only if
    // its whole life is seen.
    let exe = &nginx.exe;
    let mut probes: Vec<(&str, &std::path::Path, Vec<&str>)> = vec![
        ("lat_runs", exe, vec![nginx::RUNS]),
        ("lat_access", exe, vec![nginx::ACCESS]),
        ("lat_content", exe, vec![nginx::CONTENT]),
        ("lat_upstream", exe, vec![nginx::UPSTREAM]),
        ("lat_free", exe, vec![nginx::FREE]),
    ];
    if let Some(lua) = &nginx.lua_module {
        probes.push(("lat_lua_runs", lua, vec![nginx::LUA_RUNS]));
    }
    probes.push(("lat_create", exe, vec![nginx::CREATE]));
    for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
        if tracepoint::exists("syscalls", &format!("sys_enter_{call}")) {
            tracepoint::attach(&mut ebpf, "lat_wait_enter", "syscalls", &format!("sys_enter_{call}"))?;
            tracepoint::attach(&mut ebpf, "lat_wait_exit", "syscalls", &format!("sys_exit_{call}"))?;
        }
    }
    tracepoint::attach(&mut ebpf, "lat_switch", "sched", "sched_switch")?;
    if args.freq > 0 {
        attach::cpu_clock(&mut ebpf, "lat_sample", args.freq, Some(&aim.pids))?;
    }
    for (program, object, functions) in &probes {
        attach::uprobes_followed(&mut ebpf, program, object, functions, &aim.pids)?;
    }
    let attached_ns = clock::monotonic_ns();

    let min_ns = args.min.map_or(0, |d| d.as_nanos() as u64);
    let mut requests = Requests::new(builder, args.by, min_ns, args.slowest, attached_ns);
    let lost = || bpf::per_cpu_total(&lost_map, 0);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "records" };
    let mut collected = collect::run(run, &mut ring, lost, &mut requests).await?;
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
    report::write(&args, &report::Report { title, pids: collected.pids_seen.clone(), requests, collected })?;
    Ok(ExitCode::SUCCESS)
}
