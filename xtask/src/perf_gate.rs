//! `cargo xtask perf-gate`: the CI regression job of docs/ci.md, worked on the
//! bundled gateway. Start it, drive fixed load on /api/quote, profile the worker
//! with `ljprobe cpu`, and judge the profile with `ljprobe gate` against the
//! baseline committed in gateway/perf/; the exit code is the gate's.
//!
//! The baseline holds frame labels with `gateway/...` paths: Lua chunk names
//! are absolute, and a clone lives anywhere, so both sides are written
//! relative to the repository before they are compared.

use std::{fs, path::PathBuf, process::Command, thread, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    cmd,
    gateway::{self, Config, LuaJitBuild, Running},
    load::Load,
    paths,
};

pub struct Options {
    /// Plant the regression (`gateway up --slower`): the job must then fail.
    pub slower: String,
    /// Record a new baseline instead of judging against it.
    pub update_baseline: bool,
    pub duration: Duration,
}

pub fn baseline() -> PathBuf {
    paths::gateway_src().join("perf/quote.cpu.folded")
}

/// Runs the job; Ok(true) when the gate passed.
pub fn run(o: &Options) -> Result<bool> {
    cmd::run(Command::new("cargo").args(["build", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let ljprobe = paths::ljprobe_bin();
    let out = paths::target().join("perf-gate");
    fs::create_dir_all(&out)?;
    let port = gateway::free_port_pair(Some(18100))?;
    let config = Config {
        prefix: out.join("gateway"),
        port,
        backend_port: port + 1,
        workers: 1,
        luajit: LuaJitBuild::Debug,
        slower: o.slower.clone(),
    };
    let _ = config.down();
    let gw = Running::start(config)?;
    let load = Load { url: gw.config.url(), route: "/api/quote".into(), duration: o.duration + Duration::from_secs(10), connections: 2, rate: None };
    let mut wrk = load.spawn()?;
    // Traces compiled and the rate steady before profiling starts.
    thread::sleep(Duration::from_secs(2));
    let raw = out.join("current.raw.folded");
    let profiled = cmd::run(Command::new(&ljprobe).args([
        "cpu",
        "--pid",
        &gw.worker().to_string(),
        "--duration",
        &format!("{}ms", o.duration.as_millis()),
        "--freq",
        "4999",
        "--folded",
        raw.to_str().unwrap(),
        "--svg",
        out.join("current.svg").to_str().unwrap(),
    ]));
    let _ = wrk.kill();
    let _ = wrk.wait();
    drop(gw);
    profiled?;

    let text = fs::read_to_string(&raw).with_context(|| format!("cannot read {}", raw.display()))?;
    let prefix = format!("{}/", paths::root().display());
    let current = out.join("current.folded");
    fs::write(&current, text.replace(&prefix, ""))?;
    if o.update_baseline {
        fs::create_dir_all(baseline().parent().unwrap())?;
        fs::copy(&current, baseline())?;
        eprintln!("perf-gate: new baseline {} (commit it)", baseline().display());
        return Ok(true);
    }
    if !baseline().exists() {
        bail!("no baseline at {}: record one with `cargo xtask perf-gate --update-baseline`", baseline().display());
    }
    // Relative paths: the Markdown for the pull request names them.
    let rel = |p: &std::path::Path| p.strip_prefix(paths::root()).map(|r| r.to_path_buf()).unwrap_or_else(|_| p.to_path_buf());
    let status = Command::new(&ljprobe)
        .current_dir(paths::root())
        .args(["gate", "--baseline"])
        .arg(rel(&baseline()))
        .arg("--current")
        .arg(rel(&current))
        .args(["--max-regress", "5%", "--functions", "^quote_"])
        .arg("--svg")
        .arg(rel(&out.join("gate.svg")))
        .arg("--markdown")
        .arg(rel(&out.join("gate.md")))
        .status()
        .context("cannot run ljprobe gate")?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("ljprobe gate could not judge the run ({status})"),
    }
}
