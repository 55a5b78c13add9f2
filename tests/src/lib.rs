//! Harness for the end-to-end tests: the real `ljprobe` binary, a real gateway per
//! test on free loopback ports, and checks on what a user would read.

pub mod jp;

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
    require_root();
    let port = xtask::gateway::free_port_pair(None).expect("free ports on loopback");
    let config = Config {
        prefix: paths::target().join("test-gateways").join(name),
        port,
        backend_port: port + 1,
        workers,
        luajit,
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
