//! The latency results: a table of groups and their breakdowns and the
//! slowest requests on the terminal, one SVG row per group, a JSON summary.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use ljprobe_common::latency::{KIND_CPU, LAT_KINDS, LAT_PHASES, LAT_SLOTS};
use ljprobe_flamegraph::{
    histogram::{Bucket, BUCKETS},
    Log2Histogram,
    latency_rows::{write_rows_svg, GroupRow, RowsSvgOptions},
};
use serde::Serialize;

use super::{
    requests::{slot, Group, Request, Requests, Upstream},
    Args,
};
use crate::{
    collect::{self, Collected},
    report,
};
use ljprobe_host::steal;

pub const PHASES: [&str; LAT_PHASES] = ["read", "rewrite", "access", "content", "upstream"];
pub const KINDS: [&str; LAT_KINDS] =
    ["on-CPU", "blocked", "preempted", "waiting on upstream", "waiting (yielded)", "waiting behind other requests"];

pub struct Report {
    pub title: String,
    pub pids: Vec<u32>,
    pub requests: Requests,
    pub collected: Collected,
    pub sampling: Option<Sampling>,
}

/// How a `--sample` run was sampled, and the factor from the requests
/// followed to all of them.
#[derive(Serialize, Clone, Copy)]
pub struct Sampling {
    percent: u32,
    windows: u64,
    /// How long requests could begin followed, in all.
    open_secs: f64,
    followed: u64,
    /// nginx's own count of the requests it took meanwhile (stub_status's),
    /// if its build keeps one.
    taken_by_nginx: Option<u64>,
    /// Requests still going 2 s after their window closed: left out.
    abandoned: u64,
    /// Counts and rates are multiplied by this: nginx's count over the
    /// requests followed, or the run's length over the time open.
    scale: f64,
}

impl Sampling {
    pub fn new(percent: u32, stats: super::windows::Stats, taken: Option<u64>, followed: u64, secs: f64) -> Sampling {
        let open_secs = stats.open.as_secs_f64();
        let scale = match taken {
            Some(t) if followed > 0 => t as f64 / followed as f64,
            _ => secs / open_secs.max(1e-9),
        };
        Sampling { percent, windows: stats.windows, open_secs, followed, taken_by_nginx: taken, abandoned: stats.abandoned, scale }
    }
}

/// One part of a request's time: a phase and a kind, on-CPU time split into
/// Lua and C by the samples taken while it ran.
#[derive(Serialize, Clone)]
struct Part {
    phase: &'static str,
    kind: String,
    ms: f64,
    share: f64,
}

/// Time of each (phase, kind), largest first; empty ones left out.
fn parts(ns: &[u64; LAT_SLOTS], lua_samples: u64, c_samples: u64, per: f64) -> Vec<Part> {
    let total: u64 = ns.iter().sum();
    let mut out = Vec::new();
    for (p, phase) in PHASES.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            let v = ns[slot(p, k)];
            if v == 0 {
                continue;
            }
            let mut push = |kind: String, v: f64| {
                if v > 0.0 {
                    out.push(Part { phase, kind, ms: v / 1e6 / per, share: v / total.max(1) as f64 });
                }
            };
            if k == KIND_CPU as usize && lua_samples + c_samples > 0 {
                let lua = lua_samples as f64 / (lua_samples + c_samples) as f64;
                push("on-CPU in Lua".into(), v as f64 * lua);
                push("on-CPU in C".into(), v as f64 * (1.0 - lua));
            } else {
                push(kind.to_string(), v as f64);
            }
        }
    }
    out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    out
}

#[derive(Serialize)]
struct GroupJson {
    key: String,
    /// Requests followed; with `--sample`, `estimated_count` is all of them.
    count: u64,
    estimated_count: f64,
    rate_per_s: f64,
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Mean per request, largest first; they add up to `mean_ms`.
    parts: Vec<Part>,
    /// By phase, mean ms per request.
    phases: Vec<(&'static str, f64)>,
    /// nginx's own timings of the requests' upstream tries (mean ms), for
    /// groups that went to one themselves (`proxy_pass`).
    upstream: Option<UpstreamJson>,
    /// Per phase, the Lua function its sampled and blocked time was spent in
    /// most (innermost frame), and that time over all the group's requests.
    lua_by_phase: Vec<LuaInPhase>,
    /// Log2 buckets of latency, bucket i = [2^(i-1), 2^i) µs.
    histogram: Vec<Bucket>,
}

#[derive(Serialize)]
struct LuaInPhase {
    phase: &'static str,
    function: String,
    ms: f64,
}

fn lua_by_phase(g: &Group) -> Vec<LuaInPhase> {
    (0..LAT_PHASES)
        .filter_map(|p| {
            let (f, ns) = g.lua_by_phase.iter().filter(|((ph, _), _)| *ph as usize == p).max_by_key(|(_, ns)| **ns)?;
            Some(LuaInPhase { phase: PHASES[p], function: f.1.label(), ms: ms(*ns) })
        })
        .collect()
}

#[derive(Serialize)]
struct UpstreamJson {
    connect_ms: Option<f64>,
    first_byte_ms: Option<f64>,
    response_ms: Option<f64>,
}

#[derive(Serialize)]
struct SlowJson {
    method: String,
    uri: String,
    status: u32,
    location: String,
    worker: u32,
    total_ms: f64,
    parts: Vec<Part>,
    /// The Lua function that held most of its time on the worker (on the CPU or blocked).
    held_by: Option<String>,
    held_ms: Option<f64>,
    upstream: Option<Upstream>,
}

#[derive(Serialize)]
struct Summary<'a> {
    tool: &'static str,
    pids: &'a [u32],
    duration_secs: f64,
    stopped_by: collect::StopReason,
    by: super::GroupBy,
    requests: u64,
    /// With `--sample`: how, and the factor to all requests.
    sampling: Option<Sampling>,
    /// In flight when the run began (their start was not seen): left out.
    began_before_run: u64,
    /// Shorter than `--min`: left out.
    under_min: u64,
    implausible: u64,
    lost_events: u64,
    steal_pct: Option<f64>,
    events: &'a [crate::target::follow::Event],
    groups: Vec<GroupJson>,
    slowest: Vec<SlowJson>,
    inlined: serde_json::Value,
    svg: String,
}

fn svg_path(args: &Args) -> PathBuf {
    args.svg.clone().unwrap_or_else(|| PathBuf::from(format!("ljprobe-latency-{}.svg", args.run.pid)))
}

/// Refuses an unsafe output path (see `crate::output`) before the run rather than after it.
pub fn check(args: &Args) -> Result<()> {
    crate::output::check_svg_json(&svg_path(args), args.json.as_deref())
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A duration for people: µs below a millisecond, one decimal below 100 ms.
fn human(ms: f64) -> String {
    match ms {
        m if m < 1.0 => format!("{:.0}us", m * 1000.0),
        m if m < 100.0 => format!("{m:.1}ms"),
        m if m < 1000.0 => format!("{m:.0}ms"),
        m => format!("{:.2}s", m / 1000.0),
    }
}

fn group_json(key: &str, g: &Group, secs: f64, scale: f64) -> GroupJson {
    let n = g.count().max(1) as f64;
    let total: u64 = g.ns.iter().sum();
    let mean = |(sum, k): (u64, u64)| (k > 0).then(|| sum as f64 / k as f64);
    let [connect, header, response] = g.upstream_ms.map(mean);
    GroupJson {
        key: key.to_string(),
        count: g.count(),
        estimated_count: g.count() as f64 * scale,
        rate_per_s: g.count() as f64 * scale / secs.max(1e-9),
        mean_ms: ms(total) / n,
        p50_ms: ms(g.quantile_ns(0.5)),
        p90_ms: ms(g.quantile_ns(0.9)),
        p99_ms: ms(g.quantile_ns(0.99)),
        p999_ms: ms(g.quantile_ns(0.999)),
        max_ms: ms(g.latencies_ns.last().copied().unwrap_or(0)),
        parts: parts(&g.ns, g.lua_samples, g.c_samples, n),
        phases: PHASES
            .iter()
            .enumerate()
            .map(|(p, name)| (*name, (0..LAT_KINDS).map(|k| g.ns[slot(p, k)]).sum::<u64>() as f64 / 1e6 / n))
            .filter(|(_, v)| *v > 0.0)
            .collect(),
        upstream: response.map(|r| UpstreamJson {
            connect_ms: connect,
            first_byte_ms: header.zip(connect).map(|(h, c)| (h - c).max(0.0)),
            response_ms: Some(r),
        }),
        lua_by_phase: lua_by_phase(g),
        histogram: g.hist.buckets(),
    }
}

fn slow_json(r: &Request) -> SlowJson {
    SlowJson {
        method: r.method.clone(),
        uri: r.uri.clone(),
        status: r.status,
        location: r.location.clone(),
        worker: r.worker,
        total_ms: ms(r.total_ns),
        parts: parts(&r.ns, r.lua_samples, r.c_samples, 1.0),
        held_by: r.held_by.as_ref().map(|(f, _)| f.label()),
        held_ms: r.held_by.as_ref().map(|(_, ns)| ms(*ns)),
        upstream: r.upstream,
    }
}

/// The buckets from the first to the last any group has a request in.
fn common_range(groups: &[&Group]) -> Option<(usize, usize)> {
    let first = groups.iter().filter_map(|g| (0..BUCKETS).find(|&i| g.hist.count(i) > 0)).min()?;
    let last = groups.iter().filter_map(|g| (0..BUCKETS).rev().find(|&i| g.hist.count(i) > 0)).max()?;
    Some((first, last))
}

/// A group's histogram on one line: a bar per log2 bucket, as high as its
/// share of the group's fullest bucket.
fn strip(g: &Group, (first, last): (usize, usize)) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = (first..=last).map(|i| g.hist.count(i)).max().unwrap_or(0).max(1);
    (first..=last)
        .map(|i| match g.hist.count(i) {
            0 => '·',
            n => BARS[((n * 8).div_ceil(max) as usize).clamp(1, 8)],
        })
        .collect()
}

fn bucket_label(i: usize) -> String {
    let (lo, _) = Log2Histogram::bounds(i);
    match lo {
        l if l < 1000 => format!("{l}us"),
        l if l < 1_000_000 => format!("{}ms", l / 1000),
        l => format!("{}s", l / 1_000_000),
    }
}

/// Parts of at least 1%, as `content: waiting on upstream 50.1ms (98%)`.
fn parts_line(parts: &[Part]) -> String {
    let shown: Vec<String> = parts
        .iter()
        .filter(|p| p.share >= 0.01)
        .map(|p| format!("{}: {} {} ({:.0}%)", p.phase, p.kind, human(p.ms), p.share * 100.0))
        .collect();
    if shown.is_empty() {
        "no time charged".into()
    } else {
        shown.join(", ")
    }
}

pub fn write(args: &Args, r: &Report) -> Result<()> {
    let c = &r.collected;
    let secs = c.elapsed_secs;
    let mut order: Vec<(&String, &Group)> = r.requests.groups.iter().collect();
    order.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(b.0)));
    let scale = r.sampling.map_or(1.0, |s| s.scale);
    let groups: Vec<GroupJson> = order.iter().map(|(k, g)| group_json(k, g, secs, scale)).collect();
    let slowest: Vec<SlowJson> = r.requests.slowest.iter().map(slow_json).collect();
    let counted: u64 = groups.iter().map(|g| g.count).sum();

    let svg_path = svg_path(args);
    let rows: Vec<GroupRow> = order
        .iter()
        .zip(&groups)
        .map(|((_, g), j)| GroupRow {
            label: j.key.clone(),
            count: j.count,
            p50_us: j.p50_ms * 1000.0,
            p99_us: j.p99_ms * 1000.0,
            max_us: j.max_ms * 1000.0,
            hist: g.hist.clone(),
            parts: j.parts.iter().map(|p| (format!("{}: {}", p.phase, p.kind), p.ms * 1000.0)).collect(),
        })
        .collect();
    let subtitle = format!(
        "{} over {secs:.1}s: {counted} requests by {:?}; bars: mean time per request by phase and kind",
        r.pids.iter().map(|p| format!("PID {p}")).collect::<Vec<_>>().join(", "),
        args.by
    )
    .to_lowercase();
    let mut svg = Vec::new();
    write_rows_svg(&rows, &RowsSvgOptions { title: r.title.clone(), subtitle }, &mut svg).context("drawing the SVG")?;
    crate::output::write(&svg_path, &svg)?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", r.title)?;
    let mut note = String::new();
    if r.requests.began_before > 0 {
        note += &format!("; {} in flight at the start left out", r.requests.began_before);
    }
    if r.requests.under_min > 0 {
        note += &format!("; {} under --min left out", r.requests.under_min);
    }
    match &r.sampling {
        None => writeln!(out, "{counted} requests in {secs:.1}s ({:.1}/s){note}", counted as f64 / secs.max(1e-9))?,
        Some(s) => {
            let of = s.taken_by_nginx.map_or_else(|| format!("about {:.0}", counted as f64 * scale), |t| t.to_string());
            writeln!(
                out,
                "{counted} requests followed in {secs:.1}s, those that began in {} windows covering {}% of the time, of {of} nginx took ({:.1}/s); counts and rates below are scaled by {scale:.1}{note}",
                s.windows,
                s.percent,
                counted as f64 * scale / secs.max(1e-9)
            )?;
        }
    }
    if groups.is_empty() {
        writeln!(out, "  (no request ended during the run: was the server busy?)")?;
    } else {
        let by = format!("{:?}", args.by).to_uppercase();
        let width = groups.iter().map(|g| g.key.len()).max().unwrap_or(0).clamp(by.len(), 40);
        let range = common_range(&order.iter().map(|(_, g)| *g).collect::<Vec<_>>()).unwrap_or((0, 0));
        writeln!(
            out,
            "{by:<width$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  LOG2 HISTOGRAM {}..{}",
            "COUNT",
            "RATE/S",
            "P50",
            "P90",
            "P99",
            "P99.9",
            "MAX",
            bucket_label(range.0),
            bucket_label(range.1)
        )?;
        for (g, (_, group)) in groups.iter().zip(&order) {
            writeln!(
                out,
                "{:<width$} {:>8} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
                g.key,
                g.estimated_count.round() as u64,
                g.rate_per_s,
                human(g.p50_ms),
                human(g.p90_ms),
                human(g.p99_ms),
                human(g.p999_ms),
                human(g.max_ms),
                strip(group, range)
            )?;
        }
        writeln!(out, "where the time went, mean per request (parts of at least 1%):")?;
        for g in &groups {
            writeln!(out, "  {:<width$} {:>8}: {}", g.key, human(g.mean_ms), parts_line(&g.parts))?;
            if !g.lua_by_phase.is_empty() {
                let lua: Vec<String> = g.lua_by_phase.iter().map(|l| format!("{}: {}", l.phase, l.function)).collect();
                writeln!(out, "  {:<width$} {:>8}  Lua most seen: {}", "", "", lua.join("; "))?;
            }
            if let Some(u) = &g.upstream {
                let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}ms"));
                writeln!(
                    out,
                    "  {:<width$} {:>8}  upstream as nginx timed it: connect {}, first byte {}, whole response {}",
                    "",
                    "",
                    f(u.connect_ms),
                    f(u.first_byte_ms),
                    f(u.response_ms)
                )?;
            }
        }
    }
    if !slowest.is_empty() {
        writeln!(out, "slowest requests:")?;
        for s in &slowest {
            let held = match (&s.held_by, s.held_ms) {
                (Some(f), Some(ms)) => format!("; held on the worker by {f} ({})", human(ms)),
                _ => String::new(),
            };
            writeln!(
                out,
                "  {:>8}  {} {} {} (location {}, worker {}): {}{held}",
                human(s.total_ms),
                s.method,
                s.uri,
                s.status,
                s.location,
                s.worker,
                parts_line(&s.parts)
            )?;
        }
    }
    if c.lost > 0 {
        writeln!(out, "{} records lost (ring buffer full): some requests are missing", c.lost)?;
    }
    writeln!(out, "histograms and breakdowns: {}", svg_path.display())?;
    if let Some(note) = steal::note(c.steal_pct) {
        writeln!(out, "{note}")?;
    }
    drop(out);
    if let Some(path) = &args.json {
        let summary = Summary {
            tool: "latency",
            pids: &r.pids,
            duration_secs: secs,
            stopped_by: c.stopped_by,
            by: args.by,
            requests: counted,
            sampling: r.sampling,
            began_before_run: r.requests.began_before,
            under_min: r.requests.under_min,
            implausible: r.requests.implausible,
            lost_events: c.lost,
            steal_pct: c.steal_pct,
            events: &c.events,
            groups,
            slowest,
            inlined: r.requests.inlined_summary(),
            svg: svg_path.display().to_string(),
        };
        if report::write_json(path, &summary)? {
            println!("summary: {}", path.display());
        }
    }
    Ok(())
}
