//! `cargo xtask demo`: what ljprobe does, shown on the bundled gateway under load.

use std::{process::Command, thread, time::Duration};

use anyhow::{Context, Result};
use xtask::{
    cmd,
    gateway::{Config, Running},
    load::{requests_per_sec, Load},
    paths, setup,
};

pub fn run() -> Result<()> {
    setup::run()?;
    cmd::run(Command::new("cargo").args(["build", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let gw = Running::start(Config::default())?;
    let load = Load {
        url: gw.config.url(),
        route: "/hot/jit".into(),
        duration: Duration::from_secs(8),
        connections: 4,
        rate: None,
    };
    eprintln!("demo: driving {} for {:?} with wrk", load.route, load.duration);
    let wrk = load.spawn()?;
    thread::sleep(Duration::from_secs(1));

    println!("\n=== ljprobe doctor --pid {} (the nginx master; its workers are checked) ===", gw.master());
    let doctor = Command::new(paths::ljprobe_bin())
        .args(["doctor", "--pid", &gw.master().to_string()])
        .status()
        .context("cannot run ljprobe")?;

    let out_dir = paths::target().join("demo");
    std::fs::create_dir_all(&out_dir)?;
    let svg = out_dir.join("ljprobe-cpu-mixed.svg");
    println!("\n=== ljprobe cpu --pid {} --stack mixed --duration 3s (where /hot/jit's CPU goes) ===", gw.master());
    let cpu = Command::new(paths::ljprobe_bin())
        .args(["cpu", "--pid", &gw.master().to_string(), "--stack", "mixed", "--duration", "3s", "--freq", "199"])
        .arg("--svg")
        .arg(&svg)
        .status()
        .context("cannot run ljprobe")?;

    let out = wrk.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout);

    // A blocking route, lightly loaded: one connection, 20 requests a second.
    let block = Load { route: "/block/sleep".into(), connections: 1, rate: Some(20), ..load.clone() };
    eprintln!("demo: driving {} at 20 requests/sec", block.route);
    let mut block_wrk = block.spawn()?;
    thread::sleep(Duration::from_secs(2));
    let off_svg = out_dir.join("ljprobe-offcpu.svg");
    println!("\n=== ljprobe offcpu --pid {} --duration 3s (where /block/sleep's worker waits) ===", gw.master());
    let offcpu = Command::new(paths::ljprobe_bin())
        .args(["offcpu", "--pid", &gw.master().to_string(), "--duration", "3s"])
        .arg("--svg")
        .arg(&off_svg)
        .status()
        .context("cannot run ljprobe")?;
    let loop_svg = out_dir.join("ljprobe-epoll-loop.svg");
    println!("\n=== ljprobe epoll-loop --pid {} --duration 3s (what blocks the event loop) ===", gw.master());
    let epoll = Command::new(paths::ljprobe_bin())
        .args(["epoll-loop", "--pid", &gw.master().to_string(), "--duration", "3s"])
        .arg("--svg")
        .arg(&loop_svg)
        .status()
        .context("cannot run ljprobe")?;
    let _ = block_wrk.kill();
    let _ = block_wrk.wait();

    // Allocation churn: the heap saws up and down, the collector runs flat out.
    let churn = Load { route: "/alloc/churn".into(), connections: 4, rate: None, ..load.clone() };
    eprintln!("demo: driving {} with wrk", churn.route);
    let mut churn_wrk = churn.spawn()?;
    thread::sleep(Duration::from_secs(1));
    let gc_svg = out_dir.join("ljprobe-gc.svg");
    println!("\n=== ljprobe gc --pid {} --duration 3s (the Lua heap and its collector under /alloc/churn) ===", gw.master());
    let gc = Command::new(paths::ljprobe_bin())
        .args(["gc", "--pid", &gw.master().to_string(), "--duration", "3s"])
        .arg("--svg")
        .arg(&gc_svg)
        .status()
        .context("cannot run ljprobe")?;
    let alloc_svg = out_dir.join("ljprobe-alloc.svg");
    println!("\n=== ljprobe alloc --pid {} --duration 3s (who allocates, in bytes, under /alloc/churn) ===", gw.master());
    let alloc = Command::new(paths::ljprobe_bin())
        .args(["alloc", "--pid", &gw.master().to_string(), "--duration", "3s"])
        .arg("--svg")
        .arg(&alloc_svg)
        .status()
        .context("cannot run ljprobe")?;
    let _ = churn_wrk.kill();
    let _ = churn_wrk.wait();

    // Which requests are slow, and where their time goes: one connection per
    // route, so each route's time is its own.
    let routes = ["/health", "/hot/jit", "/block/sleep", "/slow/upstream", "/slow/access", "/api/backend/echo?delay_ms=10"];
    let latency_load: Vec<_> = routes
        .iter()
        .map(|r| Load { route: r.to_string(), connections: 1, rate: Some(20), ..load.clone() }.spawn())
        .collect::<Result<_>>()?;
    thread::sleep(Duration::from_secs(1));
    let latency_svg = out_dir.join("ljprobe-latency.svg");
    println!("\n=== ljprobe latency --pid {} --duration 4s (per-request latency by location, and where it went) ===", gw.master());
    let latency = Command::new(paths::ljprobe_bin())
        .args(["latency", "--pid", &gw.master().to_string(), "--duration", "4s", "--slowest", "3"])
        .arg("--svg")
        .arg(&latency_svg)
        .status()
        .context("cannot run ljprobe")?;
    for mut w in latency_load {
        let _ = w.kill();
        let _ = w.wait();
    }

    // What stays live: the planted leak beside allocation churn.
    let leaky: Vec<_> = [("/leak?bytes=2000", 1), ("/alloc/churn", 1)]
        .iter()
        .map(|(r, c)| Load { route: r.to_string(), connections: *c, rate: None, ..load.clone() }.spawn())
        .collect::<Result<_>>()?;
    thread::sleep(Duration::from_secs(1));
    let leak_svg = out_dir.join("ljprobe-leak.svg");
    println!("\n=== ljprobe leak --pid {} --duration 5s --record 2s (what /leak leaves live, beside /alloc/churn) ===", gw.master());
    let leak = Command::new(paths::ljprobe_bin())
        .args(["leak", "--pid", &gw.master().to_string(), "--duration", "5s", "--record", "2s", "--top", "3"])
        .arg("--svg")
        .arg(&leak_svg)
        .status()
        .context("cannot run ljprobe")?;
    for mut w in leaky {
        let _ = w.kill();
        let _ = w.wait();
    }
    let heap_svg = out_dir.join("ljprobe-heap.svg");
    println!("\n=== ljprobe heap --pid {} --top 5 (every object of each worker's heap, the biggest holders by path) ===", gw.master());
    let heap = Command::new(paths::ljprobe_bin())
        .args(["heap", "--pid", &gw.master().to_string(), "--top", "5"])
        .arg("--svg")
        .arg(&heap_svg)
        .status()
        .context("cannot run ljprobe")?;

    // Why code falls out of the JIT: /hot/nyi's first requests abort at its
    // closure and its loops get blacklisted; /hot/jit runs compiled.
    let jitty: Vec<_> = ["/hot/nyi", "/hot/jit"]
        .iter()
        .map(|r| Load { route: r.to_string(), connections: 1, rate: Some(20), ..load.clone() }.spawn())
        .collect::<Result<_>>()?;
    let jit_svg = out_dir.join("ljprobe-jit.svg");
    println!("\n=== ljprobe jit --pid {} --duration 4s (VM states, trace aborts, blacklisting, traces and exits of /hot/nyi and /hot/jit) ===", gw.master());
    let jit = Command::new(paths::ljprobe_bin())
        .args(["jit", "--pid", &gw.master().to_string(), "--duration", "4s", "--top", "5"])
        .arg("--svg")
        .arg(&jit_svg)
        .status()
        .context("cannot run ljprobe")?;
    for mut w in jitty {
        let _ = w.kill();
        let _ = w.wait();
    }

    // Everything at once: the planted problems under mixed load, one page.
    let mixed: Vec<_> = ["/hot/nyi", "/block/sleep", "/alloc/churn"]
        .iter()
        .map(|r| Load { route: r.to_string(), connections: 1, rate: None, ..load.clone() }.spawn())
        .collect::<Result<_>>()?;
    thread::sleep(Duration::from_secs(1));
    let report_dir = out_dir.join("ljprobe-report");
    println!("\n=== ljprobe report --pid {} --duration 5s (cpu, offcpu, epoll-loop, gc and alloc together, one page) ===", gw.master());
    let page = Command::new(paths::ljprobe_bin())
        .args(["report", "--pid", &gw.master().to_string(), "--duration", "5s", "--out"])
        .arg(&report_dir)
        .status()
        .context("cannot run ljprobe")?;
    for mut w in mixed {
        let _ = w.kill();
        let _ = w.wait();
    }
    println!("\n=== load ===");
    match requests_per_sec(&report) {
        Some(rps) => println!("the gateway served {} at {rps:.0} requests/sec", load.route),
        None => println!("wrk reported no throughput:\n{report}"),
    }
    println!("doctor: {}", if doctor.success() { "found the Lua VM in every worker" } else { "reported a problem (see above)" });
    if cpu.success() {
        println!("cpu: open {} in a browser: nginx C at the bottom, the Lua handler, hot_jit_work with trace#N on top", svg.display());
    }
    if offcpu.success() {
        println!("offcpu: open {}: the worker's blocked time under block_sleep_work, in clock_nanosleep", off_svg.display());
    }
    if epoll.success() {
        println!("epoll-loop: open {}: iterations of 16-32 ms, one per /block/sleep request", loop_svg.display());
    }
    if gc.success() {
        println!("gc: open {}: the heap sawing between about 1 and 12 MiB, GC cycles ticked along the bottom", gc_svg.display());
    }
    if alloc.success() {
        println!("alloc: open {}: alloc_churn_work holds the bytes, most in lj_buf_tostr (the csv string built by ..)", alloc_svg.display());
    }
    if latency.success() {
        println!("latency: open {}: per location its latency histogram and where the time went (phase, CPU, blocked, waiting)", latency_svg.display());
    }
    if leak.success() {
        println!("leak: open {}: leak_grow's live bytes, held by the `retained` table of app/services/leak.lua", leak_svg.display());
    }
    if heap.success() {
        println!("heap: open {}: the heap by reference path, `retained` the widest", heap_svg.display());
    }
    if jit.success() {
        println!("jit: hot_nyi_work interpreted, its traces aborting at the closure (NYI: bytecode FNEW) and its loops blacklisted; hot_jit_work compiled; {} has the Lua stacks by VM state", jit_svg.display());
    }
    if page.success() {
        println!("report: open {} in a browser: the findings first, then every graph", report_dir.join("index.html").display());
    }
    drop(gw);
    if !doctor.success() || !cpu.success() || !offcpu.success() || !epoll.success() || !gc.success() || !alloc.success() || !latency.success() || !leak.success() || !heap.success() || !jit.success() || !page.success() {
        anyhow::bail!("ljprobe failed against the gateway (see above)");
    }
    Ok(())
}
