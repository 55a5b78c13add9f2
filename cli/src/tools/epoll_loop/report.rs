//! The epoll-loop results: the histogram and culprits on the terminal, the
//! histogram SVG, the JSON summary.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use ljprobe_flamegraph::{
    histogram::{Bucket, HistogramSvgOptions},
    Frame, Log2Histogram,
};
use serde::Serialize;

use super::{
    loops::{Culprit, Loops},
    Args,
};
use crate::{
    collect::{self, Collected},
    report,
};
use ljprobe_host::steal;

pub struct Report {
    pub title: String,
    pub pids: Vec<u32>,
    pub hist: Log2Histogram,
    pub loops: Loops,
    pub collected: Collected,
    /// The sampler's rate (`--freq` or its default).
    pub sample_hz: u64,
}

#[derive(Serialize)]
struct CulpritJson {
    frame: String,
    iterations: u64,
    /// Of the long iterations.
    share: f64,
    total_ms: f64,
    max_ms: f64,
    stack: Vec<String>,
}

/// Where the long iterations' time went: running, blocked in the kernel, or
/// preempted and waiting for a CPU.
#[derive(Serialize)]
struct TimeSplit {
    total_ms: f64,
    on_cpu_ms: f64,
    blocked_ms: f64,
    runnable_ms: f64,
}

impl TimeSplit {
    fn of(l: &Loops) -> TimeSplit {
        let on_cpu = l.long_ns.saturating_sub(l.blocked_ns + l.runnable_ns);
        TimeSplit { total_ms: ms(l.long_ns), on_cpu_ms: ms(on_cpu), blocked_ms: ms(l.blocked_ns), runnable_ms: ms(l.runnable_ns) }
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    tool: &'static str,
    pids: &'a [u32],
    duration_secs: f64,
    stopped_by: collect::StopReason,
    threshold_us: u64,
    sample_hz: u64,
    iterations: u64,
    long_iterations: u64,
    long_without_stack: u64,
    long_iteration_time: &'a TimeSplit,
    lost_events: u64,
    steal_pct: Option<f64>,
    /// Workers that joined, targets that exited or exec'd during the run.
    events: &'a [crate::target::follow::Event],
    /// Log2 buckets of iteration time, bucket i = [2^(i-1), 2^i) µs.
    histogram: Vec<Bucket>,
    fullest_bucket: Option<Bucket>,
    culprits: Vec<CulpritJson>,
    /// Culprit stacks taken inside traces, and those whose inlined frames stayed ambiguous.
    inlined: serde_json::Value,
    svg: String,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn svg_path(args: &Args) -> PathBuf {
    args.svg.clone().unwrap_or_else(|| PathBuf::from(format!("ljprobe-epoll-loop-{}.svg", args.run.pid)))
}

/// Refuses an unsafe output path (see `crate::output`) before the run rather than after it.
pub fn check(args: &Args) -> Result<()> {
    crate::output::check_svg_json(&svg_path(args), args.json.as_deref())
}

pub fn write(args: &Args, r: &Report) -> Result<()> {
    let svg_path = svg_path(args);
    let threshold_us = args.threshold.as_micros() as u64;
    let long = r.loops.long;
    let split = TimeSplit::of(&r.loops);
    let mut culprits: Vec<(&Frame, &Culprit)> = r.loops.culprits.iter().collect();
    culprits.sort_by(|a, b| b.1.iterations.cmp(&a.1.iterations).then(b.1.total_ns.cmp(&a.1.total_ns)));
    let culprits: Vec<CulpritJson> = culprits
        .into_iter()
        .take(args.top)
        .map(|(f, c)| CulpritJson {
            frame: f.label(),
            iterations: c.iterations,
            share: c.iterations as f64 / long.max(1) as f64,
            total_ms: ms(c.total_ns),
            max_ms: ms(c.max_ns),
            stack: c.stack.iter().map(Frame::label).collect(),
        })
        .collect();

    let c = &r.collected;
    let subtitle = format!(
        "{} over {:.1}s: {} iterations, {} of at least {}ms, {} events lost",
        r.pids.iter().map(|p| format!("PID {p}")).collect::<Vec<_>>().join(", "),
        c.elapsed_secs,
        r.hist.total(),
        long,
        threshold_us as f64 / 1000.0,
        c.lost
    );
    let mut svg = Vec::new();
    let opts = HistogramSvgOptions { title: r.title.clone(), subtitle, mark_from_us: Some(threshold_us) };
    r.hist.write_svg(&opts, &mut svg).context("drawing the histogram")?;
    crate::output::write(&svg_path, &svg)?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", r.title)?;
    writeln!(out, "distribution of iteration times (us), {} iterations in {:.1}s:", r.hist.total(), c.elapsed_secs)?;
    r.hist.write_text(&mut out)?;
    if r.hist.total() == 0 {
        writeln!(out, "  (no epoll_wait calls seen: is this process an event loop, and was it busy?)")?;
    }
    writeln!(out, "{long} iterations of at least {}ms; histogram: {}", threshold_us as f64 / 1000.0, svg_path.display())?;
    if long > 0 {
        let t = &split;
        let pct = |x: f64| 100.0 * x / t.total_ms.max(f64::MIN_POSITIVE);
        writeln!(
            out,
            "their {:.1} ms: {:.0}% on CPU, {:.0}% blocked, {:.0}% preempted (waiting for a CPU)",
            t.total_ms,
            pct(t.on_cpu_ms),
            pct(t.blocked_ms),
            pct(t.runnable_ms)
        )?;
        writeln!(out, "what held the loop in them (innermost Lua function, or waiting for a CPU):")?;
        for cj in &culprits {
            writeln!(
                out,
                "  {:>5.1}%  {}  ({} iterations, max {:.1} ms)",
                cj.share * 100.0,
                cj.frame,
                cj.iterations,
                cj.max_ms
            )?;
        }
        if r.loops.unexplained > 0 {
            writeln!(out, "  {} long iterations without a stack (no single piece of 1ms or more)", r.loops.unexplained)?;
        }
    }
    if let Some(note) = steal::note(c.steal_pct) {
        writeln!(out, "{note}")?;
    }
    drop(out);
    if let Some(path) = &args.json {
        let summary = Summary {
            tool: "epoll-loop",
            pids: &r.pids,
            duration_secs: c.elapsed_secs,
            stopped_by: c.stopped_by,
            threshold_us,
            sample_hz: r.sample_hz,
            iterations: r.hist.total(),
            long_iterations: long,
            long_without_stack: r.loops.unexplained,
            long_iteration_time: &split,
            lost_events: c.lost,
            steal_pct: c.steal_pct,
            events: &c.events,
            histogram: r.hist.buckets(),
            fullest_bucket: r.hist.fullest(),
            culprits,
            inlined: r.loops.inlined_summary(),
            svg: svg_path.display().to_string(),
        };
        if report::write_json(path, &summary)? {
            println!("summary: {}", path.display());
        }
    }
    Ok(())
}
