//! `cargo xtask bench cpu|offcpu|alloc|report|latency|heap|jit|builds`: what profiling costs the gateway's throughput;
//! `bench soak`: ljprobe's own CPU and memory over a long run (soak.rs).
//!
//! Absolute requests/sec depend on the machine and on whatever else runs on it, so
//! the result is a set of RATIOS: each profiled run against the unprofiled runs
//! just before and after it, in one sitting. Runs alternate baseline / profiled so
//! that drift (thermal, noisy neighbours, JIT state) hits both sides alike.

use std::{
    fs,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use ljprobe_host::proc;
use xtask::{
    affinity, cmd,
    gateway::{self, Config, LuaJitBuild, Running},
    load::{requests_per_sec, Load},
    paths, setup,
};

mod alloc;
mod builds;
mod cpu;
mod heap;
mod jit;
mod latency;
mod offcpu;
mod report;
mod soak;
mod tools;

#[derive(Subcommand)]
pub enum What {
    /// Throughput of /hot/jit with `ljprobe cpu` and `perf record` at 99 and 999 Hz,
    /// as ratios to interleaved unprofiled runs; then ljprobe's own CPU time and RSS.
    Cpu {
        /// Length of each wrk run.
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Only the /health part (every profiler at full rate), not /hot/jit.
        #[arg(long)]
        high_rate: bool,
        /// In the /health part, only the profilers whose label contains one of
        /// these comma-separated words (e.g. `epoll-loop,offcpu,perf 99 Hz`):
        /// more rounds of the few in question in the same time.
        #[arg(long, value_name = "LABELS")]
        only: Option<String>,
    },
    /// Throughput of a context-switch-heavy route with `ljprobe offcpu` (Lua and
    /// mixed stacks), `ljprobe epoll-loop` and `perf record` of sched_switch with
    /// call graphs, as ratios to interleaved unprofiled runs; then ljprobe's own cost.
    Offcpu {
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// `ljprobe alloc` (sampled and --all) and `ljprobe gc` against a bpftrace
    /// uprobe counting allocator calls, on /alloc/churn and on the cheap
    /// /health: throughput and the worker's CPU per request, as ratios to
    /// interleaved unprofiled runs.
    Alloc {
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// `ljprobe report` (cpu, offcpu, epoll-loop, gc and alloc together) beside
    /// `ljprobe cpu` alone, on /hot/jit and on the cheap /health: throughput and
    /// the worker's CPU per request, as ratios to interleaved unprofiled runs.
    Report {
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// `ljprobe latency` (with and without its on-CPU samples) beside a bpftrace
    /// uprobe that only counts requests, on the cheap /health at the gateway's
    /// full rate and on /hot/jit: throughput and the worker's CPU per request,
    /// as ratios to interleaved unprofiled runs; BPF run time; own cost.
    Latency {
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// `ljprobe heap` on standalone LuaJIT heaps of about 10 MB, 100 MB and
    /// 1 GB (pause, copy, walk, ljprobe's RSS), then the gateway's throughput
    /// with a snapshot of its worker every second and with `ljprobe leak`, as
    /// ratios to interleaved runs without.
    Heap {
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// `ljprobe jit` beside `ljprobe cpu` alone on /hot/jit and on the cheap
    /// /health: throughput and the worker's CPU per request, as ratios to
    /// interleaved runs without; then what a watched trace exit costs, from
    /// a standalone script that takes a known number of them.
    Jit {
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// `ljprobe cpu --stack mixed` and `ljprobe offcpu` on the worker, together,
    /// for a long run under sustained mixed load: ljprobe's own CPU share, peak
    /// RSS and RSS growth, records per second and lost records.
    /// `ljprobe cpu` on each LuaJIT build: BPF time per sample, ljprobe's own CPU and RSS.
    Builds {
        #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    Soak {
        /// How long each tool traces.
        #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
        duration: Duration,
        /// How often ljprobe's CPU time and RSS are read from /proc.
        #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
        every: Duration,
    },
}

pub fn run(what: What, pin: bool) -> Result<()> {
    PIN.store(pin, Ordering::SeqCst);
    match what {
        What::Cpu { duration, rounds, high_rate, only } => cpu::run(duration, rounds, high_rate, only.as_deref()),
        What::Offcpu { duration, rounds } => offcpu::run(duration, rounds),
        What::Alloc { duration, rounds } => alloc::run(duration, rounds),
        What::Report { duration, rounds } => report::run(duration, rounds),
        What::Latency { duration, rounds } => latency::run(duration, rounds),
        What::Heap { duration, rounds } => heap::run(duration, rounds),
        What::Jit { duration, rounds } => jit::run(duration, rounds),
        What::Builds { duration, rounds } => builds::run(duration, rounds),
        What::Soak { duration, every } => soak::run(duration, every),
    }
}

/// The profiler starts this long before wrk, so its set-up (loading BPF programs,
/// reading symbols) is not inside the measured window.
const LEAD: Duration = Duration::from_secs(1);

use tools::Tool;

/// What one bench measures: a route under wrk, and the tools to compare.
pub struct Suite {
    pub route: &'static str,
    pub connections: u32,
    /// The order inside a round, each preceded by a baseline run.
    pub tools: Vec<Tool>,
    /// Run alone for 30 s at the end for its own CPU time and RSS.
    pub own_cost: Tool,
}

/// Everything one sitting measured.
pub struct Measured {
    pub baselines: Vec<f64>,
    /// Per tool, its ratio in each round.
    pub ratios: Vec<Vec<f64>>,
    /// The worker's CPU time per request (us) in the baseline runs, and per
    /// tool its ratio to the adjacent baselines' in each round: what a probe
    /// adds to each request, whether or not the worker is saturated.
    pub baseline_cpu: Vec<f64>,
    pub cpu_ratios: Vec<Vec<f64>>,
    /// Per tool, its BPF programs' run time as a share of one CPU, per round.
    pub bpf: Vec<Vec<Option<f64>>>,
    pub own: OwnCost,
    /// Context switches per second during a baseline run: the whole machine's
    /// and the gateway worker's.
    pub switches: (f64, f64),
}

/// Set by Ctrl-C. The children get the same SIGINT from the terminal and stop;
/// the loop then returns an error, and the Drop guards stop the gateway (nginx is a
/// daemon: the terminal's signal never reaches it).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// `--pin`: see `pin_worker`.
static PIN: AtomicBool = AtomicBool::new(false);

/// CPUs online: not `available_parallelism`, which `--pin` narrows for this process.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system value.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(0)
}

/// For the machine line: where the worker ran.
pub fn pinned_note() -> &'static str {
    if PIN.load(Ordering::SeqCst) {
        "; worker pinned alone on CPU 0, wrk and the profilers on the others"
    } else {
        ""
    }
}

/// How to run the bench again, as the reproduce lines print it.
pub fn bench_command() -> &'static str {
    if PIN.load(Ordering::SeqCst) {
        "cargo xtask bench --pin"
    } else {
        "cargo xtask bench"
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs `suite`: B T1 B T2 ... per round and one closing B, so every profiled run
/// has a baseline on each side; then the own-cost run.
pub fn measure(suite: &Suite, duration: Duration, rounds: u32) -> Result<Measured> {
    let (bench, gw) = prepare()?;
    let load = |d: Duration| Load {
        url: gw.config.url(),
        route: suite.route.into(),
        duration: d,
        connections: suite.connections,
        rate: None,
    };

    // Unmeasured: lets LuaJIT compile its traces and nginx fill its caches first.
    eprintln!("bench: warm-up");
    bench.throughput(&gw, &load(Duration::from_secs(3)), None)?;

    let before = Switches::now(gw.worker());
    let first = bench.throughput(&gw, &load(duration), None)?;
    let (mut baselines, mut baseline_cpu) = (vec![first.rps], vec![first.cpu_us]);
    let switches = before.rates(gw.worker());
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; suite.tools.len()];
    let mut cpu_ratios: Vec<Vec<f64>> = vec![vec![]; suite.tools.len()];
    // The kernel times each program run (two clock reads) only while the
    // statistics are on: off for the measured rounds, on for a pass of its own.
    bpf_stats(false);
    for round in 1..=rounds {
        for (i, tool) in suite.tools.iter().enumerate() {
            let with = bench.throughput(&gw, &load(duration), Some(tool))?;
            let after = bench.throughput(&gw, &load(duration), None)?;
            let (before, before_cpu) = (*baselines.last().unwrap(), *baseline_cpu.last().unwrap());
            baselines.push(after.rps);
            baseline_cpu.push(after.cpu_us);
            let ratio = with.rps / ((before + after.rps) / 2.0);
            let cpu_ratio = with.cpu_us / ((before_cpu + after.cpu_us) / 2.0);
            eprintln!(
                "bench: round {round} {}: {:.0} req/s, ratio {ratio:.3}; {:.1} us CPU a request, ratio {cpu_ratio:.3}",
                tool.label(),
                with.rps,
                with.cpu_us
            );
            ratios[i].push(ratio);
            cpu_ratios[i].push(cpu_ratio);
        }
    }
    let mut bpf: Vec<Vec<Option<f64>>> = vec![vec![]; suite.tools.len()];
    if bpf_stats(true) {
        for (i, tool) in suite.tools.iter().enumerate() {
            eprintln!("bench: BPF run time of {}", tool.label());
            bpf[i].push(bench.throughput(&gw, &load(duration), Some(tool))?.bpf_share);
        }
    }
    bpf_stats(false);

    let own = bench.own_cost(&gw, &load(Duration::from_secs(30)), &suite.own_cost)?;
    Ok(Measured { baselines, ratios, baseline_cpu, cpu_ratios, bpf, own, switches })
}

/// Ctrl-C handling, setup, a release build of ljprobe, and the gateway (1 worker,
/// debug LuaJIT) in its own prefix under target/bench.
fn prepare() -> Result<(Bench, Running)> {
    unsafe { libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    setup::run()?;
    // Release: the overhead of a debug build of ljprobe's user space is not the product's.
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let bench = Bench { ljprobe: paths::target().join("release/ljprobe"), out: paths::target().join("bench") };
    fs::create_dir_all(&bench.out)?;

    let port = gateway::free_port_pair(Some(18090))?;
    let config = Config {
        // Own prefix: never picks up (or stops) a gateway someone started by hand.
        prefix: bench.out.join("gateway"),
        port,
        backend_port: port + 1,
        workers: 1,
        luajit: LuaJitBuild::Debug,
        ..Config::default()
    };
    let gw = Running::start(config)?;
    if PIN.load(Ordering::SeqCst) {
        pin_worker(gw.worker())?;
    }
    Ok((bench, gw))
}

/// The worker alone on CPU 0; this process, and so wrk and every profiler it
/// starts from now on, on the others.
fn pin_worker(worker: u32) -> Result<()> {
    let cpus = online_cpus();
    if cpus < 2 {
        bail!("--pin needs at least two CPUs: the worker takes one, wrk and the profilers the rest");
    }
    affinity::pin(worker, [0]).with_context(|| format!("cannot pin the worker {worker}"))?;
    affinity::pin(0, 1..cpus).context("cannot pin the bench to the other CPUs")?;
    eprintln!("bench: worker {worker} pinned to CPU 0; wrk and the profilers to CPUs 1-{}", cpus - 1);
    Ok(())
}

/// kernel.bpf_stats_enabled; false if it cannot be set.
fn bpf_stats(on: bool) -> bool {
    let set = fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" });
    if let Err(e) = &set {
        eprintln!("bench: cannot set kernel.bpf_stats_enabled ({e}): no BPF run times");
    }
    set.is_ok()
}

/// Context switch counters: the machine's (`ctxt` in /proc/stat) and a process's.
struct Switches {
    at: Instant,
    machine: u64,
    worker: u64,
}

impl Switches {
    fn now(worker: u32) -> Switches {
        let machine = proc::machine_context_switches().unwrap_or(0);
        let worker = proc::context_switches(worker).unwrap_or(0);
        Switches { at: Instant::now(), machine, worker }
    }

    fn rates(&self, worker: u32) -> (f64, f64) {
        let now = Switches::now(worker);
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        ((now.machine - self.machine) as f64 / secs, (now.worker.saturating_sub(self.worker)) as f64 / secs)
    }
}

/// One wrk run's outcome.
pub struct Sample {
    pub rps: f64,
    /// The worker's CPU time per request, in microseconds.
    pub cpu_us: f64,
    /// Time inside the profiler's BPF programs as a share of one CPU, from the
    /// kernel's BPF statistics (exact; excludes the trap of a uprobe).
    pub bpf_share: Option<f64>,
}

pub struct Bench {
    ljprobe: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Bench {
    /// One wrk run, with `tool` covering it when given: requests/sec, and the
    /// worker's CPU time per request.
    fn throughput(&self, gw: &Running, load: &Load, tool: Option<&Tool>) -> Result<Sample> {
        gw.config.truncate_access_log();
        let spawned = Instant::now();
        let programs_before = tool.map(|_| bpf_programs());
        let profiler = match tool {
            Some(t) => {
                // Lead before, a second of slack after: the profiler outlasts wrk.
                let secs = (LEAD + load.duration).as_secs() + 1;
                let kid = Kid::spawn(t.command(self, gw, secs))?;
                thread::sleep(LEAD);
                Some(kid)
            }
            None => None,
        };
        let cpu_before = proc::cpu_time(gw.worker()).unwrap_or_default();
        let report = wrk(load)?;
        let cpu = proc::cpu_time(gw.worker()).unwrap_or_default().saturating_sub(cpu_before);
        // Read while the programs are still loaded: their counters go with them.
        let bpf_share = programs_before.as_ref().and_then(bpf_run_time).map(|t| t.as_secs_f64() / spawned.elapsed().as_secs_f64());
        if let (Some(kid), Some(t)) = (profiler, tool) {
            let out = kid.finish()?;
            let events = t.events(self, &String::from_utf8_lossy(&out.stderr));
            eprintln!("bench: {}: {}", t.label(), events.map_or("?".into(), |(n, what)| format!("{n} {what}")));
            let _ = fs::remove_file(self.out.join("perf.data")); // 999 Hz dwarf: ~100 MB
        }
        check_interrupted()?;
        let rps = requests_per_sec(&report).with_context(|| format!("wrk reported no requests/sec:\n{report}"))?;
        let requests = (rps * load.duration.as_secs_f64()).max(1.0);
        Ok(Sample { rps, cpu_us: cpu.as_secs_f64() * 1e6 / requests, bpf_share })
    }

    /// `tool` for 30 s under load: its own CPU time and peak RSS, from wait4's
    /// rusage (all its threads, after they are gone: nothing missed).
    fn own_cost(&self, gw: &Running, load: &Load, tool: &Tool) -> Result<OwnCost> {
        eprintln!("bench: ljprobe's own cost, 30 s of {}", tool.label());
        let start = Instant::now();
        let kid = Kid::spawn(tool.command(self, gw, 30))?;
        thread::sleep(LEAD);
        wrk(load)?;
        let (status, ru, stderr) = kid.wait4()?;
        let wall = start.elapsed();
        check_interrupted()?;
        if !status.success() {
            bail!("{} failed ({status}) in the 30 s run: {}", tool.label(), stderr.trim());
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(OwnCost {
            label: tool.label(),
            user: secs(ru.ru_utime),
            sys: secs(ru.ru_stime),
            wall: wall.as_secs_f64(),
            max_rss_kib: ru.ru_maxrss as u64,
            events: tool.events(self, &stderr),
        })
    }
}

pub struct OwnCost {
    label: String,
    user: f64,
    sys: f64,
    wall: f64,
    max_rss_kib: u64,
    /// How many records it handled, and what they are.
    events: Option<(u64, &'static str)>,
}

impl OwnCost {
    pub fn print(&self) {
        let cpu = self.user + self.sys;
        println!(
            "\nljprobe's own cost ({}, 30 s, same load): CPU {:.2} s user + {:.2} s sys = {:.2} s \
             over {:.1} s wall ({:.1}% of one core); peak RSS {:.1} MiB; {}",
            self.label,
            self.user,
            self.sys,
            cpu,
            self.wall,
            cpu / self.wall * 100.0,
            self.max_rss_kib as f64 / 1024.0,
            self.events.map_or("?".into(), |(n, what)| format!("{n} {what}"))
        );
    }
}

fn wrk(load: &Load) -> Result<String> {
    let out = Kid(Some(load.spawn()?)).output()?;
    if !out.status.success() {
        bail!("wrk failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process that is stopped when dropped (on every error path): SIGINT first,
/// so a profiler detaches and exits cleanly (perf then ends its `sleep`), SIGKILL
/// if it is still there 5 s later.
struct Kid(Option<Child>);

impl Kid {
    fn spawn(mut c: Command) -> Result<Kid> {
        eprintln!("+ {}", cmd::describe(&c));
        // Piped and read only at exit: both profilers write a few lines at most.
        let child = c.stderr(Stdio::piped()).stdout(Stdio::null()).spawn();
        Ok(Kid(Some(child.with_context(|| format!("cannot start `{}`", cmd::describe(&c)))?)))
    }

    /// Waits for it and fails with its stderr if it failed.
    fn finish(self) -> Result<Output> {
        let out = self.output()?;
        if !out.status.success() {
            bail!("the profiler failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out)
    }

    fn output(mut self) -> Result<Output> {
        Ok(self.0.take().unwrap().wait_with_output()?)
    }

    /// Waits with wait4(2) for the child's resource usage (std's wait discards it).
    /// Returns its stderr too, read to the end first (it closes when the child exits).
    fn wait4(mut self) -> Result<(std::process::ExitStatus, libc::rusage, String)> {
        use std::{io::Read, os::unix::process::ExitStatusExt};
        let mut stderr = String::new();
        if let Some(mut e) = self.0.as_mut().unwrap().stderr.take() {
            e.read_to_string(&mut stderr)?;
        }
        let pid = self.0.as_ref().unwrap().id() as i32;
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } >= 0 {
                self.0 = None; // reaped: nothing left for Drop to stop
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).context("wait4");
            }
        }
        Ok((std::process::ExitStatus::from_raw(status), ru, stderr))
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else { return };
        if let Ok(None) = child.try_wait() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The ratio table: one row per tool, one column per round, and the median.
pub fn print_ratios(suite: &Suite, m: &Measured, rounds: u32) -> Vec<f64> {
    let (lo, hi) = m.baselines.iter().fold((f64::MAX, f64::MIN), |(l, h), &b| (l.min(b), h.max(b)));
    let uname = cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
    println!("machine: {} CPUs online, kernel {}{}", online_cpus(), uname.trim(), pinned_note());
    println!(
        "baseline: median {:.0} req/s over {} runs (min {lo:.0}, max {hi:.0}); context switches {:.0}/s on the machine, {:.0}/s of the worker",
        median(&m.baselines),
        m.baselines.len(),
        m.switches.0,
        m.switches.1
    );
    // Ratio = profiled req/s / mean of the two adjacent baselines; loss = 1 - ratio.
    let rounds_hdr: String = (1..=rounds).map(|r| format!("{:>9}", format!("round {r}"))).collect();
    let w = label_width(suite);
    println!("\n{:<w$}{rounds_hdr}{:>9}", "ratio", "median");
    let medians: Vec<f64> = m.ratios.iter().map(|r| median(r)).collect();
    for ((tool, r), med) in suite.tools.iter().zip(&m.ratios).zip(&medians) {
        let cells: String = r.iter().map(|x| format!("{x:>9.3}")).collect();
        println!("{:<w$}{cells}{med:>9.3}   (loss {:.1}%)", tool.label(), (1.0 - med) * 100.0);
    }
    medians
}

/// The tables' first column: as wide as the longest label, 24 at least.
fn label_width(suite: &Suite) -> usize {
    suite.tools.iter().map(|t| t.label().len() + 1).max().unwrap_or(0).max(24)
}

/// The CPU-per-request table: one row per tool, its ratio to the adjacent
/// baselines' per round, and the median.
pub fn print_cpu_ratios(suite: &Suite, m: &Measured, rounds: u32) -> Vec<f64> {
    println!("baseline: median {:.1} us of the worker's CPU a request", median(&m.baseline_cpu));
    let rounds_hdr: String = (1..=rounds).map(|r| format!("{:>9}", format!("round {r}"))).collect();
    let w = label_width(suite);
    println!("\n{:<w$}{rounds_hdr}{:>9}", "CPU a request, ratio", "median");
    let medians: Vec<f64> = m.cpu_ratios.iter().map(|r| median(r)).collect();
    for ((tool, r), med) in suite.tools.iter().zip(&m.cpu_ratios).zip(&medians) {
        let cells: String = r.iter().map(|x| format!("{x:>9.3}")).collect();
        println!("{:<w$}{cells}{med:>9.3}   (+{:.1}%)", tool.label(), (med - 1.0) * 100.0);
    }
    medians
}

/// The BPF run-time table: per tool, the share of one CPU spent inside its
/// programs, from a run of its own after the rounds (statistics on).
pub fn print_bpf(suite: &Suite, m: &Measured) {
    let rounds = m.bpf.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let rounds_hdr: String = (1..=rounds).map(|r| format!("{:>9}", format!("run {r}"))).collect();
    let w = label_width(suite);
    println!("\n{:<w$}{rounds_hdr}{:>9}", "BPF run time, % of a CPU", "median");
    for (tool, r) in suite.tools.iter().zip(&m.bpf) {
        let known: Vec<f64> = r.iter().flatten().map(|x| x * 100.0).collect();
        if known.is_empty() {
            println!("{:<w$}{:>cols$}", tool.label(), "-", cols = 9 * (rounds as usize + 1));
            continue;
        }
        let cells: String = r.iter().map(|x| x.map_or(format!("{:>9}", "-"), |x| format!("{:>9.3}", x * 100.0))).collect();
        println!("{:<w$}{cells}{:>9.3}", tool.label(), median(&known));
    }
}

/// The BPF programs loaded now: id -> run time so far (`run_time_ns` needs
/// kernel.bpf_stats_enabled). Debian's bpftool does not say which process
/// holds a program, so a profiler's programs are those that appeared after
/// it started.
fn bpf_programs() -> std::collections::HashMap<u64, u64> {
    let Ok(out) = cmd::output(Command::new("bpftool").args(["prog", "show", "--json"])) else { return Default::default() };
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    progs.iter().filter_map(|p| Some((p["id"].as_u64()?, p["run_time_ns"].as_u64().unwrap_or(0)))).collect()
}

/// Run time of the programs that are in `now` and were not in `before`.
fn bpf_run_time(before: &std::collections::HashMap<u64, u64>) -> Option<Duration> {
    let now = bpf_programs();
    let new: Vec<u64> = now.iter().filter(|(id, _)| !before.contains_key(id)).map(|(_, ns)| *ns).collect();
    (!new.is_empty()).then(|| Duration::from_nanos(new.iter().sum()))
}

/// Goals as (what, measured, met), printed as a table.
pub fn print_goals(goals: &[(String, String, bool)]) {
    let w = goals.iter().map(|(_, m, _)| m.len() + 2).max().unwrap_or(0).max(18);
    println!("\n{:<52}{:<w$}result", "goal (on the medians)", "measured");
    for (goal, measured, ok) in goals {
        println!("{goal:<52}{measured:<w$}{}", if *ok { "PASS" } else { "MISS" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
