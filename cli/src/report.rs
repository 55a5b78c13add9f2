//! Writing a profile: SVG (always), folded stacks and a JSON summary on request,
//! and a few lines for the terminal.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ljprobe_flamegraph::{pprof, svg, Folded, Frame};
use serde::Serialize;

use crate::collect::Collected;

#[derive(clap::Args, Debug, Clone)]
pub struct Outputs {
    /// Flame graph SVG [default: ljprobe-<tool>-<pid>.svg in the current directory].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Folded stacks for flamegraph.pl, inferno or speedscope.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Summary a script can read ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Gzipped pprof profile (profile.proto) for go tool pprof, Pyroscope or Grafana.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
}

impl Outputs {
    /// Refuses an unsafe output path (see `output`) before the run rather than after it.
    pub fn check(&self, default_svg: &str) -> Result<()> {
        crate::output::check(self.svg.as_deref().unwrap_or(Path::new(default_svg)))?;
        let json = self.json.iter().filter(|p| p.as_os_str() != "-");
        for path in self.folded.iter().chain(self.pprof.iter()).chain(json) {
            crate::output::check(path)?;
        }
        Ok(())
    }
}

pub struct Profile {
    pub tool: &'static str,
    pub title: String,
    pub pids: Vec<u32>,
    pub frequency: Option<u64>,
    /// What a unit of weight is: "samples" or "us".
    pub unit: &'static str,
    pub folded: Folded,
    pub by_vm_state: BTreeMap<String, u64>,
    pub collected: Collected,
    pub default_svg: String,
    /// Tool-specific figures for the JSON summary, at its top level.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Lines for the terminal after the top frames.
    pub notes: Vec<String>,
    pub pprof: PprofKind,
}

/// What the weights measure, in the sample types `--pprof` writes.
pub enum PprofKind {
    /// Samples at `freq` Hz: a count, and the CPU time they stand for.
    Cpu { freq: u64 },
    /// Microseconds blocked.
    OffCpu,
    /// The same allocations weighed both ways; the one `unit` names is shown first.
    Alloc { by_bytes: Folded, by_count: Folded },
    /// What is still in use at the end (`ljprobe leak`), both ways, as Go's heap profiles name it.
    Inuse { by_bytes: Folded, by_count: Folded },
}

#[derive(Serialize)]
pub struct TopFrame {
    pub frame: String,
    /// Weight where this is the innermost function (Lua or C).
    #[serde(rename = "self")]
    pub self_weight: u64,
    pub self_share: f64,
    /// Weight of stacks that contain it.
    pub total: u64,
    pub total_share: f64,
}

#[derive(Serialize)]
struct Summary<'a> {
    tool: &'a str,
    pids: &'a [u32],
    duration_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency: Option<u64>,
    unit: &'a str,
    samples: u64,
    weight: u64,
    lost_samples: u64,
    stopped_by: crate::collect::StopReason,
    steal_pct: Option<f64>,
    /// Workers that joined, targets that exited or exec'd during the run.
    events: &'a [crate::target::follow::Event],
    by_vm_state: &'a BTreeMap<String, u64>,
    top_frames: Vec<TopFrame>,
    /// With `--lines`: the innermost Lua frames by the line they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_lines: Vec<TopFrame>,
    svg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    folded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pprof: Option<String>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

fn is_function(f: &Frame) -> bool {
    matches!(f, Frame::Lua { .. } | Frame::Native(_))
}

pub fn write(out: &Outputs, p: &Profile) -> Result<()> {
    let svg_path = out.svg.clone().unwrap_or_else(|| PathBuf::from(&p.default_svg));
    let c = &p.collected;
    let subtitle = format!(
        "{} over {:.1}s{}, {} {}, {} lost",
        p.pids.iter().map(|p| format!("PID {p}")).collect::<Vec<_>>().join(", "),
        c.elapsed_secs,
        p.frequency.map(|f| format!(" at {f} Hz")).unwrap_or_default(),
        p.folded.total(),
        p.unit,
        c.lost
    );
    let opts = svg::SvgOptions { title: p.title.clone(), subtitle, count_name: p.unit.to_string() };
    let mut buf = Vec::new();
    svg::render(&p.folded, &opts, &mut buf).context("rendering the flame graph")?;
    crate::output::write(&svg_path, &buf)?;
    if let Some(path) = &out.folded {
        let mut buf = Vec::new();
        p.folded.write(&mut buf)?;
        crate::output::write(path, &buf)?;
    }
    if let Some(path) = &out.pprof {
        crate::output::write(path, &pprof_file(p))?;
    }

    let total = p.folded.total().max(1) as f64;
    // Functions add up over the lines they ran (`--lines` keeps them in the
    // frames); the by-line view is apart.
    let functions = p.folded.map(Frame::function);
    let top = top_frames(&functions, is_function, total);
    let top_lines = top_frames(&p.folded, |f| matches!(f, Frame::Lua { at: Some(_), .. }), total);

    println!("{}", p.title);
    println!(
        "  {} {} in {:.1}s ({} lost); flame graph: {}",
        p.folded.total(),
        p.unit,
        c.elapsed_secs,
        c.lost,
        svg_path.display()
    );
    if let Some(path) = &out.folded {
        println!("  folded stacks: {}", path.display());
    }
    if let Some(path) = &out.pprof {
        println!("  pprof: {}", path.display());
    }
    for t in top.iter().take(5) {
        println!("  {:>5.1}%  {}", t.self_share * 100.0, t.frame);
    }
    if !top_lines.is_empty() {
        println!("  by line:");
        for t in top_lines.iter().take(5) {
            println!("  {:>5.1}%  {}", t.self_share * 100.0, t.frame);
        }
    }
    for note in p.notes.iter().cloned().chain(ljprobe_host::steal::note(c.steal_pct)) {
        println!("  {note}");
    }
    if let Some(path) = &out.json {
        let summary = Summary {
            tool: p.tool,
            pids: &p.pids,
            duration_secs: c.elapsed_secs,
            frequency: p.frequency,
            unit: p.unit,
            samples: c.records,
            weight: p.folded.total(),
            lost_samples: c.lost,
            stopped_by: c.stopped_by,
            steal_pct: c.steal_pct,
            events: &c.events,
            by_vm_state: &p.by_vm_state,
            top_frames: top,
            top_lines,
            svg: svg_path.display().to_string(),
            folded: out.folded.as_ref().map(|f| f.display().to_string()),
            pprof: out.pprof.as_ref().map(|f| f.display().to_string()),
            extra: &p.extra,
        };
        if write_json(path, &summary)? {
            println!("  summary: {}", path.display());
        }
    }
    Ok(())
}

/// The profile as pprof's gzipped profile.proto, in the sample types of its kind.
fn pprof_file(p: &Profile) -> Vec<u8> {
    let col = |type_, unit, folded, scale| pprof::Column { type_, unit, folded, scale };
    let f = &p.folded;
    let (columns, period, default_type) = match &p.pprof {
        PprofKind::Cpu { freq } => {
            let ns = 1e9 / (*freq).max(1) as f64;
            let columns = vec![col("samples", "count", f, 1.0), col("cpu", "nanoseconds", f, ns)];
            (columns, Some(("cpu", "nanoseconds", ns.round() as i64)), Some("cpu"))
        }
        // Every block counted, none sampled out.
        PprofKind::OffCpu => (vec![col("off-cpu", "nanoseconds", f, 1000.0)], Some(("off-cpu", "nanoseconds", 1)), None),
        // The period type Go's heap profiles have, which Pyroscope's memory
        // types name; how it sampled is in the JSON summary.
        PprofKind::Alloc { by_bytes, by_count } => {
            let columns = vec![col("alloc_objects", "count", by_count, 1.0), col("alloc_space", "bytes", by_bytes, 1.0)];
            (columns, Some(("space", "bytes", 0)), Some(if p.unit == "bytes" { "alloc_space" } else { "alloc_objects" }))
        }
        PprofKind::Inuse { by_bytes, by_count } => {
            let columns = vec![col("inuse_objects", "count", by_count, 1.0), col("inuse_space", "bytes", by_bytes, 1.0)];
            (columns, Some(("space", "bytes", 0)), Some("inuse_space"))
        }
    };
    let elapsed_ns = (p.collected.elapsed_secs * 1e9) as i64;
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    pprof::Pprof {
        columns,
        duration_secs: p.collected.elapsed_secs,
        time_nanos: now_ns.saturating_sub(elapsed_ns),
        period,
        default_type,
        comments: vec![p.title.clone()],
    }
    .gzipped()
}

/// The 20 heaviest innermost functions (Lua or C) of `folded`, lines folded
/// into their functions: the summary's `top_frames`.
pub fn top_functions(folded: &Folded) -> Vec<TopFrame> {
    top_frames(&folded.map(Frame::function), is_function, folded.total().max(1) as f64)
}

/// The 20 heaviest innermost Lua functions of `folded`: whatever C the Lua
/// code called to allocate, the Lua function is what a user changes.
pub fn top_lua_functions(folded: &Folded) -> Vec<TopFrame> {
    top_frames(&folded.map(Frame::function), |f| matches!(f, Frame::Lua { .. }), folded.total().max(1) as f64)
}

/// The 20 heaviest innermost frames that satisfy `pred`, with the weight of
/// the stacks that hold them anywhere.
fn top_frames(folded: &Folded, pred: impl Fn(&Frame) -> bool, total: f64) -> Vec<TopFrame> {
    let inclusive: BTreeMap<&Frame, u64> = folded.inclusive().into_iter().collect();
    folded
        .by_innermost(pred)
        .into_iter()
        .take(20)
        .map(|(f, w)| {
            let t = inclusive.get(f).copied().unwrap_or(w);
            TopFrame { frame: f.label(), self_weight: w, self_share: w as f64 / total, total: t, total_share: t as f64 / total }
        })
        .collect()
}

/// Pretty JSON to `path`, or to standard output for "-"; true if a file was written.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<bool> {
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(false);
    }
    crate::output::write(path, (text + "\n").as_bytes())?;
    Ok(true)
}
