//! `cargo xtask bench builds`: what `ljprobe cpu` costs on each LuaJIT build
//! it knows (docs/supported-luajit.md#cost), in exact figures: the sampling
//! program's run time per sample (kernel.bpf_stats_enabled), and ljprobe's own
//! CPU and peak RSS for a run, start-up included (choosing a stripped build's
//! layout scans the target's memory once).

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xtask::{cmd, luajit_builds, paths, setup};

use super::{median, Kid};

/// A script that spins in three nested Lua functions (compiled into one trace)
/// for `arg[1]` seconds.
const SPIN: &str = r#"
local function leaf(n) local s = 0 for i = 1, n do s = s + math.sin(i) end return s end
local function mid(n) return leaf(n) + 1 end
local function top(n) return mid(n) * 2 end
local deadline = os.clock() + tonumber(arg[1])
while os.clock() < deadline do top(20000) end
"#;

const FREQ: u32 = 999;

struct Row {
    build: String,
    ns_per_sample: Vec<f64>,
    cpu_secs: Vec<f64>,
    max_rss_mib: Vec<f64>,
}

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    setup::run()?;
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let ljprobe = paths::target().join("release/ljprobe");
    let dir = paths::target().join("bench-builds");
    fs::create_dir_all(&dir)?;
    let script = dir.join("spin.lua");
    fs::write(&script, SPIN)?;
    let mut builds: Vec<(String, Command)> = vec![
        ("openresty stock (/usr/bin/luajit)".into(), Command::new("/usr/bin/luajit")),
        ("openresty -g".into(), Command::new(paths::luajit_debug().join("bin/luajit"))),
    ];
    for b in luajit_builds::BUILDS {
        builds.push((b.name.to_string(), b.command()));
    }
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("turning on kernel.bpf_stats_enabled")?;
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for (name, mut cmd) in builds {
            let mut row = Row { build: name, ns_per_sample: vec![], cpu_secs: vec![], max_rss_mib: vec![] };
            for _ in 0..rounds {
                let secs = duration.as_secs() + 3;
                let mut spin = cmd_clone(&mut cmd);
                spin.arg(&script).arg(secs.to_string());
                let target = Kid::spawn(spin)?;
                thread::sleep(Duration::from_millis(300));
                let pid = target.0.as_ref().map_or(0, |c| c.id());
                let mut profiler = Command::new(&ljprobe);
                profiler
                    .args(["cpu", "--pid", &pid.to_string(), "--freq", &FREQ.to_string()])
                    .arg("--duration")
                    .arg(format!("{}ms", duration.as_millis()))
                    .arg("--folded")
                    .arg(dir.join("spin.folded"))
                    .arg("--svg")
                    .arg(dir.join("spin.svg"));
                let profiler = Kid::spawn(profiler)?;
                // Read while its programs are loaded: they go with it.
                thread::sleep(duration.mul_f64(0.8));
                let (runs, ns) = cpu_sample_stats();
                let (status, ru, stderr) = profiler.wait4()?;
                if !status.success() {
                    bail!("ljprobe cpu failed on {}: {}", row.build, stderr.trim());
                }
                if runs == 0 {
                    bail!("no cpu_sample runs counted on {}: {}", row.build, stderr.trim());
                }
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                row.ns_per_sample.push(ns as f64 / runs as f64);
                row.cpu_secs.push(secs(ru.ru_utime) + secs(ru.ru_stime));
                row.max_rss_mib.push(ru.ru_maxrss as f64 / 1024.0);
                drop(target);
            }
            rows.push(row);
        }
        Ok(())
    })();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    result?;
    let bench = super::bench_command();
    println!(
        "\nljprobe cpu --freq {FREQ} on each LuaJIT build, {:.0} s runs, {rounds} rounds (medians, range)\n\
         reproduce: {bench} builds --duration {}s --rounds {rounds}\n",
        duration.as_secs_f64(),
        duration.as_secs()
    );
    println!("{:<36}{:>22}{:>26}{:>18}", "build", "BPF ns per sample", "ljprobe CPU s (user+sys)", "peak RSS MiB");
    let cell = |v: &[f64], p: usize| {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        format!("{:.p$} ({:.p$}-{:.p$})", median(v), lo, hi)
    };
    for r in &rows {
        println!("{:<36}{:>22}{:>26}{:>18}", r.build, cell(&r.ns_per_sample, 0), cell(&r.cpu_secs, 2), cell(&r.max_rss_mib, 1));
    }
    Ok(())
}

/// `cmd` again (a Command cannot be cloned): same program and environment.
fn cmd_clone(cmd: &mut Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.stdout(Stdio::null());
    c
}

/// Runs and run time of the loaded `cpu_sample` programs (one ljprobe at a time here).
fn cpu_sample_stats() -> (u64, u64) {
    let Ok(out) = cmd::output(Command::new("bpftool").args(["prog", "show", "--json"])) else { return (0, 0) };
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    let mine = progs.iter().filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("cpu_sample")));
    mine.fold((0, 0), |(r, t), p| (r + p["run_cnt"].as_u64().unwrap_or(0), t + p["run_time_ns"].as_u64().unwrap_or(0)))
}
