//! `cargo xtask <command>`: set-up, the bundled gateway, load, demo and tests.

mod bench;
mod cgroup;
mod demo;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use xtask::{
    cmd, dist,
    gateway::{Config, LuaJitBuild},
    layouts,
    load::Load,
    paths, perf_gate, setup,
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
        /// Hold the test run (tests, gateways, ljprobe, wrk) to this percentage
        /// of one CPU with a cgroup quota, e.g. 50: no test may depend on how fast the CPU is.
        #[arg(long, value_name = "PERCENT")]
        cpu_cap: Option<u32>,
        /// The quota's period: the capped run gets PERCENT of it in every period.
        #[arg(long, default_value = "100ms", value_parser = parse_duration, requires = "cpu_cap")]
        cpu_cap_period: Duration,
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
    /// Build the file to copy to servers: static, stripped ljprobe with its
    /// checksum, man pages and shell completions in target/dist/.
    Dist {
        /// Then compare ljprobe's own CPU time and peak RSS, glibc build against
        /// the static one, on a busy gateway (docs/bench.md#static-build).
        #[arg(long)]
        measure: bool,
        /// Length of each measured `ljprobe cpu --stack mixed` run.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Sampling frequency of the measured runs.
        #[arg(long, default_value_t = 99)]
        freq: u32,
    },
    /// The CI regression job on the bundled gateway (docs/ci.md): profile /api/quote under
    /// fixed load and judge it with `ljprobe gate` against gateway/perf/'s baseline; exits 1 on a regression.
    PerfGate {
        /// Plant a regression first (`gateway up --slower`, e.g. quote_price): the job must fail.
        #[arg(long, value_name = "FUNCTION", default_value = "")]
        slower: String,
        /// Record the baseline (gateway/perf/quote.cpu.folded) instead of judging.
        #[arg(long)]
        update_baseline: bool,
        /// How long to profile.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Rewrite the built-in LuaJIT layouts (cli/layouts/*.toml) from the DWARF
    /// of the debug builds `setup` makes (docs/supported-luajit.md).
    Layouts,
    /// Measure what profiling costs the gateway (docs/bench.md).
    Bench {
        /// Pin the gateway's worker to the first CPU, and wrk and the profilers
        /// to the others (as `worker_cpu_affinity` does in production): the
        /// scheduler can then no longer move the load generator onto the
        /// worker's CPU, which changes its CPU a request by more than a probe.
        #[arg(long, global = true)]
        pin: bool,
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
        /// Plant a regression by configuration: this function of /api/quote
        /// (quote_parse, quote_price or quote_render) does 20% more work.
        #[arg(long, value_name = "FUNCTION", default_value = "")]
        slower: String,
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
        Task::Test { cpu_cap, cpu_cap_period, args } => test(&args, cpu_cap.map(|p| (p, cpu_cap_period))),
        Task::Gateway { action } => gateway(action),
        Task::Load { route, duration, connections, rate, port } => {
            let load = Load { url: format!("http://127.0.0.1:{port}"), route, duration, connections, rate };
            print!("{}", load.run()?);
            Ok(())
        }
        Task::Bench { pin, what } => bench::run(what, pin),
        Task::Layouts => layouts::run(),
        Task::PerfGate { slower, update_baseline, duration } => {
            setup::run()?;
            let passed = perf_gate::run(&perf_gate::Options { slower, update_baseline, duration })?;
            if !passed {
                eprintln!("perf-gate: a function got more expensive than the baseline allows (target/perf-gate/gate.md)");
                std::process::exit(1);
            }
            Ok(())
        }
        Task::Dist { measure, duration, rounds, freq } => {
            if measure {
                setup::run()?;
                return dist::measure(duration, rounds, freq);
            }
            let built = dist::build()?;
            dist::print(&built);
            Ok(())
        }
    }
}

fn gateway(action: GatewayAction) -> Result<()> {
    let prefix = Config::default().prefix;
    let current = Config::load(&prefix).unwrap_or_default();
    match action {
        GatewayAction::Up { stock_luajit, port, workers, slower } => {
            let luajit = if stock_luajit { LuaJitBuild::Stock } else { LuaJitBuild::Debug };
            let config = Config { port, backend_port: port + 1, workers, luajit, slower, ..Config::default() };
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

/// The README's test command, and all `.ci/run` runs. With `cap` (percent of
/// one CPU, period), the tests run in a cgroup with that CPU quota.
fn test(extra: &[String], cap: Option<(u32, Duration)>) -> Result<()> {
    setup::run()?;
    cmd::run(Command::new("cargo").args(["build", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let bin: PathBuf = paths::ljprobe_bin();
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    // The static build for tests/tests/dist.rs, at full speed before any CPU cap;
    // a filtered run builds it only if the dist tests run (they call dist::binary_built).
    let dist_bin = if extra.is_empty() { Some(dist::build()?.binary) } else { None };
    // End-to-end tests each start their own nginx; one at a time keeps ports and
    // CPU (2 cores) free for the thing being measured. No doc tests: there are none.
    let mut cargo = Command::new("cargo");
    cargo
        .args(["test", "--workspace", "--no-fail-fast", "--lib", "--bins", "--tests"])
        .args(extra)
        .args(["--", "--test-threads=1"])
        .env("LJPROBE_BIN", &bin)
        .current_dir(paths::root());
    if let Some(d) = &dist_bin {
        cargo.env("LJPROBE_DIST", d);
    }
    let (status, totals) = match cap {
        None => cmd::run_counting_tests(&mut cargo)?,
        Some((percent, period)) => {
            // Compiled at full speed first: the cap is for the tests, not rustc.
            let mut build = Command::new("cargo");
            build.args(["test", "--workspace", "--no-run", "--lib", "--bins", "--tests"]).args(extra).current_dir(paths::root());
            cmd::run(&mut build)?;
            let cap = cgroup::CpuCap::enter(percent, period)?;
            let run = cmd::run_counting_tests(&mut cargo);
            println!("{}", cap.summary());
            drop(cap);
            run?
        }
    };
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
