//! Two profiles of the same program compared frame by frame: the differential
//! flame graph, and which functions changed in self and total share, with how
//! sure a change is given the sample counts.
//!
//! Stacks are read back from folded text, where frames are labels: a frame's
//! kind is not known any more, so "function" is every label but the VM's own
//! (`trace#N`, `[GC]`, `[interpreter]`...), with the `@LINE` of `--lines` dropped
//! so that a function adds up over its lines.

use std::{
    collections::{BTreeSet, HashMap},
    io::{self, Write},
};

use inferno::flamegraph::{self, Options};

/// Folded stacks as text labels, root first.
#[derive(Debug, Default, Clone)]
pub struct Stacks {
    pub stacks: Vec<(Vec<String>, u64)>,
    pub total: u64,
}

impl Stacks {
    /// Parses `frame;frame;frame weight` lines (blank lines skipped). An error
    /// names the first line that is not of that form.
    pub fn parse(text: &str) -> Result<Stacks, String> {
        let mut merged: HashMap<Vec<String>, u64> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let bad = || format!("line {} is not `frame;frame;... weight`: {:.80}", i + 1, line);
            let (stack, weight) = line.rsplit_once(' ').ok_or_else(bad)?;
            let weight: u64 = weight.parse().map_err(|_| bad())?;
            let frames: Vec<String> = stack.split(';').map(str::to_string).collect();
            if frames.iter().any(String::is_empty) {
                return Err(bad());
            }
            *merged.entry(frames).or_default() += weight;
        }
        let mut stacks: Vec<_> = merged.into_iter().collect();
        stacks.sort();
        let total = stacks.iter().map(|(_, w)| w).sum();
        Ok(Stacks { stacks, total })
    }

    /// Self and total weight per function (see the module comment).
    pub fn functions(&self) -> HashMap<String, Weights> {
        let mut m: HashMap<String, Weights> = HashMap::new();
        for (stack, w) in &self.stacks {
            let names: Vec<&str> = stack.iter().map(|f| function_of(f)).collect();
            if let Some(leaf) = names.iter().rev().find(|f| !is_vm(f)) {
                m.entry(leaf.to_string()).or_default().self_weight += w;
            }
            let unique: BTreeSet<&str> = names.into_iter().filter(|f| !is_vm(f)).collect();
            for f in unique {
                m.entry(f.to_string()).or_default().total += w;
            }
        }
        m
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub self_weight: u64,
    pub total: u64,
}

/// `name file:12 @15` -> `name file:12`.
fn function_of(label: &str) -> &str {
    match label.rsplit_once(" @") {
        Some((f, at)) if !at.is_empty() && at.bytes().all(|b| b.is_ascii_digit()) => f,
        _ => label,
    }
}

fn is_vm(label: &str) -> bool {
    let trace = label.strip_prefix("trace#").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    trace || (label.starts_with('[') && label.ends_with(']'))
}

/// One profile's side of a comparison: its stacks, and how many independent
/// samples they were drawn from (the sample count for a CPU profile; for
/// weights in microseconds or bytes, the number of events), which is what
/// makes a difference in share significant or not.
#[derive(Debug, Clone)]
pub struct Side {
    pub stacks: Stacks,
    pub samples: u64,
}

impl Side {
    /// Stacks whose weights are the samples themselves (a CPU profile).
    pub fn counted(stacks: Stacks) -> Side {
        Side { samples: stacks.total, stacks }
    }
}

/// How a function's share moved between two profiles.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub function: String,
    pub before: Shares,
    pub after: Shares,
    /// Differences in percentage points (after - before).
    pub self_points: f64,
    pub total_points: f64,
    /// The change relative to the share before (0.2 = 20% more); None when
    /// the function was not in the first profile.
    pub self_relative: Option<f64>,
    pub total_relative: Option<f64>,
    /// Standard scores of the differences in share (two-proportion z-test).
    pub self_z: f64,
    pub total_z: f64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Shares {
    #[serde(rename = "self")]
    pub self_share: f64,
    pub total: f64,
}

impl Change {
    /// How sure the larger of the two changes is real: 1 - its two-sided p-value.
    pub fn confidence(&self) -> f64 {
        confidence(self.self_z.abs().max(self.total_z.abs()))
    }
}

/// Two-sided confidence of a standard score: 0.95 at z = 1.96.
pub fn confidence(z: f64) -> f64 {
    1.0 - libm::erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// The standard score that a two-sided confidence needs (inverse of `confidence`).
pub fn z_for(confidence: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 40.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if self::confidence(mid) < confidence {
            lo = mid
        } else {
            hi = mid
        }
    }
    hi
}

/// Every function of either profile, with its change; biggest moves (in
/// points, self or total) first.
pub fn compare(before: &Side, after: &Side) -> Vec<Change> {
    let (fb, fa) = (before.stacks.functions(), after.stacks.functions());
    let names: BTreeSet<&String> = fb.keys().chain(fa.keys()).collect();
    let (tb, ta) = (before.stacks.total.max(1) as f64, after.stacks.total.max(1) as f64);
    let (nb, na) = (before.samples.max(1) as f64, after.samples.max(1) as f64);
    let mut out: Vec<Change> = names
        .into_iter()
        .map(|name| {
            let b = fb.get(name).copied().unwrap_or_default();
            let a = fa.get(name).copied().unwrap_or_default();
            let sb = Shares { self_share: b.self_weight as f64 / tb, total: b.total as f64 / tb };
            let sa = Shares { self_share: a.self_weight as f64 / ta, total: a.total as f64 / ta };
            let relative = |before: f64, after: f64| (before > 0.0).then(|| after / before - 1.0);
            Change {
                function: name.clone(),
                self_points: (sa.self_share - sb.self_share) * 100.0,
                total_points: (sa.total - sb.total) * 100.0,
                self_relative: relative(sb.self_share, sa.self_share),
                total_relative: relative(sb.total, sa.total),
                self_z: z_score(sb.self_share, nb, sa.self_share, na),
                total_z: z_score(sb.total, nb, sa.total, na),
                before: sb,
                after: sa,
            }
        })
        .collect();
    let size = |c: &Change| c.self_points.abs().max(c.total_points.abs());
    out.sort_by(|x, y| size(y).total_cmp(&size(x)).then_with(|| x.function.cmp(&y.function)));
    out
}

/// Two-proportion z-test with the pooled share: the difference in units of
/// its standard error when both shares were really the same.
fn z_score(p1: f64, n1: f64, p2: f64, n2: f64) -> f64 {
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (p2 - p1) / se
}

/// The folded lines of a differential flame graph (`stack before after`, as
/// flamegraph.pl's difffolded writes): the shape is AFTER's; with `normalize`,
/// BEFORE is scaled to AFTER's total so that a longer run does not read as growth.
pub fn differential_lines(before: &Stacks, after: &Stacks, normalize: bool) -> Vec<String> {
    let scale = if normalize && before.total > 0 { after.total as f64 / before.total as f64 } else { 1.0 };
    let mut both: HashMap<&Vec<String>, (u64, u64)> = HashMap::new();
    for (s, w) in &before.stacks {
        both.entry(s).or_default().0 += w;
    }
    for (s, w) in &after.stacks {
        both.entry(s).or_default().1 += w;
    }
    let mut lines: Vec<String> = both
        .into_iter()
        .map(|(s, (b, a))| format!("{} {} {a}", s.join(";"), (b as f64 * scale).round() as u64))
        .collect();
    lines.sort();
    lines
}

/// The differential flame graph: AFTER's shape, red where a frame grew and
/// blue where it shrank (inferno's colouring of difffolded input).
pub fn render_svg(lines: &[String], title: &str, subtitle: &str, count_name: &str, out: impl Write) -> io::Result<()> {
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(format!("{subtitle} (red: grew, blue: shrank; hover for the change)"));
    options.count_name = count_name.to_string();
    options.deterministic = true;
    // A frame only in BEFORE has no width in AFTER's shape; an all-zero AFTER
    // would leave nothing to draw, which inferno refuses.
    if !lines.iter().any(|l| !l.ends_with(" 0")) {
        options.subtitle = Some(format!("{subtitle} (no samples after)"));
        return flamegraph::from_lines(&mut options, ["[no samples] 0 1"], out);
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(text: &str) -> Side {
        Side::counted(Stacks::parse(text).unwrap())
    }

    #[test]
    fn parses_merges_and_refuses_junk() {
        let s = Stacks::parse("a;b 3\n\na;b 2\na 1\n").unwrap();
        assert_eq!(s.total, 6);
        assert_eq!(s.stacks, vec![(vec!["a".to_string()], 1), (vec!["a".to_string(), "b".to_string()], 5)]);
        assert!(Stacks::parse("a;b x\n").unwrap_err().contains("line 1"));
        assert!(Stacks::parse("ok 1\nnoweight\n").unwrap_err().contains("line 2"));
        assert!(Stacks::parse("a;;b 1\n").is_err());
    }

    #[test]
    fn self_skips_vm_frames_and_lines_fold_into_functions() {
        let s = Stacks::parse("main a.lua:1;hot a.lua:5 @7;trace#3 4\nmain a.lua:1;hot a.lua:5 @9 2\nmain a.lua:1;[GC] 1\n").unwrap();
        let f = s.functions();
        assert_eq!(f["hot a.lua:5"], Weights { self_weight: 6, total: 6 });
        assert_eq!(f["main a.lua:1"], Weights { self_weight: 1, total: 7 });
        assert!(!f.contains_key("trace#3") && !f.contains_key("[GC]"));
    }

    #[test]
    fn known_pair_gives_known_changes() {
        // `hot` doubles its share, `cold` halves; same sample counts.
        let before = side("main;hot 100\nmain;cold 400\nmain 500\n");
        let after = side("main;hot 200\nmain;cold 200\nmain 600\n");
        let c = compare(&before, &after);
        let by = |n: &str| c.iter().find(|c| c.function == n).unwrap().clone();
        let (hot, cold, main) = (by("hot"), by("cold"), by("main"));
        assert!((hot.self_points - 10.0).abs() < 1e-9 && (hot.self_relative.unwrap() - 1.0).abs() < 1e-9);
        assert!((cold.self_points + 20.0).abs() < 1e-9);
        assert_eq!(c[0].function, "cold", "the biggest move comes first");
        assert!(main.total_points.abs() < 1e-9, "the root holds everything in both");
        assert!(hot.self_z > 5.0 && cold.self_z < -5.0);
    }

    #[test]
    fn confidence_depends_on_sample_counts() {
        // A 2-point change: noise on 100 samples, certain on 100000.
        let small = compare(&side("a 10\nb 90\n"), &side("a 12\nb 88\n"));
        let large = compare(&side("a 10000\nb 90000\n"), &side("a 12000\nb 88000\n"));
        let a = |c: &[Change]| c.iter().find(|c| c.function == "a").unwrap().confidence();
        assert!(a(&small) < 0.9, "{}", a(&small));
        assert!(a(&large) > 0.9999, "{}", a(&large));
        assert!((z_for(0.95) - 1.96).abs() < 0.01);
    }

    #[test]
    fn differential_lines_normalize_before_to_after() {
        let before = Stacks::parse("a;b 10\na 10\n").unwrap();
        let after = Stacks::parse("a;b 60\na;c 40\n").unwrap();
        let lines = differential_lines(&before, &after, true);
        assert_eq!(lines, vec!["a 50 0", "a;b 50 60", "a;c 0 40"]);
        assert_eq!(differential_lines(&before, &after, false)[1], "a;b 10 60");
        let mut svg = Vec::new();
        render_svg(&lines, "t", "s", "samples", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        // b grew (red), the bare `a` frame and stacks gone from AFTER are not drawn wide.
        assert!(svg.contains("b (60 samples, 60.00%; +10.00%)"), "{}", &svg[..svg.len().min(400)]);
    }
}
