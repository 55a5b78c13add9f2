//! `cargo xtask bench alloc`: `ljprobe alloc` (sampled, and `--all`) and
//! `ljprobe gc` (readings only, and `--exact` with its uprobe on the atomic
//! phase), against a
//! bpftrace uprobe that only counts calls of the same allocator function, on
//! two routes:
//!
//! - `/alloc/churn` (4 connections): a few hundred kilobytes of tables and
//!   strings a request;
//! - `/health` (20 connections): a trivial Lua route at tens of thousands of
//!   requests a second, about a dozen allocations each: the case where a
//!   probe on every allocation costs most.
//!
//! Both the gateway's throughput and the worker's CPU time per request, each
//! as a ratio to the unprofiled runs around it.

use std::time::Duration;

use anyhow::Result;

use super::{measure, print_bpf, print_cpu_ratios, print_goals, print_ratios, tools::Tool, Suite};

fn tools() -> Vec<Tool> {
    vec![
        Tool::LjprobeAlloc { all: false },
        Tool::LjprobeAlloc { all: true },
        Tool::BpftraceAllocCount,
        Tool::LjprobeGc { exact: false },
        Tool::LjprobeGc { exact: true },
    ]
}

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let churn = Suite { route: "/alloc/churn", connections: 4, tools: tools(), own_cost: Tool::LjprobeAlloc { all: false } };
    let cheap = Suite { route: "/health", connections: 20, tools: tools(), own_cost: Tool::LjprobeAlloc { all: false } };
    let churn_m = measure(&churn, duration, rounds)?;
    let cheap_m = measure(&cheap, duration, rounds)?;
    let secs = duration.as_secs();
    println!("alloc and gc overhead: {secs} s per wrk -t1 run, {rounds} rounds per route; nginx 1 worker, debug LuaJIT");
    let bench = super::bench_command();
    println!("reproduce: {bench} alloc --duration {secs}s --rounds {rounds}");
    let mut goals = Vec::new();
    for (suite, m) in [(&churn, &churn_m), (&cheap, &cheap_m)] {
        println!("\n--- {} with wrk -c{} ---", suite.route, suite.connections);
        let rps = print_ratios(suite, m, rounds);
        let cpu = print_cpu_ratios(suite, m, rounds);
        let more = |i: usize| (cpu[i] - 1.0) * 100.0;
        let r = suite.route;
        goals.push((format!("{r}: alloc adds <= 3% CPU a request"), format!("+{:.1}%", more(0)), more(0) <= 3.0));
        goals.push((
            format!("{r}: alloc --all no worse than bpftrace"),
            format!("{:.3} vs {:.3} req/s", rps[1], rps[2]),
            // Within the noise of one sitting (see docs/bench.md) counts as no worse.
            rps[1] >= rps[2] - 0.01,
        ));
        goals.push((format!("{r}: gc adds <= 1% CPU a request"), format!("+{:.1}%", more(3)), more(3) <= 1.0));
        print_bpf(suite, m);
        m.own.print();
    }
    print_goals(&goals);
    Ok(())
}
