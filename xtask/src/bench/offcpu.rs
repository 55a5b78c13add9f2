//! `cargo xtask bench offcpu`: the sched_switch and epoll_wait tracers against
//! perf recording sched_switch with call graphs, on two routes:
//!
//! - a busy worker (`/hot/jit?n=0.02`, ~0.25 ms of compiled Lua a request, 20
//!   connections): it rarely sleeps, so this is the cost every other switch on
//!   the machine pays for the programs being attached;
//! - a blocking worker (`/block/sleep?ms=1`, 4 connections): every request
//!   blocks 1 ms in `usleep`, so every request goes through the stack capture
//!   at switch-out and the aggregation at switch-in.

use std::time::Duration;

use anyhow::Result;

use super::{measure, print_bpf, print_goals, print_ratios, tools::Tool, Suite};

fn tools() -> Vec<Tool> {
    vec![Tool::LjprobeOffcpu("lua"), Tool::LjprobeOffcpu("mixed"), Tool::LjprobeEpollLoop, Tool::PerfSwitch]
}

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let busy = Suite { route: "/hot/jit?n=0.02", connections: 20, tools: tools(), own_cost: Tool::LjprobeOffcpu("lua") };
    let blocking = Suite { route: "/block/sleep?ms=1", connections: 4, tools: tools(), own_cost: Tool::LjprobeOffcpu("lua") };
    let busy_m = measure(&busy, duration, rounds)?;
    let blocking_m = measure(&blocking, duration, rounds)?;
    let secs = duration.as_secs();
    println!("offcpu overhead: {secs} s per wrk -t1 run, {rounds} rounds per route; nginx 1 worker, debug LuaJIT");
    let bench = super::bench_command();
    println!("reproduce: {bench} offcpu --duration {secs}s --rounds {rounds}");
    let mut goals = Vec::new();
    for (suite, m) in [(&busy, &busy_m), (&blocking, &blocking_m)] {
        println!("\n--- {} with wrk -c{} ---", suite.route, suite.connections);
        let med = print_ratios(suite, m, rounds);
        let loss = |i: usize| (1.0 - med[i]) * 100.0;
        let r = suite.route;
        goals.push((format!("{r}: offcpu lua loss <= 2%"), format!("{:.1}%", loss(0)), loss(0) <= 2.0));
        goals.push((format!("{r}: offcpu mixed loss <= 5%"), format!("{:.1}%", loss(1)), loss(1) <= 5.0));
        goals.push((format!("{r}: epoll-loop loss <= 2%"), format!("{:.1}%", loss(2)), loss(2) <= 2.0));
        goals.push((
            format!("{r}: offcpu lua no worse than perf"),
            format!("{:.1}% vs {:.1}%", loss(0), loss(3)),
            // Within the noise of one sitting (see docs/bench.md) counts as no worse.
            med[0] >= med[3] - 0.01,
        ));
        print_bpf(suite, m);
        m.own.print();
    }
    print_goals(&goals);
    Ok(())
}
