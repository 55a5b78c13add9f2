//! The gc results: a few lines on the terminal, the line chart SVG, the JSON
//! summary with the time series.

use std::path::PathBuf;

use anyhow::Result;
use ljprobe_flamegraph::linechart::{LineChart, Series, Side};
use serde::Serialize;

use super::{
    poll::{Outcome, Point, VmResult},
    Args, POLL,
};
use crate::collect::{Collected, StopReason};

pub struct Report {
    pub title: String,
    pub result: Outcome,
    pub collected: Collected,
    pub notes: Vec<String>,
}

const MIB: f64 = 1048576.0;

fn svg_path(args: &Args) -> PathBuf {
    args.svg.clone().unwrap_or_else(|| PathBuf::from(format!("ljprobe-gc-{}.svg", args.run.pid)))
}

/// Refuses an unsafe output path (see `crate::output`) before the run rather than after it.
pub fn check(args: &Args) -> Result<()> {
    crate::output::check_svg_json(&svg_path(args), args.json.as_deref())
}

/// The whole run, from the summed series.
#[derive(Serialize)]
struct Totals {
    /// Heap at the end of the first and the last interval, and its range.
    heap_start_bytes: u64,
    heap_end_bytes: u64,
    heap_min_bytes: u64,
    heap_max_bytes: u64,
    /// Least-squares slope, per minute, of each interval's lowest heap: the
    /// floor collections bring it back to, which a sawtooth does not tilt.
    growth_bytes_per_min: Option<f64>,
    cycles: u64,
    /// Allocated, less freed outside the collector, from the VM's own
    /// accounting (`lua::allocated_so_far`; from readings, a lower bound,
    /// where no watchpoint could be set).
    allocated_bytes: u64,
    alloc_bytes_per_sec: f64,
    /// CPU samples of the target in which a VM was found, and those in the GC.
    samples: u64,
    gc_samples: u64,
    gc_share: Option<f64>,
}

impl Totals {
    fn of(series: &[Point], vms: &[VmResult], by_state: &std::collections::BTreeMap<String, u64>, secs: f64) -> Totals {
        let samples: u64 = by_state.iter().filter(|(k, _)| *k != "no-vm").map(|(_, n)| n).sum();
        let gc_samples = by_state.get("gc").copied().unwrap_or(0);
        let allocated_bytes = vms.iter().map(|v| v.totals.allocated_bytes).sum();
        Totals {
            heap_start_bytes: series.first().map_or(0, |p| p.heap_bytes),
            heap_end_bytes: series.last().map_or(0, |p| p.heap_bytes),
            heap_min_bytes: series.iter().map(|p| p.heap_min_bytes).min().unwrap_or(0),
            heap_max_bytes: series.iter().map(|p| p.heap_max_bytes).max().unwrap_or(0),
            growth_bytes_per_min: slope(series).map(|s| s * 60.0),
            cycles: vms.iter().map(|v| v.totals.cycles).sum(),
            allocated_bytes,
            alloc_bytes_per_sec: allocated_bytes as f64 / secs.max(1e-9),
            samples,
            gc_samples,
            gc_share: (samples > 0).then(|| gc_samples as f64 / samples as f64),
        }
    }
}

/// Bytes per second, by least squares over (time, lowest heap of the interval).
fn slope(series: &[Point]) -> Option<f64> {
    if series.len() < 2 {
        return None;
    }
    let n = series.len() as f64;
    let (mt, mh) = series.iter().fold((0.0, 0.0), |(t, h), p| (t + p.t_secs / n, h + p.heap_min_bytes as f64 / n));
    let (num, den) = series.iter().fold((0.0, 0.0), |(a, b), p| {
        let dt = p.t_secs - mt;
        (a + dt * (p.heap_min_bytes as f64 - mh), b + dt * dt)
    });
    (den > 0.0).then(|| num / den)
}

#[derive(Serialize)]
struct Summary<'a> {
    tool: &'static str,
    /// Cycles and allocation counted exactly (`--exact`), or lower bounds from the readings.
    exact: bool,
    pids: &'a [u32],
    duration_secs: f64,
    stopped_by: StopReason,
    steal_pct: Option<f64>,
    /// Workers that joined, targets that exited or exec'd during the run.
    events: &'a [crate::target::follow::Event],
    /// Wall-clock time when tracing started: `t_secs` counts from here.
    start_unix_secs: f64,
    interval_secs: f64,
    poll_secs: f64,
    frequency: u64,
    #[serde(flatten)]
    totals: &'a Totals,
    by_vm_state: &'a std::collections::BTreeMap<String, u64>,
    /// All processes together (heaps summed), one point per interval.
    series: &'a [Point],
    /// Each process's own series and totals.
    processes: &'a [VmResult],
    notes: &'a [String],
    svg: String,
}

pub fn write(args: &Args, r: &Report) -> Result<()> {
    let o = &r.result;
    let c = &r.collected;
    let totals = Totals::of(&o.series, &o.vms, &o.by_vm_state, c.elapsed_secs);
    let svg_path = svg_path(args);
    let chart = chart(r, &totals);
    crate::output::write(&svg_path, chart.svg().as_bytes())?;

    println!("{}", r.title);
    println!(
        "  {} over {:.1}s, a point every {:?}; line chart: {}",
        plural(o.vms.len(), "process", "processes"),
        c.elapsed_secs,
        args.interval,
        svg_path.display()
    );
    if o.series.is_empty() {
        println!("  nothing was read: the target left before the first reading");
    } else {
        println!(
            "  heap: {} at the end, {} min, {} max; growth {}",
            mib(totals.heap_end_bytes),
            mib(totals.heap_min_bytes),
            mib(totals.heap_max_bytes),
            totals.growth_bytes_per_min.map_or("unknown (one point)".into(), |g| format!("{:+.2} MiB/min", g / MIB))
        );
    }
    let rate = totals.cycles as f64 / c.elapsed_secs.max(1e-9);
    if args.exact {
        println!("  GC cycles: {} ({rate:.1}/s, each one counted)", totals.cycles);
        println!("  allocation: {:.1} MiB/s (the VM's own accounting)", totals.alloc_bytes_per_sec / MIB);
    } else {
        println!(
            "  GC cycles: at least {} ({rate:.1}/s; from readings every {:?}: --exact counts every one)",
            totals.cycles,
            super::POLL
        );
        println!(
            "  allocation: at least {:.1} MiB/s (from the readings; --exact, or `ljprobe alloc`, counts every byte)",
            totals.alloc_bytes_per_sec / MIB
        );
    }
    match totals.gc_share {
        Some(s) => println!(
            "  GC share of CPU: {:.1}% ({} of {} samples in which the VM was found)",
            s * 100.0,
            totals.gc_samples,
            totals.samples
        ),
        None => println!("  GC share of CPU: no samples (the target did not run on a CPU)"),
    }
    for note in r.notes.iter().cloned().chain(ljprobe_host::steal::note(c.steal_pct)) {
        println!("  {note}");
    }
    if let Some(path) = &args.json {
        let pids: Vec<u32> = o.vms.iter().map(|v| v.pid).collect();
        let summary = Summary {
            tool: "gc",
            exact: args.exact,
            pids: &pids,
            duration_secs: c.elapsed_secs,
            stopped_by: c.stopped_by,
            steal_pct: c.steal_pct,
            events: &c.events,
            start_unix_secs: o.start_unix_secs,
            interval_secs: o.interval_secs,
            poll_secs: POLL.as_secs_f64(),
            frequency: args.freq,
            totals: &totals,
            by_vm_state: &o.by_vm_state,
            series: &o.series,
            processes: &o.vms,
            notes: &r.notes,
            svg: svg_path.display().to_string(),
        };
        if crate::report::write_json(path, &summary)? {
            println!("  summary: {}", path.display());
        }
    }
    Ok(())
}

fn chart(r: &Report, t: &Totals) -> LineChart {
    let o = &r.result;
    let mb = |b: u64| b as f64 / MIB;
    let heap = Series {
        name: "heap (MiB; band: min-max per interval)".into(),
        color: "#4e79a7".into(),
        side: Side::Left,
        points: o.series.iter().map(|p| (p.t_secs, mb(p.heap_bytes))).collect(),
        band: o.series.iter().map(|p| (p.t_secs, mb(p.heap_min_bytes), mb(p.heap_max_bytes))).collect(),
        faint: false,
    };
    let threshold = Series {
        name: "GC threshold".into(),
        color: "#76b7b2".into(),
        side: Side::Left,
        points: o.series.iter().map(|p| (p.t_secs, mb(p.threshold_bytes))).collect(),
        band: vec![],
        faint: true,
    };
    let alloc = Series {
        name: "allocation rate (MiB/s, right)".into(),
        color: "#f28e2b".into(),
        side: Side::Right,
        points: o.series.iter().map(|p| (p.t_secs, p.alloc_bytes_per_sec / MIB)).collect(),
        band: vec![],
        faint: false,
    };
    let mut marks: Vec<f64> = o.vms.iter().flat_map(|v| v.totals.cycles_at_secs.iter().copied()).collect();
    marks.sort_by(f64::total_cmp);
    let share = t.gc_share.map_or("no CPU samples".into(), |s| format!("GC {:.1}% of CPU samples", s * 100.0));
    let subtitle = format!(
        "{}{} over {:.1}s, a point every {:.0} ms: {} GC cycles, {share}",
        o.vms.iter().map(|v| format!("PID {}", v.pid)).collect::<Vec<_>>().join(", "),
        if o.vms.len() > 1 { " (heaps summed)" } else { "" },
        r.collected.elapsed_secs,
        o.interval_secs * 1000.0,
        t.cycles
    );
    LineChart {
        title: r.title.clone(),
        subtitle,
        x_label: "seconds since tracing started".into(),
        left_label: "heap (MiB)".into(),
        right_label: "allocation rate (MiB/s)".into(),
        series: vec![heap, threshold, alloc],
        marks,
        marks_name: format!("GC cycle finished ({})", t.cycles),
        tips: o.series.iter().map(|p| (p.t_secs, tip(p))).collect(),
    }
}

fn tip(p: &Point) -> String {
    let share = p.gc_share.map_or(String::new(), |s| format!(", GC {:.0}% of {} samples", s * 100.0, p.samples));
    format!(
        "{:.2}s: heap {} ({} to {}), threshold {}, {} cycles, allocating {:.1} MiB/s{share}",
        p.t_secs,
        mib(p.heap_bytes),
        mib(p.heap_min_bytes),
        mib(p.heap_max_bytes),
        mib(p.threshold_bytes),
        p.cycles,
        p.alloc_bytes_per_sec / MIB
    )
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / MIB)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, heap: u64) -> Point {
        Point {
            t_secs: t,
            heap_bytes: heap,
            heap_min_bytes: heap,
            heap_max_bytes: heap,
            threshold_bytes: 0,
            estimate_bytes: 0,
            cycles: 0,
            alloc_bytes_per_sec: 0.0,
            samples: 0,
            gc_samples: 0,
            gc_share: None,
        }
    }

    #[test]
    fn growth_is_the_least_squares_slope() {
        assert_eq!(slope(&[point(1.0, 5)]), None);
        let s = slope(&[point(0.0, 100), point(1.0, 300), point(2.0, 500)]).unwrap();
        assert!((s - 200.0).abs() < 1e-9, "{s}");
        // A sawtooth within each interval over a flat floor is no growth,
        // wherever in the tooth each interval ends.
        let saw: Vec<Point> = (0..40)
            .map(|i| Point { heap_min_bytes: 1000, heap_max_bytes: 5000, ..point(i as f64 * 0.1, 1000 + (i * 1337 % 4000)) })
            .collect();
        assert_eq!(slope(&saw), Some(0.0));
    }
}
