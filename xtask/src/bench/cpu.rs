//! `cargo xtask bench cpu`: on-CPU sampling against perf, at 99 and 999 Hz, on
//! /hot/jit (long requests); then every profiler on /health at full rate
//! (tens of thousands of short requests a second), where what a profiler
//! costs per context switch and per wake-up shows.

use std::time::Duration;

use anyhow::{bail, Result};

use super::{measure, print_bpf, print_cpu_ratios, print_goals, print_ratios, tools::Tool, Suite};

/// `high_rate_only`: the /health part alone; `only`: its profilers to run.
pub fn run(duration: Duration, rounds: u32, high_rate_only: bool, only: Option<&str>) -> Result<()> {
    if high_rate_only {
        return high_rate(duration, rounds, only);
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
    let bench = super::bench_command();
    println!("reproduce: {bench} cpu --duration {secs}s --rounds {rounds}");
    let med = print_ratios(&suite, &m, rounds);
    let loss = |i: usize| (1.0 - med[i]) * 100.0;
    print_goals(&[
        ("ljprobe 99 Hz: loss <= 1%".into(), format!("{:.1}%", loss(0)), loss(0) <= 1.0),
        ("ljprobe 999 Hz: loss <= 5%".into(), format!("{:.1}%", loss(1)), loss(1) <= 5.0),
        ("ljprobe 99 Hz: no worse than perf 99 Hz".into(), format!("{:.1}% vs {:.1}%", loss(0), loss(2)), med[0] >= med[2]),
        ("ljprobe 999 Hz: no worse than perf 999 Hz".into(), format!("{:.1}% vs {:.1}%", loss(1), loss(3)), med[1] >= med[3]),
    ]);
    print_bpf(&suite, &m);
    m.own.print();
    high_rate(duration, rounds, only)
}

fn high_rate(duration: Duration, rounds: u32, only: Option<&str>) -> Result<()> {
    let all = vec![
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
        // epoll-loop's sampler (only iterations already 1 ms long keep a
        // sample, but every tick interrupts the worker) at other rates.
        Tool::LjprobeEpollLoopAt(99),
        Tool::LjprobeEpollLoopAt(1),
    ];
    let words: Vec<&str> = only.map(|o| o.split(',').map(str::trim).filter(|w| !w.is_empty()).collect()).unwrap_or_default();
    let tools: Vec<Tool> = all.into_iter().filter(|t| words.is_empty() || words.iter().any(|w| t.label().contains(w))).collect();
    if tools.is_empty() {
        bail!("--only {:?} matches none of the profilers", only.unwrap_or_default());
    }
    // ljprobe's own cost: of `cpu` where it runs, else of the first ljprobe tool.
    let own_cost = tools
        .iter()
        .copied()
        .find(|t| matches!(t, Tool::LjprobeCpu(_)))
        .or_else(|| tools.iter().copied().find(|t| t.label().starts_with("ljprobe")))
        .unwrap_or(tools[0]);
    let suite = Suite { route: "/health", connections: 20, tools, own_cost };
    let m = measure(&suite, duration, rounds)?;
    let secs = duration.as_secs();
    println!("\nhigh rate: {}, wrk -t1 -c{}, {secs} s per run, {rounds} rounds", suite.route, suite.connections);
    let bench = super::bench_command();
    let mut reproduce = format!("{bench} cpu --high-rate --duration {secs}s --rounds {rounds}");
    if let Some(o) = only {
        reproduce += &format!(" --only '{o}'");
    }
    println!("reproduce: {reproduce}");
    print_ratios(&suite, &m, rounds);
    let cpu = print_cpu_ratios(&suite, &m, rounds);
    print_bpf(&suite, &m);
    // Each goal is judged where its profilers ran (see --only).
    let at = |t: Tool| suite.tools.iter().position(|x| x.label() == t.label()).map(|i| (cpu[i], quartiles(&m.cpu_ratios[i])));
    let pct = |r: f64| format!("{:+.1}%", (r - 1.0) * 100.0);
    let mut goals = Vec::new();
    let mut at_most = |name: &str, t: Tool, limit: f64| {
        if let Some((r, (q1, q3))) = at(t) {
            let measured = format!("{} [{q1:.3}, {q3:.3}]", pct(r));
            goals.push((format!("high rate, {name}: <= +{limit}% CPU a request"), measured, r <= 1.0 + limit / 100.0));
        }
    };
    at_most("ljprobe 99 Hz", Tool::LjprobeCpu(99), 1.0);
    at_most("ljprobe 999 Hz", Tool::LjprobeCpu(999), 5.0);
    at_most("offcpu", Tool::LjprobeOffcpu("lua"), 3.0);
    at_most("epoll-loop", Tool::LjprobeEpollLoop, 3.0);
    at_most("ljprobe 1 Hz (no samples to speak of)", Tool::LjprobeCpu(1), 1.0);
    for (ours, theirs) in [(Tool::LjprobeCpu(99), Tool::PerfCpu(99)), (Tool::LjprobeCpu(999), Tool::PerfCpu(999))] {
        // "No more" within the spread: the middle halves of their rounds overlap.
        if let (Some((a, (a1, _))), Some((b, (_, b3)))) = (at(ours), at(theirs)) {
            let name = format!("high rate, {}: no more than {}", ours.label(), theirs.label());
            goals.push((name, format!("{} vs {} (quartiles {a1:.3} <= {b3:.3})", pct(a), pct(b)), a <= b || a1 <= b3));
        }
    }
    print_goals(&goals);
    m.own.print();
    Ok(())
}

/// The lower and upper quartiles of a tool's rounds (the lowest and highest
/// with fewer than four): how far one median can be trusted.
fn quartiles(ratios: &[f64]) -> (f64, f64) {
    let mut v = ratios.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() < 4 {
        return (v[0], v[v.len() - 1]);
    }
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.25), q(0.75))
}
