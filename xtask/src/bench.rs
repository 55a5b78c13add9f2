//! `cargo xtask bench cpu`: what profiling costs the gateway's throughput.
//!
//! Absolute requests/sec depend on the machine and on whatever else runs on it, so
//! the result is a set of RATIOS: each profiled run against the unprofiled runs
//! just before and after it, in one sitting. Runs alternate baseline / profiled so
//! that drift (thermal, noisy neighbours, JIT state) hits both sides alike.

use std::{
    fs,
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use xtask::{
    cmd,
    gateway::{Config, LuaJitBuild, Running},
    load::{requests_per_sec, Load},
    paths, setup,
};

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
    },
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Cpu { duration, rounds } => cpu(duration, rounds),
    }
}

const ROUTE: &str = "/hot/jit";
const CONNECTIONS: u32 = 20;
/// The profiler starts this long before wrk, so its set-up (loading BPF programs,
/// reading symbols) is not inside the measured window.
const LEAD: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Profiler {
    Ljprobe,
    Perf,
}

/// The order inside a round, each preceded by a baseline run.
const SETTINGS: [(Profiler, u32); 4] =
    [(Profiler::Ljprobe, 99), (Profiler::Ljprobe, 999), (Profiler::Perf, 99), (Profiler::Perf, 999)];

fn label((p, freq): (Profiler, u32)) -> String {
    match p {
        Profiler::Ljprobe => format!("ljprobe {freq} Hz"),
        Profiler::Perf => format!("perf {freq} Hz"),
    }
}

/// Set by Ctrl-C. The children get the same SIGINT from the terminal and stop;
/// the loop then returns an error, and the Drop guards stop the gateway (nginx is a
/// daemon: the terminal's signal never reaches it).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn cpu(duration: Duration, rounds: u32) -> Result<()> {
    unsafe { libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    setup::run()?;
    // Release: the overhead of a debug build of ljprobe's user space is not the product's.
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let bench = Bench { ljprobe: paths::target().join("release/ljprobe"), out: paths::target().join("bench") };
    fs::create_dir_all(&bench.out)?;

    let port = free_port()?;
    let config = Config {
        // Own prefix: never picks up (or stops) a gateway someone started by hand.
        prefix: bench.out.join("gateway"),
        port,
        backend_port: port + 1,
        workers: 1,
        luajit: LuaJitBuild::Debug,
    };
    let gw = Running::start(config)?;
    let load = |d: Duration| Load {
        url: gw.config.url(),
        route: ROUTE.into(),
        duration: d,
        connections: CONNECTIONS,
        rate: None,
    };

    // Unmeasured: lets LuaJIT compile its traces and nginx fill its caches first.
    eprintln!("bench: warm-up");
    bench.throughput(&gw, &load(Duration::from_secs(3)), None)?;

    // B P1 B P2 B P3 B P4 per round, and one closing B, so every profiled run has a
    // baseline on each side.
    let mut baselines = vec![bench.throughput(&gw, &load(duration), None)?];
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; SETTINGS.len()];
    for round in 1..=rounds {
        for (i, &setting) in SETTINGS.iter().enumerate() {
            let rps = bench.throughput(&gw, &load(duration), Some(setting))?;
            let after = bench.throughput(&gw, &load(duration), None)?;
            let before = *baselines.last().unwrap();
            baselines.push(after);
            let ratio = rps / ((before + after) / 2.0);
            eprintln!("bench: round {round} {}: {rps:.0} req/s, ratio {ratio:.3}", label(setting));
            ratios[i].push(ratio);
        }
    }

    let own = bench.own_cost(&gw, &load(Duration::from_secs(30)))?;
    drop(gw);

    print_report(duration, rounds, &baselines, &ratios, &own);
    Ok(())
}

struct Bench {
    ljprobe: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Bench {
    /// The profiler command for `setting`, sampling for `secs`.
    fn profiler(&self, gw: &Running, (p, freq): (Profiler, u32), secs: u64) -> Command {
        match p {
            Profiler::Ljprobe => {
                let mut c = Command::new(&self.ljprobe);
                // The master: ljprobe samples all its workers.
                c.args(["cpu", "--pid", &gw.master().to_string(), "--duration", &format!("{secs}s")])
                    .args(["--freq", &freq.to_string()])
                    .arg("--svg")
                    .arg(self.out.join(format!("ljprobe-{freq}.svg")))
                    .arg("--json")
                    .arg(self.out.join(format!("ljprobe-{freq}.json")));
                c
            }
            Profiler::Perf => {
                let mut c = Command::new("perf");
                // The worker: `perf -p` takes only the threads of that one process.
                // cpu-clock is the event ljprobe uses; without a PMU perf falls back to
                // it anyway, with one it would otherwise take `cycles`.
                c.args(["record", "-e", "cpu-clock", "-F", &freq.to_string(), "-g", "--call-graph", "dwarf"])
                    .args(["-p", &gw.worker().to_string(), "-o"])
                    .arg(self.out.join("perf.data"))
                    .args(["--", "sleep", &secs.to_string()]);
                c
            }
        }
    }

    /// One wrk run, with `setting`'s profiler covering it when given: requests/sec.
    fn throughput(&self, gw: &Running, load: &Load, setting: Option<(Profiler, u32)>) -> Result<f64> {
        let profiler = match setting {
            Some(s) => {
                // Lead before, a second of slack after: the profiler outlasts wrk.
                let secs = (LEAD + load.duration).as_secs() + 1;
                let kid = Kid::spawn(self.profiler(gw, s, secs))?;
                thread::sleep(LEAD);
                Some(kid)
            }
            None => None,
        };
        let report = wrk(load)?;
        if let Some(kid) = profiler {
            let out = kid.finish()?;
            let samples = match setting.unwrap().0 {
                Profiler::Ljprobe => ljprobe_samples(&self.out.join(format!("ljprobe-{}.json", setting.unwrap().1))),
                Profiler::Perf => perf_samples(&String::from_utf8_lossy(&out.stderr)),
            };
            eprintln!("bench: {}: {} samples", label(setting.unwrap()), samples.map_or("?".into(), |n| n.to_string()));
            let _ = fs::remove_file(self.out.join("perf.data")); // 999 Hz dwarf: ~100 MB
        }
        check_interrupted()?;
        requests_per_sec(&report).with_context(|| format!("wrk reported no requests/sec:\n{report}"))
    }

    /// `ljprobe cpu --freq 99` for 30 s under load: its own CPU time and peak RSS,
    /// from wait4's rusage (all its threads, after they are gone: nothing missed).
    fn own_cost(&self, gw: &Running, load: &Load) -> Result<OwnCost> {
        eprintln!("bench: ljprobe's own cost, 30 s at 99 Hz");
        let start = Instant::now();
        let kid = Kid::spawn(self.profiler(gw, (Profiler::Ljprobe, 99), 30))?;
        thread::sleep(LEAD);
        wrk(load)?;
        let (status, ru, stderr) = kid.wait4()?;
        let wall = start.elapsed();
        check_interrupted()?;
        if !status.success() {
            bail!("ljprobe cpu failed ({status}) in the 30 s run: {}", stderr.trim());
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(OwnCost {
            user: secs(ru.ru_utime),
            sys: secs(ru.ru_stime),
            wall: wall.as_secs_f64(),
            max_rss_kib: ru.ru_maxrss as u64,
            samples: ljprobe_samples(&self.out.join("ljprobe-99.json")),
        })
    }
}

struct OwnCost {
    user: f64,
    sys: f64,
    wall: f64,
    max_rss_kib: u64,
    samples: Option<u64>,
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

fn ljprobe_samples(json: &std::path::Path) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(json).ok()?).ok()?;
    v["samples"].as_u64()
}

/// From perf's closing line: `[ perf record: Captured and wrote 1.1 MB perf.data (136 samples) ]`.
fn perf_samples(stderr: &str) -> Option<u64> {
    let tail = stderr.rsplit_once('(')?.1;
    tail.split_whitespace().next()?.parse().ok()
}

/// 18090 (and 18091 for the backend) if free, else a free pair from the kernel.
fn free_port() -> Result<u16> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    if free(18090) && free(18091) {
        return Ok(18090);
    }
    for _ in 0..20 {
        let p = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if p < u16::MAX && free(p) && free(p + 1) {
            return Ok(p);
        }
    }
    bail!("found no two free adjacent ports on 127.0.0.1")
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

fn print_report(duration: Duration, rounds: u32, baselines: &[f64], ratios: &[Vec<f64>], own: &OwnCost) {
    let secs = duration.as_secs();
    let uname = cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    println!("cpu overhead: {ROUTE}, wrk -t1 -c{CONNECTIONS}, {secs} s per run, {rounds} rounds; nginx 1 worker, debug LuaJIT");
    println!("machine: {cpus} CPUs (nproc), kernel {}", uname.trim());
    println!("reproduce: cargo xtask bench cpu --duration {secs}s --rounds {rounds}");
    let (lo, hi) = baselines.iter().fold((f64::MAX, f64::MIN), |(l, h), &b| (l.min(b), h.max(b)));
    println!(
        "baseline: median {:.0} req/s over {} runs (min {lo:.0}, max {hi:.0})\n",
        median(baselines),
        baselines.len()
    );

    // Ratio = profiled req/s / mean of the two adjacent baselines; loss = 1 - ratio.
    let rounds_hdr: String = (1..=rounds).map(|r| format!("{:>9}", format!("round {r}"))).collect();
    println!("{:<16}{rounds_hdr}{:>9}", "ratio", "median");
    let medians: Vec<f64> = ratios.iter().map(|r| median(r)).collect();
    for ((setting, r), m) in SETTINGS.iter().zip(ratios).zip(&medians) {
        let cells: String = r.iter().map(|x| format!("{x:>9.3}")).collect();
        println!("{:<16}{cells}{m:>9.3}   (loss {:.1}%)", label(*setting), (1.0 - m) * 100.0);
    }

    let loss = |i: usize| (1.0 - medians[i]) * 100.0;
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!("\ngoal (on the medians)                      measured          result");
    for (goal, measured, ok) in [
        ("ljprobe 99 Hz: loss <= 1%", format!("{:.1}%", loss(0)), loss(0) <= 1.0),
        ("ljprobe 999 Hz: loss <= 5%", format!("{:.1}%", loss(1)), loss(1) <= 5.0),
        (
            "ljprobe 99 Hz: no worse than perf 99 Hz",
            format!("{:.1}% vs {:.1}%", loss(0), loss(2)),
            medians[0] >= medians[2],
        ),
        (
            "ljprobe 999 Hz: no worse than perf 999 Hz",
            format!("{:.1}% vs {:.1}%", loss(1), loss(3)),
            medians[1] >= medians[3],
        ),
    ] {
        println!("{goal:<43}{measured:<18}{}", verdict(ok));
    }

    let cpu = own.user + own.sys;
    println!(
        "\nljprobe's own cost (cpu --freq 99, 30 s, same load): CPU {:.2} s user + {:.2} s sys = {:.2} s \
         over {:.1} s wall ({:.1}% of one core); peak RSS {:.1} MiB; {} samples",
        own.user,
        own.sys,
        cpu,
        own.wall,
        cpu / own.wall * 100.0,
        own.max_rss_kib as f64 / 1024.0,
        own.samples.map_or("?".into(), |n| n.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn reads_perf_sample_count() {
        let s = "[ perf record: Woken up 4 times to write data ]\n\
                 [ perf record: Captured and wrote 1.098 MB /tmp/p.data (136 samples) ]\n";
        assert_eq!(perf_samples(s), Some(136));
        assert_eq!(perf_samples("nothing"), None);
    }
}
