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
        duration: Duration::from_secs(6),
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

    let out = wrk.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    println!("\n=== load ===");
    match requests_per_sec(&report) {
        Some(rps) => println!("the gateway served {} at {rps:.0} requests/sec", load.route),
        None => println!("wrk reported no throughput:\n{report}"),
    }
    println!("doctor: {}", if doctor.success() { "found the Lua VM in every worker" } else { "reported a problem (see above)" });
    drop(gw);
    if !doctor.success() {
        anyhow::bail!("ljprobe doctor failed against the gateway");
    }
    Ok(())
}
