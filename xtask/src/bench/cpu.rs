//! `cargo xtask bench cpu`: on-CPU sampling against perf, at 99 and 999 Hz, on
//! /hot/jit (long requests); then every profiler on /health at full rate
//! (tens of thousands of short requests a second), where what a profiler
//! costs per context switch and per wake-up shows.

use std::time::Duration;

use anyhow::Result;

use super::{measure, print_bpf, print_cpu_ratios, print_goals, print_ratios, tools::Tool, Suite};

/// `high_rate_only`: the /health part alone.
pub fn run(duration: Duration, rounds: u32, high_rate_only: bool) -> Result<()> {
    if high_rate_only {
        return high_rate(duration, rounds);
    }
    let suite = Suite {
        route: "/hot/jit",
        connections: 20,
        tools: vec![Tool::LjprobeCpu(99), Tool::LjprobeCpu(999), Tool::PerfCpu(99), Tool::PerfCpu(999)],
        own_cost: Tool::LjprobeCpu(99),
    };
    let m = measure(&suite, duration, rounds)?;
    let secs = duration.as_secs();
    println!(
        "cpu overhead: {}, wrk -t1 -c{}, {secs} s per run, {rounds} rounds; nginx 1 worker, debug LuaJIT",
        suite.route, suite.connections
    );
    println!("reproduce: cargo xtask bench cpu --duration {secs}s --rounds {rounds}");
    let med = print_ratios(&suite, &m, rounds);
    let loss = |i: usize| (1.0 - med[i]) * 100.0;
    print_goals(&[
        ("ljprobe 99 Hz: loss <= 1%".into(), format!("{:.1}%", loss(0)), loss(0) <= 1.0),
        ("ljprobe 999 Hz: loss <= 5%".into(), format!("{:.1}%", loss(1)), loss(1) <= 5.0),
        ("ljprobe 99 Hz: no worse than perf 99 Hz".into(), format!("{:.1}% vs {:.1}%", loss(0), loss(2)), med[0] >= med[2]),
        ("ljprobe 999 Hz: no worse than perf 999 Hz".into(), format!("{:.1}% vs {:.1}%", loss(1), loss(3)), med[1] >= med[3]),
    ]);
    print_bpf(&suite, &m, rounds);
    m.own.print();
    high_rate(duration, rounds)
}

fn high_rate(duration: Duration, rounds: u32) -> Result<()> {
    let suite = Suite {
        route: "/health",
        connections: 20,
        tools: vec![
            Tool::LjprobeCpu(99),
            Tool::LjprobeCpu(999),
            Tool::LjprobeCpuMixed(99),
            Tool::LjprobeOffcpu("lua"),
            Tool::LjprobeEpollLoop,
            Tool::PerfCpu(99),
            Tool::BpftraceProfile(99),
            // What sampling at 999 Hz costs the worker with perf: with DWARF
            // stacks, and with no stack at all (the timer and the sample alone).
            Tool::PerfCpu(999),
            Tool::PerfCpuNoStacks(999),
            // Everything ljprobe cpu does but sample (its process, its
            // programs loaded, the ring polled): what it costs apart from samples.
            Tool::LjprobeCpu(1),
        ],
        own_cost: Tool::LjprobeCpu(99),
    };
    let m = measure(&suite, duration, rounds)?;
    let secs = duration.as_secs();
    println!("\nhigh rate: {}, wrk -t1 -c{}, {secs} s per run, {rounds} rounds", suite.route, suite.connections);
    print_ratios(&suite, &m, rounds);
    let cpu = print_cpu_ratios(&suite, &m, rounds);
    print_bpf(&suite, &m, rounds);
    let more = |i: usize| (cpu[i] - 1.0) * 100.0;
    print_goals(&[
        ("high rate, ljprobe 99 Hz: <= +1% CPU a request".into(), format!("+{:.1}%", more(0)), more(0) <= 1.0),
        ("high rate, ljprobe 999 Hz: <= +5% CPU a request".into(), format!("+{:.1}%", more(1)), more(1) <= 5.0),
        ("high rate, ljprobe 99 Hz: no more than perf 99 Hz".into(), format!("+{:.1}% vs +{:.1}%", more(0), more(5)), cpu[0] <= cpu[5]),
        ("high rate, offcpu: <= +3% CPU a request".into(), format!("+{:.1}%", more(3)), more(3) <= 3.0),
        ("high rate, epoll-loop: <= +3% CPU a request".into(), format!("+{:.1}%", more(4)), more(4) <= 3.0),
        (
            "high rate, ljprobe 999 Hz: no more than perf 999 Hz".into(),
            format!("+{:.1}% vs +{:.1}% (no stacks +{:.1}%)", more(1), more(7), more(8)),
            cpu[1] <= cpu[7],
        ),
        ("high rate, ljprobe 1 Hz (no samples to speak of): within noise".into(), format!("+{:.1}%", more(9)), more(9) <= 1.0),
    ]);
    m.own.print();
    Ok(())
}
