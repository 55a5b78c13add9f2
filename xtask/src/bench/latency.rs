//! `cargo xtask bench latency`: what following every request costs the
//! gateway, on the cheap /health at its full rate (tens of thousands of
//! requests a second, where a per-request probe weighs most) and on /hot/jit
//! (about 10 ms of Lua a request), beside a bpftrace uprobe that only counts
//! requests: the least any tool that sees each request can cost. Sampled
//! runs (`--sample`) are measured at 5% and 1%; their windows come every
//! 10 s, so run with `--duration 20s` or more for two per run.

use std::time::Duration;

use anyhow::Result;

use super::{measure, print_bpf, print_cpu_ratios, print_goals, print_ratios, tools::Tool, Suite};

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let tools = || {
        vec![Tool::LjprobeLatency(None), Tool::LjprobeLatency(Some(5)), Tool::LjprobeLatency(Some(1)), Tool::BpftraceRequestCount]
    };
    let cheap = Suite { route: "/health", connections: 20, tools: tools(), own_cost: Tool::LjprobeLatency(None) };
    let busy = Suite { route: "/hot/jit", connections: 4, tools: tools(), own_cost: Tool::LjprobeLatency(None) };
    let cheap_m = measure(&cheap, duration, rounds)?;
    let busy_m = measure(&busy, duration, rounds)?;
    let secs = duration.as_secs();
    println!("latency overhead: {secs} s per wrk -t1 run, {rounds} rounds per route; nginx 1 worker, debug LuaJIT");
    let bench = super::bench_command();
    println!("reproduce: {bench} latency --duration {secs}s --rounds {rounds}");
    let mut goals = Vec::new();
    for (suite, m) in [(&cheap, &cheap_m), (&busy, &busy_m)] {
        println!("\n--- {} with wrk -c{} ---", suite.route, suite.connections);
        let med = print_ratios(suite, m, rounds);
        print_cpu_ratios(suite, m, rounds);
        print_bpf(suite, m);
        m.own.print();
        if suite.route == "/health" {
            for (i, what) in [(0, "every request"), (1, "--sample 5"), (2, "--sample 1")] {
                goals.push((format!("/health: latency ({what}) ratio >= 0.97"), format!("{:.3}", med[i]), med[i] >= 0.97));
            }
        }
    }
    print_goals(&goals);
    Ok(())
}
