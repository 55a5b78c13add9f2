//! Harness for the end-to-end tests: the real `ljprobe` binary, a real gateway per
//! test on free loopback ports, and checks on what a user would read.

pub mod chromium;
pub mod fidelity;
pub mod luajit;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use xtask::{
    gateway::{Config, LuaJitBuild, Running},
    paths,
};

/// The binary `cargo xtask test` built (LJPROBE_BIN), else target/debug/ljprobe.
pub fn ljprobe_bin() -> PathBuf {
    let bin = std::env::var_os("LJPROBE_BIN").map(PathBuf::from).unwrap_or_else(paths::ljprobe_bin);
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

pub fn ljprobe(args: &[&str]) -> Output {
    Command::new(ljprobe_bin()).args(args).output().expect("ljprobe runs")
}

/// Runs ljprobe with `args` and presses Ctrl-C (SIGINT) on it `after` it
/// started tracing.
pub fn ljprobe_interrupted(args: &[&str], after: std::time::Duration) -> Output {
    ljprobe_then(args, |pid| {
        std::thread::sleep(after);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    })
}

/// Runs ljprobe with `args`, and calls `attached` with its PID as soon as it
/// says it is tracing: what a test does from then on is seen, however long
/// ljprobe took to start (seconds, on a VM whose host is busy).
pub fn ljprobe_then(args: &[&str], attached: impl FnOnce(u32)) -> Output {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(ljprobe_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ljprobe runs");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in err.lines().map_while(Result::ok) {
            if line.starts_with("ljprobe: tracing") {
                let _ = tx.send(());
            }
            text += &line;
            text.push('\n');
        }
        text
    });
    if rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok() {
        attached(child.id());
    }
    let mut out = child.wait_with_output().expect("ljprobe exits");
    out.stderr = reader.join().unwrap().into_bytes();
    out
}

/// The share of CPU time the host left this machine during a run, from the
/// `steal_pct` every ljprobe summary carries. On a busy VM host (64% stolen in
/// one CI run) the load generator and the target get that much less done, so
/// bars on amounts done in a fixed time are scaled by it.
pub fn host_share(summary: &serde_json::Value) -> f64 {
    1.0 - summary["steal_pct"].as_f64().expect("steal_pct is reported") / 100.0
}

/// These tests load eBPF programs: CI is root, so they run there and never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the end-to-end tests need root (CI runs as root)");
}

/// Starts the gateway with its own prefix and ports; stopped when dropped.
pub fn gateway(name: &str, luajit: LuaJitBuild) -> Running {
    gateway_with_workers(name, luajit, 1)
}

pub fn gateway_with_workers(name: &str, luajit: LuaJitBuild, workers: u32) -> Running {
    gateway_slower(name, luajit, workers, "")
}

/// A gateway with a planted regression switched on by configuration
/// (`slower`: a function of /api/quote that does 20% more work; "" for none).
pub fn gateway_slower(name: &str, luajit: LuaJitBuild, workers: u32, slower: &str) -> Running {
    require_root();
    let port = xtask::gateway::free_port_pair(None).expect("free ports on loopback");
    let config = Config {
        prefix: paths::target().join("test-gateways").join(name),
        port,
        backend_port: port + 1,
        workers,
        luajit,
        slower: slower.to_string(),
    };
    // A gateway left over from a killed run would hold this prefix's pid file.
    let _ = config.down();
    Running::start(config).expect("the gateway starts")
}

/// `target/test-out`, where tests leave what they wrote for a human to look at.
pub fn out_dir() -> PathBuf {
    let d = paths::target().join("test-out");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A folded-stacks file as (stack, weight) pairs.
pub fn read_folded(path: &std::path::Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (stack, w) = l.rsplit_once(' ')?;
            Some((stack.to_string(), w.parse().ok()?))
        })
        .collect()
}

/// The total weight of the stacks that satisfy `pred`.
pub fn weight(stacks: &[(String, u64)], pred: impl Fn(&str) -> bool) -> u64 {
    stacks.iter().filter(|(s, _)| pred(s)).map(|(_, w)| w).sum()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A refusal a user can act on: non-zero exit, one `ljprobe: ...` line containing
/// `expect`, no panic, no backtrace.
pub fn assert_one_sentence(o: &Output, expect: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stdout:\n{}", stdout(o));
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("ljprobe:")).collect();
    assert_eq!(lines.len(), 1, "want exactly one ljprobe: line, stderr was:\n{err}");
    assert!(lines[0].contains(expect), "`{}` does not say `{expect}`", lines[0]);
}

// What this machine does now, measured in the same run. No test assumes how
// fast the CPU is: one twice as fast or twice as slow (or capped with
// `cargo xtask test --cpu-cap 50`) must pass the same tests. Work is sized,
// and expectations are derived, from these measurements.

/// A child process (wrk, a target) killed when dropped, pass or fail: loads
/// run "until stopped" so that they outlast however long ljprobe takes to
/// start on this machine.
pub struct Background(pub std::process::Child);

impl Background {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Long enough for any test: loads that run "until stopped" get this
/// duration and are killed when the test is done with them.
pub const UNTIL_STOPPED: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts `load` in the background until dropped (`load.duration` is ignored).
pub fn load_until_stopped(load: xtask::load::Load) -> Background {
    let load = xtask::load::Load { duration: UNTIL_STOPPED, ..load };
    Background(load.spawn().expect("wrk starts"))
}

pub use ljprobe_host::proc::cpu_time;

/// What requests to one route cost on this machine now, with no probe
/// attached: `count` requests one at a time, `gap` apart.
#[derive(Debug, Clone)]
pub struct RequestCost {
    pub route: String,
    /// Each request's wall-clock time as the client saw it, sorted.
    pub wall: Vec<std::time::Duration>,
    /// The worker's CPU time per request (the median, from its schedstat):
    /// what this CPU's speed decides, without time spent waiting for a CPU.
    pub cpu: std::time::Duration,
}

impl RequestCost {
    /// The `q` quantile (0..=1) of the wall-clock times.
    pub fn wall_quantile(&self, q: f64) -> std::time::Duration {
        let i = ((self.wall.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.wall[i]
    }

    pub fn median(&self) -> std::time::Duration {
        self.wall_quantile(0.5)
    }

    /// The log2 histogram buckets (their `lo_us`) that the event-loop
    /// iterations of such requests are expected in: from their CPU time (an
    /// iteration that never waits for a CPU) through the wall times measured
    /// here (10th to 90th percentile) and their CPU time plus `waited`, the
    /// time an iteration waited for a CPU on average in the run that is
    /// checked (ljprobe's `runnable_ms` per long iteration). Other processes
    /// come and go on a shared machine, a CPU quota stops the whole group:
    /// the waiting differs from one second to the next. On a quiet machine
    /// this is one bucket.
    pub fn buckets(&self, waited: std::time::Duration) -> Vec<u64> {
        let lo = bucket_lo(self.wall_quantile(0.1).min(self.cpu).as_micros() as u64);
        let hi = bucket_lo(self.wall_quantile(0.9).max(self.cpu + waited).as_micros() as u64);
        std::iter::successors(Some(lo), |b| Some(b * 2)).take_while(|b| *b <= hi).collect()
    }
}

/// The `lo_us` of the log2 histogram bucket (`[2^k, 2^(k+1))` us) holding `us`.
pub fn bucket_lo(us: u64) -> u64 {
    if us == 0 {
        0
    } else {
        1 << (63 - us.leading_zeros())
    }
}

/// Sends `count` requests for `route` (path and query) to a one-worker
/// gateway, one at a time and `gap` apart, after three unmeasured ones (they
/// get the route's loops JIT-compiled), and measures what they cost.
pub fn request_cost(gw: &Running, route: &str, count: usize, gap: std::time::Duration) -> RequestCost {
    use std::time::Instant;
    assert_eq!(gw.status.worker_pids.len(), 1, "request costs are measured on a one-worker gateway");
    assert!(count > 0);
    let worker = gw.worker();
    let get = |path: &str| {
        let resp = xtask::gateway::http_get(gw.config.port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(resp.starts_with("HTTP/1.1 200"), "GET {path}: {}", resp.lines().next().unwrap_or_default());
    };
    for _ in 0..3 {
        get(route);
    }
    let (mut wall, mut cpu) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for _ in 0..count {
        std::thread::sleep(gap);
        let before = cpu_time(worker).expect("the worker runs");
        let t = Instant::now();
        get(route);
        wall.push(t.elapsed());
        cpu.push(cpu_time(worker).expect("the worker runs").saturating_sub(before));
    }
    wall.sort();
    cpu.sort();
    let cost = RequestCost { route: route.to_string(), wall, cpu: cpu[count / 2] };
    eprintln!(
        "measured {route}: cpu {:?}/request, wall median {:?} (p10 {:?}, p90 {:?})",
        cost.cpu,
        cost.median(),
        cost.wall_quantile(0.1),
        cost.wall_quantile(0.9)
    );
    cost
}

/// `route` with `?n=` (or `&n=`) set: the planted routes multiply their work by n.
pub fn with_n(route: &str, n: f64) -> String {
    let sep = if route.contains('?') { '&' } else { '?' };
    format!("{route}{sep}n={n:.6}")
}

/// The `n` (0.001..=1000, what the planted routes accept) that makes a
/// request for `route` cost the worker `target` of CPU time on this machine
/// now. The work is linear in n, so two measurements place it: n = 0.001
/// (nearly only the gateway's own per-request cost) and n = 1; a third, at
/// the n they give, corrects it (the gateway's own part varies most). If
/// the gateway's own cost already exceeds `target`, n is the least there is.
pub fn calibrate_n(gw: &Running, route: &str, target: std::time::Duration) -> f64 {
    use std::time::Duration;
    const LEAST: f64 = 0.001;
    let cpu = |n: f64, count: usize| request_cost(gw, &with_n(route, n), count, Duration::ZERO).cpu.as_secs_f64();
    let base = cpu(LEAST, 30);
    let one = cpu(1.0, 5);
    let per_n = (one - base) / (1.0 - LEAST);
    assert!(per_n > 0.0, "{route}: n=1 cost {one} s of CPU, n={LEAST} {base} s: the work does not grow with n");
    let n = ((target.as_secs_f64() - base) / per_n).clamp(LEAST, 1000.0);
    let n = (n + (target.as_secs_f64() - cpu(n, 30)) / per_n).clamp(LEAST, 1000.0);
    eprintln!("calibrated {route}: n={n:.6} for {target:?} of CPU per request");
    n
}
