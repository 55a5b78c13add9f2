//! `cargo xtask bench heap`: what a heap snapshot costs. First standalone
//! LuaJIT processes (Debian's stripped `luajit2`) holding about 10 MB, 100 MB
//! and 1 GB of tables and strings: how long `ljprobe heap` stops each, how
//! long its copy and walk take, and ljprobe's own peak RSS. Then the
//! gateway's throughput on /health with a snapshot of its worker every
//! second, and with `ljprobe leak`, as ratios to interleaved runs without.

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xtask::paths;

use super::{measure, print_cpu_ratios, print_goals, print_ratios, tools::Tool, Kid, Suite};

/// Holds `arg[1]` pairs of a one-slot table and a 100-byte string (about
/// 230 bytes a pair with the arrays that hold them), prints its heap after a
/// full collection, then waits in `read` until its stdin closes.
const HOLD: &str = r#"
local n = tonumber(arg[1])
held = { t = {}, s = {} }
for i = 1, n do held.t[i] = { i } end
for i = 1, n do held.s[i] = string.rep("y", 90) .. string.format("%010d", i) end
collectgarbage(); collectgarbage()
io.write(string.format("%.0f\n", collectgarbage("count") * 1024)); io.flush()
io.read("*l")
"#;

const SIZES: [(&str, u64); 3] = [("10 MB", 45_000), ("100 MB", 450_000), ("1 GB", 4_500_000)];
/// Snapshots per heap size.
const SNAPSHOTS: usize = 3;

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let suite = Suite {
        route: "/health",
        connections: 20,
        tools: vec![Tool::LjprobeHeapEverySecond, Tool::LjprobeLeak],
        own_cost: Tool::LjprobeHeapEverySecond,
    };
    // Builds ljprobe (release) and measures the gateway first.
    let m = measure(&suite, duration, rounds)?;
    let ljprobe = paths::target().join("release/ljprobe");
    let out = paths::target().join("bench");
    let script = out.join("heap-hold.lua");
    fs::write(&script, HOLD)?;
    let mut rows = Vec::new();
    for (label, pairs) in SIZES {
        eprintln!("bench: heap of {label} ({pairs} pairs)");
        let mut target = Command::new("/usr/bin/luajit")
            .arg(&script)
            .arg(pairs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting /usr/bin/luajit (cargo xtask setup installs it)")?;
        let mut lines = BufReader::new(target.stdout.take().expect("piped")).lines();
        let heap: u64 = lines.next().context("the script printed nothing")??.trim().parse()?;
        let mut snaps = Vec::new();
        for i in 0..SNAPSHOTS {
            let json = out.join(format!("heap-{pairs}-{i}.json"));
            let mut c = Command::new(&ljprobe);
            c.args(["heap", "--pid", &target.id().to_string(), "--json"]).arg(&json).arg("--svg").arg(out.join("heap-bench.svg"));
            let started = Instant::now();
            let (status, ru, stderr) = Kid::spawn(c)?.wait4()?;
            let wall = started.elapsed().as_secs_f64();
            if !status.success() {
                bail!("ljprobe heap failed ({status}): {}", stderr.trim());
            }
            let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json)?)?;
            let p = &v["processes"][0];
            let f = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
            snaps.push(Snap {
                paused_ms: f(&p["snapshot"]["paused_ms"]),
                copy_ms: f(&p["snapshot"]["copy_ms"]),
                walk_ms: f(&p["walk_ms"]),
                copied: f(&p["snapshot"]["copied_bytes"]),
                objects: f(&p["walked"]["objects"]),
                consistent: p["snapshot"]["consistent"] == true,
                wall,
                cpu: ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 / 1e6 + ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 / 1e6,
                rss_mib: ru.ru_maxrss as f64 / 1024.0,
            });
        }
        drop(target.stdin.take());
        let _ = target.wait();
        rows.push((label, heap, snaps));
    }

    let secs = duration.as_secs();
    println!("heap snapshot cost: standalone luajit2 (stripped), {SNAPSHOTS} snapshots per heap; then /health with a snapshot a second");
    let bench = super::bench_command();
    println!("reproduce: {bench} heap --duration {secs}s --rounds {rounds}");
    println!("\n| heap (gc.total) | objects | copied | pause (median) | pause per 100 MB | copy | walk | ljprobe wall | ljprobe CPU | ljprobe peak RSS | consistent |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut goals = Vec::new();
    for (label, heap, snaps) in &rows {
        let med = |f: &dyn Fn(&Snap) -> f64| {
            let mut v: Vec<f64> = snaps.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let pause = med(&|s| s.paused_ms);
        let per100 = pause / (*heap as f64 / 100e6);
        println!(
            "| {label}: {:.0} MB | {:.0} | {:.0} MB | {pause:.1} ms (max {:.1}) | {per100:.1} ms | {:.0} ms | {:.0} ms | {:.2} s | {:.2} s | {:.0} MiB | {} of {} |",
            *heap as f64 / 1e6,
            med(&|s| s.objects),
            med(&|s| s.copied) / 1e6,
            snaps.iter().map(|s| s.paused_ms).fold(0.0, f64::max),
            med(&|s| s.copy_ms),
            med(&|s| s.walk_ms),
            med(&|s| s.wall),
            med(&|s| s.cpu),
            med(&|s| s.rss_mib),
            snaps.iter().filter(|s| s.consistent).count(),
            snaps.len()
        );
        goals.push((format!("{label}: pause <= 50 ms per 100 MB of heap"), format!("{per100:.1} ms"), per100 <= 50.0));
    }
    println!("\n--- {} with wrk -c{}: a snapshot of the worker every second; ljprobe leak over the whole run ---", suite.route, suite.connections);
    let med = print_ratios(&suite, &m, rounds);
    print_cpu_ratios(&suite, &m, rounds);
    m.own.print();
    println!("(no goal in the issue: each snapshot stops the worker for its copy; leak records every allocation for its last 2 s; medians {:.3} and {:.3})", med[0], med[1]);
    print_goals(&goals);
    Ok(())
}

struct Snap {
    paused_ms: f64,
    copy_ms: f64,
    walk_ms: f64,
    copied: f64,
    objects: f64,
    consistent: bool,
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}
