//! `cargo xtask bench report`: what `ljprobe report` costs the gateway, all its
//! tools together, beside `ljprobe cpu` alone, on a busy route (/hot/jit, about
//! 10 ms of compiled Lua a request) and on the cheap /health at tens of
//! thousands of requests a second.

use std::time::Duration;

use anyhow::Result;

use super::{measure, print_bpf, print_cpu_ratios, print_ratios, tools::Tool, Suite};

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let tools = || vec![Tool::LjprobeReport, Tool::LjprobeCpu(99)];
    let busy = Suite { route: "/hot/jit", connections: 4, tools: tools(), own_cost: Tool::LjprobeReport };
    let cheap = Suite { route: "/health", connections: 20, tools: tools(), own_cost: Tool::LjprobeReport };
    let busy_m = measure(&busy, duration, rounds)?;
    let cheap_m = measure(&cheap, duration, rounds)?;
    let secs = duration.as_secs();
    println!("report overhead: {secs} s per wrk -t1 run, {rounds} rounds per route; nginx 1 worker, debug LuaJIT");
    let bench = super::bench_command();
    println!("reproduce: {bench} report --duration {secs}s --rounds {rounds}");
    for (suite, m) in [(&busy, &busy_m), (&cheap, &cheap_m)] {
        println!("\n--- {} with wrk -c{} ---", suite.route, suite.connections);
        print_ratios(suite, m, rounds);
        print_cpu_ratios(suite, m, rounds);
        print_bpf(suite, m);
        m.own.print();
    }
    Ok(())
}
