//! `ljprobe gate`: the CI regression check. Exit 0 when no function's share of
//! the profile grew beyond the threshold, 1 when one did (naming it), 2 when the
//! inputs could not be compared. A growth counts only when it is also
//! significant for the sample counts at hand, so that the same build profiled
//! twice passes: noise is judged by the data, not by a tolerance tuned to one
//! machine.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{anyhow, Result};
use ljprobe_flamegraph::diff::{self, Change};
use serde::Serialize;

use super::diff::{confidence_text, describe, load, RunInfo};

#[derive(clap::Args)]
pub struct Args {
    /// The reference run: folded stacks, or a JSON summary of a run that also wrote `--folded`.
    #[arg(long, value_name = "FILE")]
    baseline: PathBuf,
    /// The run to judge, in either form.
    #[arg(long, value_name = "FILE")]
    current: PathBuf,
    /// How much a function's share (self or total) may grow, relative to the baseline's.
    #[arg(long, value_name = "PCT", default_value = "5%", value_parser = parse_percent)]
    max_regress: f64,
    /// Judge only the functions whose frame label matches this regular expression.
    #[arg(long, value_name = "RE")]
    functions: Option<regex::Regex>,
    /// How sure a growth must be before it fails the gate (two-sided, from the sample counts).
    #[arg(long, value_name = "PCT", default_value = "99.99%", value_parser = parse_confidence)]
    confidence: f64,
    /// Ignore functions below this share of the current run: too small to matter or to measure.
    #[arg(long, value_name = "PCT", default_value = "0.5%", value_parser = parse_percent)]
    min_share: f64,
    /// Differential flame graph, baseline -> current [default: ljprobe-gate.svg].
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// A short Markdown summary to post on a pull request [default: ljprobe-gate.md].
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The verdict and every judged change ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// `5%`, `5` (percent) or `0.05%`; a fraction comes back.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let n: f64 = s.trim().trim_end_matches('%').trim().parse().map_err(|_| format!("`{s}` is not a percentage such as 5%"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("`{s}` is not a percentage of 0% or more"));
    }
    Ok(n / 100.0)
}

/// A confidence below 100%: at 100% nothing could ever fail.
fn parse_confidence(s: &str) -> Result<f64, String> {
    let c = parse_percent(s)?;
    if !(0.5..1.0).contains(&c) {
        return Err(format!("`{s}`: give a confidence from 50% to below 100%, such as 99.99%"));
    }
    Ok(c)
}

/// A function that got more expensive, in self or total share.
#[derive(Serialize)]
pub struct Regression {
    pub function: String,
    /// "self", "total" or "self and total".
    pub metric: &'static str,
    pub change: Change,
}

#[derive(Serialize)]
struct Verdict<'a> {
    pass: bool,
    baseline: RunInfo,
    current: RunInfo,
    max_regress: f64,
    confidence: f64,
    min_share: f64,
    regressions: &'a [Regression],
    svg: String,
    markdown: String,
}

/// The judged changes that fail the gate, biggest growth in share points first.
pub fn regressions(changes: &[Change], max_regress: f64, confidence: f64, min_share: f64, only: Option<&regex::Regex>) -> Vec<Regression> {
    let z = diff::z_for(confidence);
    let grew = |after: f64, relative: Option<f64>, z_score: f64| {
        after >= min_share && relative.is_none_or(|r| r > max_regress) && z_score >= z
    };
    let mut out: Vec<Regression> = changes
        .iter()
        .filter(|c| only.is_none_or(|re| re.is_match(&c.function)))
        .filter_map(|c| {
            let s = grew(c.after.self_share, c.self_relative, c.self_z);
            let t = grew(c.after.total, c.total_relative, c.total_z);
            let metric = match (s, t) {
                (true, true) => "self and total",
                (true, false) => "self",
                (false, true) => "total",
                (false, false) => return None,
            };
            Some(Regression { function: c.function.clone(), metric, change: c.clone() })
        })
        .collect();
    // By what the growth costs, in points of the run's share: a function
    // that went from 0.25% to 0.55% doubled, but one that went from 26% to
    // 30% is the one to look at first.
    let worst = |r: &Regression| {
        let c = &r.change;
        c.self_points.max(c.total_points)
    };
    out.sort_by(|a, b| worst(b).total_cmp(&worst(a)).then_with(|| a.function.cmp(&b.function)));
    out
}

fn change_text(r: &Regression) -> String {
    let c = &r.change;
    let self_part = describe(c.self_points, c.self_relative, c.self_z);
    let total_part = describe(c.total_points, c.total_relative, c.total_z);
    match r.metric {
        "self" => format!("self {self_part}"),
        "total" => format!("total {total_part}"),
        _ => format!("self {self_part}; total {total_part}"),
    }
}

fn markdown(pass: bool, regs: &[Regression], changes: &[Change], a: &Args, base: &RunInfo, cur: &RunInfo, svg: &str) -> String {
    let mut md = String::new();
    let verdict = if pass {
        "PASS".to_string()
    } else {
        format!("FAIL: {} function{} more expensive", regs.len(), if regs.len() == 1 { "" } else { "s" })
    };
    let _ = writeln!(md, "### ljprobe gate: {verdict}\n");
    let _ = writeln!(
        md,
        "Baseline `{}` ({} {}), current `{}` ({} {}). A function fails when its share of the profile \
         (self or total) grows by more than {:.1}% of the baseline's, with {}% confidence.\n",
        base.path,
        base.weight,
        base.unit,
        cur.path,
        cur.weight,
        cur.unit,
        a.max_regress * 100.0,
        a.confidence * 100.0
    );
    let row = |c: &Change, what: String| {
        format!(
            "| `{}` | {:.1}% → {:.1}% | {:.1}% → {:.1}% | {} |\n",
            c.function.replace('|', "\\|").replace('`', "'"),
            c.before.self_share * 100.0,
            c.after.self_share * 100.0,
            c.before.total * 100.0,
            c.after.total * 100.0,
            what
        )
    };
    let header = "| function | self share | total share | change |\n|---|---|---|---|\n";
    if !regs.is_empty() {
        md += header;
        for r in regs {
            md += &row(&r.change, change_text(r));
        }
    } else {
        md += "No function got more expensive beyond the threshold. Largest moves:\n\n";
        md += header;
        for c in changes.iter().take(5) {
            md += &row(c, format!("self {:+.2} pts, total {:+.2} pts ({})", c.self_points, c.total_points, confidence_text(c.self_z.abs().max(c.total_z.abs()))));
        }
    }
    let _ = writeln!(md, "\nDifferential flame graph (red: grew, blue: shrank): `{svg}`");
    md
}

pub fn run(args: Args) -> Result<ExitCode> {
    let svg_path = args.svg.clone().unwrap_or_else(|| PathBuf::from("ljprobe-gate.svg"));
    let md_path = args.markdown.clone().unwrap_or_else(|| PathBuf::from("ljprobe-gate.md"));
    for p in [&svg_path, &md_path].into_iter().chain(args.json.iter().filter(|p| p.as_os_str() != "-")) {
        crate::output::check(p)?;
    }
    let (base, cur) = (load(&args.baseline)?, load(&args.current)?);
    super::diff::check_comparable(&base, &cur)?;
    let title = cur.tool.as_deref().map_or("ljprobe gate".to_string(), |t| format!("ljprobe gate: {t}"));
    super::diff::write_svg(&svg_path, &base, &cur, true, &title)?;
    let changes = diff::compare(&base.side, &cur.side);
    let regs = regressions(&changes, args.max_regress, args.confidence, args.min_share, args.functions.as_ref());
    let pass = regs.is_empty();
    let (bi, ci) = (RunInfo::of(&base), RunInfo::of(&cur));
    let md = markdown(pass, &regs, &changes, &args, &bi, &ci, &svg_path.display().to_string());
    crate::output::write(&md_path, md.as_bytes())?;

    if pass {
        println!(
            "ljprobe gate: PASS: no function's share grew by more than {:.1}% ({} -> {})",
            args.max_regress * 100.0,
            base.path.display(),
            cur.path.display()
        );
    } else {
        println!("ljprobe gate: FAIL: {} function(s) got more expensive than +{:.1}%:", regs.len(), args.max_regress * 100.0);
        for r in &regs {
            println!("  {}: {}", r.function, change_text(r));
        }
    }
    println!("  differential flame graph: {}; summary: {}", svg_path.display(), md_path.display());
    if let Some(path) = &args.json {
        let verdict = Verdict {
            pass,
            baseline: bi,
            current: ci,
            max_regress: args.max_regress,
            confidence: args.confidence,
            min_share: args.min_share,
            regressions: &regs,
            svg: svg_path.display().to_string(),
            markdown: md_path.display().to_string(),
        };
        crate::report::write_json(path, &verdict).map_err(|e| anyhow!("{e:#}"))?;
    }
    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ljprobe_flamegraph::diff::{Side, Stacks};

    fn side(text: &str) -> Side {
        Side::counted(Stacks::parse(text).unwrap())
    }

    #[test]
    fn percentages_parse() {
        assert_eq!(parse_percent("5%").unwrap(), 0.05);
        assert!((parse_percent("99.99%").unwrap() - 0.9999).abs() < 1e-12);
        assert!(parse_percent("five").is_err());
        assert!(parse_percent("-3%").is_err());
        assert!(parse_confidence("100%").is_err());
    }

    #[test]
    fn grows_beyond_threshold_and_noise_fails_others_pass() {
        let before = side("h;parse 40000\nh;price 30000\nh;render 30000\n");
        // price 20% more work: 36000 of 106000.
        let after = side("h;parse 40000\nh;price 36000\nh;render 30000\n");
        let changes = diff::compare(&before, &after);
        let regs = regressions(&changes, 0.05, 0.9999, 0.005, None);
        assert_eq!(regs.iter().map(|r| r.function.as_str()).collect::<Vec<_>>(), vec!["price"]);
        assert_eq!(regs[0].metric, "self and total");
        // The same growth on 100 times fewer samples is not sure enough.
        let (b, a) = (side("h;parse 400\nh;price 300\nh;render 300\n"), side("h;parse 400\nh;price 360\nh;render 300\n"));
        assert!(regressions(&diff::compare(&b, &a), 0.05, 0.9999, 0.005, None).is_empty());
        // Filtered out by --functions.
        let re = regex::Regex::new("^parse").unwrap();
        assert!(regressions(&changes, 0.05, 0.9999, 0.005, Some(&re)).is_empty());
    }
}
