//! `ljprobe diff BEFORE AFTER`: a differential flame graph of two runs of any
//! stack tool, and the functions whose share changed most, with how sure each
//! change is. `gate` (gate.rs) decides on the same comparison.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use ljprobe_flamegraph::diff::{self, Change, Side, Stacks};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// The earlier run: folded stacks (`--folded`), or the JSON summary of a run
    /// that also wrote them (`--json` with `--folded`), which tells the sample count.
    before: PathBuf,
    /// The later run, in either form.
    after: PathBuf,
    /// Differential flame graph [default: ljprobe-diff.svg in the current directory].
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// The differential folded stacks (`stack before after`, as flamegraph.pl's difffolded.pl writes).
    #[arg(long, value_name = "FILE")]
    folded: Option<PathBuf>,
    /// Every function's change ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Scale BEFORE to AFTER's total before comparing widths (the default).
    #[arg(long, overrides_with = "no_normalize")]
    normalize: bool,
    /// Compare raw weights: a longer AFTER run reads as growth everywhere.
    #[arg(long)]
    no_normalize: bool,
    /// How many changed functions the terminal lists.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// One run read from disk.
pub struct Run {
    pub path: PathBuf,
    pub side: Side,
    /// "samples", "us", "bytes"...; from a JSON summary, else assumed samples.
    pub unit: String,
    pub tool: Option<String>,
}

/// Reads folded stacks, or a tool's JSON summary and the folded file it names.
pub fn load(path: &Path) -> Result<Run> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !text.trim_start().starts_with('{') {
        let stacks = Stacks::parse(&text).map_err(|e| anyhow::anyhow!("{} is not folded stacks: {e}", path.display()))?;
        return Ok(Run { path: path.to_path_buf(), side: Side::counted(stacks), unit: "samples".into(), tool: None });
    }
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is neither folded stacks nor JSON", path.display()))?;
    let Some(folded) = json.get("folded").and_then(|f| f.as_str()) else {
        bail!(
            "{} is a JSON summary without folded stacks: run the tool with --folded FILE as well as --json, \
             or give the folded file",
            path.display()
        );
    };
    // A summary names its folded file as the run was given it: relative to where
    // that ran, which is usually beside the summary.
    let mut folded_path = PathBuf::from(folded);
    if folded_path.is_relative() && !folded_path.exists() {
        folded_path = path.parent().unwrap_or(Path::new(".")).join(&folded_path);
    }
    let folded_text = std::fs::read_to_string(&folded_path)
        .with_context(|| format!("cannot read {}, the folded stacks {} names", folded_path.display(), path.display()))?;
    let stacks = Stacks::parse(&folded_text).map_err(|e| anyhow::anyhow!("{} is not folded stacks: {e}", folded_path.display()))?;
    let unit = json.get("unit").and_then(|u| u.as_str()).unwrap_or("samples").to_string();
    // Weights in microseconds or bytes are not independent draws; the events
    // they came from are: blocks for offcpu (its records), and for alloc the
    // allocations it recorded (its records are distinct stacks).
    let count = |k: &str| json.get(k).and_then(|s| s.as_u64()).filter(|&s| s > 0);
    let samples = count("recorded").or_else(|| count("samples")).unwrap_or(stacks.total);
    let tool = json.get("tool").and_then(|t| t.as_str()).map(str::to_string);
    Ok(Run { path: path.to_path_buf(), side: Side { stacks, samples }, unit, tool })
}

/// Refuses two runs that do not measure the same thing.
pub fn check_comparable(before: &Run, after: &Run) -> Result<()> {
    if let (Some(b), Some(a)) = (&before.tool, &after.tool) {
        if a != b {
            bail!("{} is a `{b}` profile and {} an `{a}` profile: compare runs of the same tool", before.path.display(), after.path.display());
        }
    }
    if before.unit != after.unit {
        bail!("{} counts {} and {} counts {}: compare runs of the same tool", before.path.display(), before.unit, after.path.display(), after.unit);
    }
    for run in [before, after] {
        if run.side.stacks.total == 0 {
            bail!("{} holds no samples: nothing to compare", run.path.display());
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Summary<'a> {
    before: RunInfo,
    after: RunInfo,
    normalized: bool,
    svg: String,
    changes: &'a [Change],
}

#[derive(Serialize)]
pub struct RunInfo {
    pub path: String,
    pub weight: u64,
    pub samples: u64,
    pub unit: String,
}

impl RunInfo {
    pub fn of(run: &Run) -> RunInfo {
        RunInfo { path: run.path.display().to_string(), weight: run.side.stacks.total, samples: run.side.samples, unit: run.unit.clone() }
    }
}

/// `a.folded (100 samples) -> b.folded (120 samples)`.
fn span(before: &Run, after: &Run) -> String {
    let one = |r: &Run| format!("{} ({} {})", r.path.display(), r.side.stacks.total, r.unit);
    format!("{} -> {}", one(before), one(after))
}

/// Writes the differential flame graph of `before` -> `after` to `path`.
pub fn write_svg(path: &Path, before: &Run, after: &Run, normalize: bool, title: &str) -> Result<Vec<String>> {
    let lines = diff::differential_lines(&before.side.stacks, &after.side.stacks, normalize);
    let subtitle = format!("{}{}", span(before, after), if normalize { ", normalized" } else { "" });
    let mut buf = Vec::new();
    diff::render_svg(&lines, title, &subtitle, &after.unit, &mut buf).context("rendering the differential flame graph")?;
    crate::output::write(path, &buf)?;
    Ok(lines)
}

/// `+3.2 pts (x1.14, 99.99%)`: a change as the terminal and Markdown show it.
pub fn describe(points: f64, relative: Option<f64>, z: f64) -> String {
    let rel = match relative {
        Some(r) => format!("{:+.1}%", r * 100.0),
        None => "new".into(),
    };
    format!("{points:+.2} pts ({rel}, {})", confidence_text(z))
}

pub fn confidence_text(z: f64) -> String {
    let c = diff::confidence(z);
    if c > 0.9999 {
        "confidence >99.99%".into()
    } else {
        format!("confidence {:.2}%", c * 100.0)
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let svg_path = args.svg.clone().unwrap_or_else(|| PathBuf::from("ljprobe-diff.svg"));
    crate::output::check(&svg_path)?;
    for p in args.folded.iter().chain(args.json.iter().filter(|p| p.as_os_str() != "-")) {
        crate::output::check(p)?;
    }
    let (before, after) = (load(&args.before)?, load(&args.after)?);
    check_comparable(&before, &after)?;
    let normalize = !args.no_normalize;
    let title = after.tool.as_deref().map_or("ljprobe diff".to_string(), |t| format!("ljprobe diff: {t}"));
    let lines = write_svg(&svg_path, &before, &after, normalize, &title)?;
    if let Some(path) = &args.folded {
        crate::output::write(path, (lines.join("\n") + "\n").as_bytes())?;
    }
    let changes = diff::compare(&before.side, &after.side);

    println!("ljprobe diff: {}; differential flame graph: {}", span(&before, &after), svg_path.display());
    println!("  biggest changes in share (self, total):");
    for c in changes.iter().take(args.top) {
        println!(
            "  {:>6.1}% -> {:>5.1}% self, {:>5.1}% -> {:>5.1}% total  {}  {}",
            c.before.self_share * 100.0,
            c.after.self_share * 100.0,
            c.before.total * 100.0,
            c.after.total * 100.0,
            c.function,
            if c.self_points.abs() >= c.total_points.abs() {
                describe(c.self_points, c.self_relative, c.self_z)
            } else {
                describe(c.total_points, c.total_relative, c.total_z)
            }
        );
    }
    if let Some(path) = &args.folded {
        println!("  differential folded stacks: {}", path.display());
    }
    if let Some(path) = &args.json {
        let summary = Summary {
            before: RunInfo::of(&before),
            after: RunInfo::of(&after),
            normalized: normalize,
            svg: svg_path.display().to_string(),
            changes: &changes,
        };
        if crate::report::write_json(path, &summary)? {
            println!("  summary: {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
