//! `cargo xtask bench offcpu`: the sched_switch and epoll_wait tracers against
//! perf recording sched_switch with call graphs, on a route that makes the
//! worker switch often (small requests, the worker waits in epoll_wait between
//! them, and wrk shares the CPUs).

use std::time::Duration;

use anyhow::Result;

use super::{measure, print_goals, print_ratios, tools::Tool, Suite};

pub fn run(duration: Duration, rounds: u32) -> Result<()> {
    let suite = Suite {
        // ~0.25 ms of compiled Lua a request: thousands of requests and
        // context switches a second.
        route: "/hot/jit?n=0.02",
        connections: 20,
        tools: vec![
            Tool::LjprobeOffcpu("lua"),
            Tool::LjprobeOffcpu("mixed"),
            Tool::LjprobeEpollLoop,
            Tool::PerfSwitch,
        ],
        own_cost: Tool::LjprobeOffcpu("lua"),
    };
    let m = measure(&suite, duration, rounds)?;
    let secs = duration.as_secs();
    println!(
        "offcpu overhead: {}, wrk -t1 -c{}, {secs} s per run, {rounds} rounds; nginx 1 worker, debug LuaJIT",
        suite.route, suite.connections
    );
    println!("reproduce: cargo xtask bench offcpu --duration {secs}s --rounds {rounds}");
    let med = print_ratios(&suite, &m, rounds);
    let loss = |i: usize| (1.0 - med[i]) * 100.0;
    print_goals(&[
        ("ljprobe offcpu lua: loss <= 2%".into(), format!("{:.1}%", loss(0)), loss(0) <= 2.0),
        ("ljprobe offcpu mixed: loss <= 5%".into(), format!("{:.1}%", loss(1)), loss(1) <= 5.0),
        ("ljprobe epoll-loop: loss <= 2%".into(), format!("{:.1}%", loss(2)), loss(2) <= 2.0),
        (
            "ljprobe offcpu lua: no worse than perf".into(),
            format!("{:.1}% vs {:.1}%", loss(0), loss(3)),
            med[0] >= med[3],
        ),
    ]);
    m.own.print();
    Ok(())
}
