//! `cargo xtask <command>`: set-up, the bundled gateway, load, demo and tests.

mod bench;
mod demo;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use xtask::{
    cmd,
    gateway::{Config, LuaJitBuild},
    load::Load,
    paths, setup,
};

/// `10s`, `500ms`, `2m`: the same syntax as ljprobe's own options.
pub(crate) use ljprobe_host::duration::parse as parse_duration;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ljprobe project automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (Debian packages, rust-src, bpf-linker, debug LuaJIT); idempotent.
    Setup,
    /// The main job: set up, start the gateway, drive load, and run ljprobe against it.
    Demo,
    /// Set up, build, and run every test (unit and end-to-end, as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Start, stop or inspect the bundled gateway on loopback.
    Gateway {
        #[command(subcommand)]
        action: GatewayAction,
    },
    /// Drive the gateway with wrk.
    Load {
        /// Route to load, e.g. /hot/jit.
        #[arg(long)]
        route: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 10)]
        connections: u32,
        /// Total requests per second (default: as fast as it goes).
        #[arg(long)]
        rate: Option<u32>,
        #[arg(long, default_value_t = 18080)]
        port: u16,
    },
    /// Measure what profiling costs the gateway (docs/bench.md).
    Bench {
        #[command(subcommand)]
        what: bench::What,
    },
}

#[derive(Subcommand)]
enum GatewayAction {
    Up {
        /// Use Debian's stock stripped libluajit instead of the debug build.
        #[arg(long)]
        stock_luajit: bool,
        #[arg(long, default_value_t = 18080)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        workers: u32,
    },
    Down,
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Setup => setup::run(),
        Task::Demo => demo::run(),
        Task::Test { args } => test(&args),
        Task::Gateway { action } => gateway(action),
        Task::Load { route, duration, connections, rate, port } => {
            let load = Load { url: format!("http://127.0.0.1:{port}"), route, duration, connections, rate };
            print!("{}", load.run()?);
            Ok(())
        }
        Task::Bench { what } => bench::run(what),
    }
}

fn gateway(action: GatewayAction) -> Result<()> {
    let prefix = Config::default().prefix;
    let current = Config::load(&prefix).unwrap_or_default();
    match action {
        GatewayAction::Up { stock_luajit, port, workers } => {
            let luajit = if stock_luajit { LuaJitBuild::Stock } else { LuaJitBuild::Debug };
            let config = Config { port, backend_port: port + 1, workers, luajit, ..Config::default() };
            let status = config.up()?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        GatewayAction::Down => current.down(),
        GatewayAction::Status { json } => {
            let s = current.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.running {
                println!("running at {}: master {:?}, workers {:?}", s.url, s.master_pid, s.worker_pids);
                println!("LuaJIT ({:?}): {}", s.luajit, s.libluajit.join(", "));
            } else {
                println!("not running");
            }
            Ok(())
        }
    }
}

/// The README's test command, and all `.ci/run` runs.
fn test(extra: &[String]) -> Result<()> {
    setup::run()?;
    cmd::run(Command::new("cargo").args(["build", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let bin: PathBuf = paths::ljprobe_bin();
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    // End-to-end tests each start their own nginx; one at a time keeps ports and
    // CPU (2 cores) free for the thing being measured. No doc tests: there are none.
    let mut cargo = Command::new("cargo");
    cargo
        .args(["test", "--workspace", "--no-fail-fast", "--lib", "--bins", "--tests"])
        .args(extra)
        .args(["--", "--test-threads=1"])
        .env("LJPROBE_BIN", &bin)
        .current_dir(paths::root());
    let (status, totals) = cmd::run_counting_tests(&mut cargo)?;
    // One closing line for the whole run, whatever cargo printed per binary.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    if !status.success() || totals.failed > 0 {
        bail!("some tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
