//! One SVG for `ljprobe latency`: a row per request group (an nginx location) with
//! its log2 latency histogram as a strip of shaded cells and its mean time per
//! request as a stacked bar, so which group is slow and why read off one line.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use crate::histogram::{Log2Histogram, BUCKETS};

pub struct GroupRow {
    /// group name, e.g. "/slow/upstream"
    pub label: String,
    /// requests
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// latencies in µs
    pub hist: Log2Histogram,
    /// Mean µs per request of each part, in display order; names look like
    /// "content: on-CPU in Lua", "content: waiting on upstream", "access: waiting (yielded)",
    /// "rewrite: on-CPU in C", "read: waiting behind other requests".
    pub parts: Vec<(String, f64)>,
}

pub struct RowsSvgOptions {
    pub title: String,
    pub subtitle: String,
}

const W: f64 = 1200.0;
const LABEL_X: f64 = 10.0;
/// Characters of a 12px label that fit before the histogram strip.
const LABEL_CHARS: usize = 30;
const HIST_X: f64 = 240.0;
const HIST_W: f64 = 440.0;
const BAR_X: f64 = 700.0;
const BAR_W: f64 = 420.0;
const BAR_H: f64 = 14.0;
const TOP: f64 = 104.0;
const ROW_H: f64 = 28.0;
/// The darkest histogram cell, a row's fullest bucket.
const CELL: [f64; 3] = [8.0, 48.0, 107.0];
const OTHER: &str = "#8fa98f";
/// Colour per kind (the part of a name after "phase: "), in legend order.
const KINDS: [(&str, &str); 7] = [
    ("on-CPU in Lua", "#f28e2b"),
    ("on-CPU in C", "#d62728"),
    ("blocked", "#4b2470"),
    ("preempted", "#9e9e9e"),
    ("waiting on upstream", "#1f77b4"),
    ("waiting (yielded)", "#9ecae1"),
    ("waiting behind other requests", "#e8a202"),
];

pub fn write_rows_svg(rows: &[GroupRow], opts: &RowsSvgOptions, out: &mut impl Write) -> io::Result<()> {
    let mut s = String::new();
    svg(rows, opts, &mut s);
    out.write_all(s.as_bytes())
}

// Writing into a String cannot fail: the `fmt::Write` results are ignored and
// `write_rows_svg`'s one io write carries the only real error.
fn svg(rows: &[GroupRow], opts: &RowsSvgOptions, s: &mut String) {
    let h = if rows.is_empty() { 200.0 } else { TOP + rows.len() as f64 * ROW_H + 50.0 };
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="Verdana, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{W}" height="{h}" fill="white"></rect>"#);
    let _ = writeln!(s, r#"<text x="{}" y="30" font-size="18" text-anchor="middle">{}</text>"#, W / 2.0, escape(&opts.title));
    let sub = escape(&opts.subtitle);
    let _ = writeln!(s, r##"<text x="{}" y="52" font-size="13" text-anchor="middle" fill="#555">{sub}</text>"##, W / 2.0);
    if rows.is_empty() {
        let _ = writeln!(s, r##"<text x="{}" y="130" font-size="16" text-anchor="middle" fill="#777">no requests</text>"##, W / 2.0);
        let _ = writeln!(s, "</svg>");
        return;
    }
    for (x, text) in [
        (LABEL_X, "request group"),
        (HIST_X, "latency (log2 buckets; darker = more of the group's requests)"),
        (BAR_X, "mean time per request, by phase and kind"),
    ] {
        let _ = writeln!(s, r#"<text x="{x}" y="78" font-size="12">{text}</text>"#);
    }
    let counts: Vec<[u64; BUCKETS]> = rows.iter().map(|r| counts_of(&r.hist)).collect();
    let first = counts.iter().filter_map(|c| c.iter().position(|&n| n > 0)).min();
    let last = counts.iter().filter_map(|c| c.iter().rposition(|&n| n > 0)).max();
    let range = first.zip(last);
    if let Some((first, last)) = range {
        bucket_labels(first, last, s);
    }
    let totals: Vec<f64> = rows.iter().map(|r| r.parts.iter().map(|p| clean(p.1)).sum()).collect();
    let max_total = totals.iter().copied().fold(0.0, f64::max);
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H;
        if i % 2 == 1 {
            let _ = writeln!(s, r##"<rect x="0" y="{y}" width="{W}" height="{ROW_H}" fill="#f5f5f5"></rect>"##);
        }
        label(row, y, s);
        if let Some((first, last)) = range {
            cells(&counts[i], first, last, y, s);
        }
        bar(&row.parts, totals[i], max_total, y, s);
    }
    legend(TOP + rows.len() as f64 * ROW_H + 28.0, s);
    let _ = writeln!(s, "</svg>");
}

/// `Log2Histogram` keeps its array private; its trimmed buckets map back by lower bound.
fn counts_of(h: &Log2Histogram) -> [u64; BUCKETS] {
    let mut c = [0; BUCKETS];
    for b in h.buckets() {
        c[Log2Histogram::bucket_of(b.lo_us)] = b.count;
    }
    c
}

fn bucket_labels(first: usize, last: usize, s: &mut String) {
    let cell = HIST_W / (last - first + 1) as f64;
    let widest = (first..=last).map(|b| tick(Log2Histogram::bounds(b).0).len()).max().unwrap_or(1);
    // 10px text is about 6px a character; skip cells until labels stop overlapping.
    let every = ((widest as f64 * 6.0 + 6.0) / cell).ceil().max(1.0) as usize;
    for b in (first..=last).step_by(every) {
        let x = HIST_X + (b - first) as f64 * cell + cell / 2.0;
        let (y, t) = (TOP - 6.0, tick(Log2Histogram::bounds(b).0));
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{y}" font-size="10" text-anchor="middle">{t}</text>"#);
    }
}

fn label(row: &GroupRow, y: f64, s: &mut String) {
    let shown = if row.label.chars().count() > LABEL_CHARS {
        format!("{}…", row.label.chars().take(LABEL_CHARS - 1).collect::<String>())
    } else {
        row.label.clone()
    };
    let (p50, p99, max) = (dur(row.p50_us), dur(row.p99_us), dur(row.max_us));
    let _ = writeln!(s, "<g><title>{}\nn={} p50 {p50} p99 {p99} max {max}</title>", escape(&row.label), row.count);
    let _ = writeln!(s, r#"<text x="{LABEL_X}" y="{}" font-size="12">{}</text>"#, y + 13.0, escape(&shown));
    let (y, n) = (y + 25.0, row.count);
    let _ = writeln!(s, r##"<text x="{LABEL_X}" y="{y}" font-size="10" fill="#555">n={n} p50 {p50} p99 {p99}</text>"##);
    let _ = writeln!(s, "</g>");
}

fn cells(c: &[u64; BUCKETS], first: usize, last: usize, y: f64, s: &mut String) {
    let cell = HIST_W / (last - first + 1) as f64;
    let total = c.iter().fold(0u64, |t, &n| t.saturating_add(n));
    let fullest = c.iter().copied().max().unwrap_or(0);
    for (i, &n) in c[first..=last].iter().enumerate() {
        // A handful of requests among millions would shade as white; keep them visible.
        let share = if n == 0 { 0.0 } else { (n as f64 / fullest as f64).max(0.06) };
        let [r, g, b] = CELL.map(|v| (255.0 - (255.0 - v) * share).round() as u8);
        let pct = if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 };
        let (lo, hi) = Log2Histogram::bounds(first + i);
        let range = if hi == u64::MAX { format!("{lo} us and above") } else { format!("{lo}-{} us", hi - 1) };
        let noun = if n == 1 { "request" } else { "requests" };
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{}" width="{cell:.1}" height="{}" fill="rgb({r},{g},{b})"><title>{range}: {n} {noun} ({pct:.1}%)</title></rect>"#,
            HIST_X + i as f64 * cell,
            y + 3.0,
            ROW_H - 6.0
        );
    }
    let (y, h) = (y + 3.0, ROW_H - 6.0);
    let _ = writeln!(s, r##"<rect x="{HIST_X}" y="{y}" width="{HIST_W}" height="{h}" fill="none" stroke="#ccc" stroke-width="0.5"></rect>"##);
}

fn bar(parts: &[(String, f64)], total: f64, max_total: f64, y: f64, s: &mut String) {
    if total <= 0.0 || max_total <= 0.0 {
        return;
    }
    let scale = BAR_W / max_total;
    let mut x = BAR_X;
    let (mut prev, mut ticks) = (None, Vec::new());
    for (name, us) in parts {
        let us = clean(*us);
        if us <= 0.0 {
            continue;
        }
        let (phase, kind) = name.split_once(": ").unwrap_or(("", name));
        if prev.is_some_and(|p| p != phase) {
            ticks.push(x);
        }
        prev = Some(phase);
        let w = us * scale;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{}" width="{w:.1}" height="{BAR_H}" fill="{}" stroke="white" stroke-width="0.5"><title>{}: {} ({:.1}%)</title></rect>"#,
            y + 3.0,
            colour(kind),
            escape(name),
            dur(us),
            us * 100.0 / total
        );
        x += w;
    }
    // A dark tick between phases: shading them instead would blur the kind colours.
    for x in ticks {
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#222" stroke-width="1.5"></line>"##, y + 1.0, y + 5.0 + BAR_H);
    }
    let (w, y3) = (total * scale, y + 3.0);
    let _ = writeln!(s, r##"<rect x="{BAR_X}" y="{y3}" width="{w:.1}" height="{BAR_H}" fill="none" stroke="#666" stroke-width="0.5"></rect>"##);
    // Anchored at the bar's end, but never so far left that it spills out of the column.
    let (x, y) = ((BAR_X + w).max(BAR_X + 50.0), y + 26.0);
    let _ = writeln!(s, r##"<text x="{x:.1}" y="{y}" font-size="10" text-anchor="end" fill="#333">{}</text>"##, dur(total));
}

fn legend(y: f64, s: &mut String) {
    let mut x = LABEL_X;
    for (kind, fill) in KINDS.iter().copied().chain([("other", OTHER)]) {
        let _ = writeln!(s, r#"<rect x="{x:.1}" y="{}" width="12" height="12" fill="{fill}"></rect>"#, y - 10.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{y}" font-size="11">{}</text>"#, x + 16.0, escape(kind));
        x += 16.0 + kind.len() as f64 * 6.5 + 18.0;
    }
}

fn colour(kind: &str) -> &'static str {
    KINDS.iter().find(|(k, _)| kind.starts_with(k)).map_or(OTHER, |&(_, c)| c)
}

/// Negative, NaN or infinite means would break the scale; they count as nothing.
fn clean(us: f64) -> f64 {
    if us.is_finite() && us > 0.0 {
        us
    } else {
        0.0
    }
}

/// A mean or percentile; the cut-offs sit at rounding edges so 999.7 us reads "1.0 ms".
fn dur(us: f64) -> String {
    let us = clean(us);
    if us < 999.5 {
        format!("{us:.0} us")
    } else if us < 99_950.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us < 999_500.0 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A bucket's lower bound, rounded down: 1024 us is "1ms", 1048576 us "1s".
fn tick(us: u64) -> String {
    match us {
        0 => "0".into(),
        1..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{}ms", us / 1_000),
        _ => format!("{}s", us / 1_000_000),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, lat_us: &[(u64, u64)], parts: &[(&str, f64)]) -> GroupRow {
        let mut hist = Log2Histogram::default();
        for &(us, n) in lat_us {
            hist.add(us, n);
        }
        GroupRow {
            label: label.into(),
            count: hist.total(),
            p50_us: 1_500.0,
            p99_us: 50_300.0,
            max_us: 2_500_000.0,
            hist,
            parts: parts.iter().map(|&(n, us)| (n.to_string(), us)).collect(),
        }
    }

    /// Renders and checks well-formedness (quick-xml matches end tags to start tags).
    fn render(rows: &[GroupRow]) -> String {
        let opts = RowsSvgOptions { title: "latency <by location>".into(), subtitle: "nginx pid 42".into() };
        let mut out = Vec::new();
        write_rows_svg(rows, &opts, &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        let mut r = quick_xml::Reader::from_str(&svg);
        while !matches!(r.read_event().expect("well-formed XML"), quick_xml::events::Event::Eof) {}
        assert!(svg.starts_with("<?xml") && svg.contains("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        svg
    }

    fn sample() -> Vec<GroupRow> {
        vec![
            row(
                "/slow/upstream",
                &[(40_000, 90), (1_500, 10)],
                &[("access: waiting (yielded)", 150.0), ("content: on-CPU in Lua", 500.0), ("content: waiting on upstream", 49_800.0)],
            ),
            row("/health", &[(3, 500), (1_100, 1)], &[("content: on-CPU in C", 20.0), ("read: waiting behind other requests", 5.0)]),
            row("/a<b>&c", &[(100, 1)], &[("log: something new", f64::NAN)]),
        ]
    }

    #[test]
    fn rows_labels_tooltips_and_escaping() {
        let svg = render(&sample());
        for l in ["/slow/upstream", "/health", "/a&lt;b&gt;&amp;c"] {
            assert!(svg.contains(&format!(">{l}</text>")), "{l}: {svg}");
        }
        assert!(!svg.contains("/a<b") && svg.contains("latency &lt;by location&gt;"));
        assert!(svg.contains("content: waiting on upstream: 49.8 ms (98.7%)"), "{svg}");
        assert!(svg.contains("read: waiting behind other requests: 5 us (20.0%)"));
        assert!(svg.contains("n=100 p50 1.5 ms p99 50.3 ms") && svg.contains("max 2.50 s"));
        // 2us..64ms is buckets 2..=16 for every row; 32768-65535 holds 90 of 100.
        assert_eq!(svg.matches(" requests (").count() + svg.matches(" request (").count(), 3 * 15);
        assert!(svg.contains("32768-65535 us: 90 requests (90.0%)"));
        assert!(svg.contains("1024-2047 us: 1 request (0.2%)"));
        assert!(svg.contains(">2us</text>") && svg.contains(">50.5 ms</text>"));
        assert!(svg.contains("fill=\"#1f77b4\"") && svg.contains("fill=\"#d62728\""));
    }

    #[test]
    fn largest_total_fills_the_bar() {
        let svg = render(&sample());
        // /slow/upstream's 50450 us is the largest total: its outline spans the bar.
        assert_eq!(svg.matches(&format!(r#"width="{BAR_W:.1}" height="{BAR_H}" fill="none""#)).count(), 1, "{svg}");
        let alone = render(&[row("/x", &[(5, 1)], &[("content: blocked", 7.0)]), row("/y", &[], &[("content: preempted", 3.5)])]);
        assert!(alone.contains(&format!(r#"width="{BAR_W:.1}" height="{BAR_H}" fill="{}""#, colour("blocked"))), "{alone}");
        assert!(alone.contains(&format!(r#"width="{:.1}" height="{BAR_H}" fill="{}""#, BAR_W / 2.0, colour("preempted"))));
    }

    #[test]
    fn zero_rows_and_long_labels() {
        let svg = render(&[]);
        assert!(svg.contains(">no requests</text>"));
        let long = "/".to_string() + &"x".repeat(60);
        let svg = render(&[row(&long, &[], &[])]);
        assert!(svg.contains(&format!("<title>{long}\n")), "full label in the tooltip");
        assert!(svg.contains(&format!(">/{}…</text>", "x".repeat(LABEL_CHARS - 2))));
    }

    #[test]
    fn human_units() {
        assert_eq!(dur(123.0), "123 us");
        assert_eq!(dur(999.7), "1.0 ms");
        assert_eq!(dur(12_345.0), "12.3 ms");
        assert_eq!(dur(250_000.0), "250 ms");
        assert_eq!(dur(1_234_000.0), "1.23 s");
        assert_eq!(dur(-5.0), "0 us");
        assert_eq!([tick(1), tick(1_024), tick(32_768), tick(1_048_576)], ["1us", "1ms", "32ms", "1s"]);
        assert_eq!(colour("waiting (yielded)"), "#9ecae1");
        assert_eq!(colour("dreaming"), OTHER);
    }
}
