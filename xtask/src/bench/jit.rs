//! `cargo xtask bench jit`: what `ljprobe jit` costs. Its cost has two parts:
//! the cpu tool's sampler, and a trap per watched write of the VM's
//! `jit_State` (a few per trace compiled or aborted, one per trace exit). So:
//!
//! - the gateway's throughput and CPU per request on /hot/jit (long requests,
//!   compiled) and on /health (tens of thousands of short requests a second),
//!   beside `ljprobe cpu` alone, as ratios to interleaved runs without;
//! - what one trace exit costs more while watched: a standalone script that
//!   takes a known number of side exits, timed by itself with and without
//!   `ljprobe jit --max-exits 0` (every exit watched) attached, interleaved.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xtask::paths;

use super::{measure, print_bpf, print_cpu_ratios, print_goals, print_ratios, tools::Tool, Suite};

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let tools = || vec![Tool::LjprobeJit, Tool::LjprobeCpu(99)];
    let busy = Suite { route: "/hot/jit", connections: 4, tools: tools(), own_cost: Tool::LjprobeJit };
    let cheap = Suite { route: "/health", connections: 20, tools: tools(), own_cost: Tool::LjprobeJit };
    let busy_m = measure(&busy, duration, rounds)?;
    let cheap_m = measure(&cheap, duration, rounds)?;
    let exits = exit_cost(rounds)?;
    let secs = duration.as_secs();
    println!("jit overhead: {secs} s per wrk -t1 run, {rounds} rounds per route; nginx 1 worker, debug LuaJIT");
    let bench = super::bench_command();
    println!("reproduce: {bench} jit --duration {secs}s --rounds {rounds}");
    let mut goals = Vec::new();
    for (suite, m) in [(&busy, &busy_m), (&cheap, &cheap_m)] {
        println!("\n--- {} with wrk -c{} ---", suite.route, suite.connections);
        let med = print_ratios(suite, m, rounds);
        print_cpu_ratios(suite, m, rounds);
        print_bpf(suite, m);
        m.own.print();
        goals.push((format!("{}: jit throughput ratio >= 0.98", suite.route), format!("{:.3}", med[0]), med[0] >= 0.98));
    }
    println!("\n--- trace exits, standalone luajit ({} exits a run) ---", EXITS);
    for (without, with) in &exits {
        println!("  exit loop: {without:.3} s without, {with:.3} s with ljprobe jit --max-exits 0: +{:.2} us an exit", (with - without) / EXITS as f64 * 1e6);
    }
    let mut extra: Vec<f64> = exits.iter().map(|(a, b)| (b - a) / EXITS as f64 * 1e6).collect();
    extra.sort_by(f64::total_cmp);
    println!("  median: +{:.2} us an exit", extra[extra.len() / 2]);
    print_goals(&goals);
    Ok(())
}

/// Side exits the exit loop takes (every 10th of 2M iterations).
const EXITS: u64 = 200_000;

/// Waits for a line, takes `EXITS` side exits (hotexit raised so that no
/// side trace takes them over), prints its own time for the loop, waits.
const EXIT_LOOP: &str = r#"
io.read("*l")
jit.opt.start("hotexit=65000")
local function exits(m)
  local s, taken = 0, 0
  for i = 1, m do
    if i % 10 == 0 then taken = taken + 1 else s = s + 1 end
  end
  return taken
end
exits(1000)
local t0 = os.clock()
local taken = exits(2000000)
io.write(string.format("%.6f %d\n", os.clock() - t0, taken))
io.flush()
io.read("*l")
"#;

/// (seconds without, seconds with) per round, interleaved.
fn exit_cost(rounds: u32) -> Result<Vec<(f64, f64)>> {
    let dir = paths::target().join("bench");
    let script = dir.join("jit-exits.lua");
    std::fs::write(&script, EXIT_LOOP)?;
    let ljprobe = paths::target().join("release/ljprobe");
    let once = |watched: bool| -> Result<f64> {
        let mut lj = Command::new("/usr/bin/luajit").arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut stdin = lj.stdin.take().context("stdin")?;
        let mut out = BufReader::new(lj.stdout.take().context("stdout")?).lines();
        let mut tracer = None;
        if watched {
            let mut t = Command::new(&ljprobe)
                .args(["jit", "--pid", &lj.id().to_string(), "--duration", "120s", "--max-exits", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let err = BufReader::new(t.stderr.take().context("stderr")?);
            if !err.lines().map_while(Result::ok).any(|l| l.starts_with("ljprobe: tracing")) {
                bail!("ljprobe jit did not start");
            }
            tracer = Some(t);
        }
        writeln!(stdin, "go")?;
        let line = out.next().context("the exit loop reports")??;
        let (secs, taken) = line.split_once(' ').context("`secs taken`")?;
        if taken.parse::<u64>()? != EXITS {
            bail!("the exit loop took {taken} branches, not {EXITS}");
        }
        if let Some(mut t) = tracer {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(t.id() as i32, libc::SIGINT) };
            t.wait()?;
        }
        writeln!(stdin, "done")?;
        lj.wait()?;
        Ok(secs.parse()?)
    };
    (0..rounds.max(3)).map(|_| Ok((once(false)?, once(true)?))).collect()
}
