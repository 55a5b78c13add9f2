//! Log2 histograms of durations, printed the way SystemTap's `@hist_log` did (so
//! users of stapxx's `epoll-loop-blocking-distr` recognise them) or drawn as an SVG
//! bar chart.

use std::io::{self, Write};

pub const BUCKETS: usize = 64;

/// Counts of durations in microseconds, in log2 buckets:
///
/// - bucket 0 holds duration 0;
/// - bucket i (1..=63) holds durations d in [2^(i-1), 2^i) microseconds, i.e.
///   `i = 64 - d.leading_zeros()`;
/// - except that bucket 63 also takes everything from 2^63 up (which would be a
///   65th bucket), so its upper bound is `u64::MAX`.
///
/// The kernel side fills a BPF array with the same rule; [`Log2Histogram::from_counts`]
/// takes that array as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Histogram {
    counts: [u64; BUCKETS],
}

// By hand: std derives `Default` for arrays only up to 32 elements.
impl Default for Log2Histogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }
}

/// One bucket: durations in [lo_us, hi_us), bucket 0 being [0, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    pub lo_us: u64,
    pub hi_us: u64,
    pub count: u64,
}

pub struct HistogramSvgOptions {
    pub title: String,
    pub subtitle: String,
    /// bars whose lower bound is >= this are drawn in a warning colour
    pub mark_from_us: Option<u64>,
}

/// Width of the `@` bar in text output, as SystemTap's.
const TEXT_BAR: usize = 50;

impl Log2Histogram {
    /// Counts per bucket as the BPF map holds them. Entries beyond the 64th are
    /// added into bucket 63, the open-ended one, rather than dropped.
    pub fn from_counts(counts: &[u64]) -> Self {
        let mut h = Self::default();
        for (i, &n) in counts.iter().enumerate() {
            let i = i.min(BUCKETS - 1);
            h.counts[i] = h.counts[i].saturating_add(n);
        }
        h
    }

    pub fn bucket_of(us: u64) -> usize {
        if us == 0 {
            return 0;
        }
        (64 - us.leading_zeros() as usize).min(BUCKETS - 1)
    }

    /// (lo, hi) in µs, lo inclusive, hi exclusive. Indices past 63 are bucket 63,
    /// the same clamp [`Self::bucket_of`] applies.
    pub fn bounds(i: usize) -> (u64, u64) {
        match i {
            0 => (0, 1),
            1..=62 => (1 << (i - 1), 1 << i),
            _ => (1 << 62, u64::MAX),
        }
    }

    pub fn add(&mut self, us: u64, n: u64) {
        let i = Self::bucket_of(us);
        self.counts[i] = self.counts[i].saturating_add(n);
    }

    pub fn merge(&mut self, other: &Log2Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// The count of bucket `i` (0 past the last).
    pub fn count(&self, i: usize) -> u64 {
        self.counts.get(i).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |t, &n| t.saturating_add(n))
    }

    /// Sum of the buckets whose lower bound is >= `us`. Whole buckets only, so a
    /// threshold inside a bucket leaves that bucket out: an undercount, never an
    /// overcount.
    pub fn count_at_least(&self, us: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(i, _)| Self::bounds(i).0 >= us)
            .fold(0, |t, (_, &n)| t.saturating_add(n))
    }

    /// From the first to the last non-empty bucket, inclusive, so gaps show as zeros.
    pub fn buckets(&self) -> Vec<Bucket> {
        match self.non_empty_range() {
            Some((first, last)) => (first..=last).map(|i| self.bucket(i)).collect(),
            None => Vec::new(),
        }
    }

    /// The bucket with the largest count, the first one on ties.
    pub fn fullest(&self) -> Option<Bucket> {
        let mut best: Option<usize> = None;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && best.is_none_or(|b| n > self.counts[b]) {
                best = Some(i);
            }
        }
        best.map(|i| self.bucket(i))
    }

    /// SystemTap `@hist_log` layout: the non-empty range plus one empty bucket
    /// either side when there is one.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        let Some((first, last)) = self.non_empty_range() else {
            return writeln!(out, "(no iterations recorded)");
        };
        let rows: Vec<Bucket> = (first.saturating_sub(1)..=(last + 1).min(BUCKETS - 1))
            .map(|i| self.bucket(i))
            .collect();
        let max = rows.iter().map(|b| b.count).max().unwrap_or(0);
        let width = rows
            .iter()
            .map(|b| b.lo_us.to_string().len())
            .max()
            .unwrap_or(0)
            .max("value".len());
        writeln!(out, "{:>width$} |{} count", "value", "-".repeat(TEXT_BAR))?;
        for b in rows {
            let bar = "@".repeat(bar_len(b.count, max, TEXT_BAR));
            writeln!(out, "{:>width$} |{bar:<TEXT_BAR$} {}", b.lo_us, b.count)?;
        }
        Ok(())
    }

    /// A standalone SVG bar chart, one bar per bucket of [`Self::buckets`], each with
    /// a `<title>` tooltip giving its exact range and share.
    pub fn write_svg(&self, opts: &HistogramSvgOptions, out: &mut impl Write) -> io::Result<()> {
        let mut s = String::new();
        svg(self, opts, &mut s);
        out.write_all(s.as_bytes())
    }

    fn bucket(&self, i: usize) -> Bucket {
        let (lo_us, hi_us) = Self::bounds(i);
        Bucket {
            lo_us,
            hi_us,
            count: self.counts[i],
        }
    }

    fn non_empty_range(&self) -> Option<(usize, usize)> {
        let first = self.counts.iter().position(|&n| n > 0)?;
        let last = self.counts.iter().rposition(|&n| n > 0)?;
        Some((first, last))
    }
}

/// Bar length out of `full`, the largest count filling it. Rounded up, so a
/// non-zero count always shows.
fn bar_len(count: u64, max: u64, full: usize) -> usize {
    if count == 0 || max == 0 {
        return 0;
    }
    // u128: count * full would overflow u64 for huge counts.
    let len = (count as u128 * full as u128).div_ceil(max as u128);
    len.min(full as u128) as usize
}

/// A lower bound in the unit a reader thinks in. Rounded down, never up, because it
/// is a lower bound: 32768 µs is "32ms", not "33ms".
fn human(us: u64) -> String {
    match us {
        0 => "0".into(),
        1..=999 => format!("{us}us"),
        1_000..=9_999 => format!("{}.{}ms", us / 1_000, us / 100 % 10),
        10_000..=999_999 => format!("{}ms", us / 1_000),
        _ => format!("{}.{}s", us / 1_000_000, us / 100_000 % 10),
    }
}

fn escape(s: &str) -> String {
    let mut e = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => e.push_str("&amp;"),
            '<' => e.push_str("&lt;"),
            '>' => e.push_str("&gt;"),
            '"' => e.push_str("&quot;"),
            '\'' => e.push_str("&apos;"),
            _ => e.push(c),
        }
    }
    e
}

/// Tooltip text; bucket 63 has no meaningful last value, so it reads "and above".
fn tooltip(b: &Bucket, total: u64) -> String {
    let range = if b.hi_us == u64::MAX {
        format!("{} us and above", b.lo_us)
    } else {
        format!("{}-{} us", b.lo_us, b.hi_us - 1)
    };
    let noun = if b.count == 1 {
        "iteration"
    } else {
        "iterations"
    };
    let pct = if total == 0 {
        0.0
    } else {
        b.count as f64 * 100.0 / total as f64
    };
    format!("{range}: {} {noun} ({pct:.1}%)", b.count)
}

/// The smallest 1, 2 or 5 times a power of ten that splits `max` into at most
/// four steps, so the y axis gets round tick values.
fn tick_step(max: u64) -> u64 {
    let target = max.div_ceil(4).max(1);
    let mut base: u64 = 1;
    loop {
        for k in [1, 2, 5] {
            match base.checked_mul(k) {
                Some(step) if step >= target => return step,
                Some(_) => {}
                None => return target,
            }
        }
        match base.checked_mul(10) {
            Some(b) => base = b,
            None => return target,
        }
    }
}

const W: f64 = 1000.0;
const H: f64 = 520.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = W - 20.0;
const TOP: f64 = 92.0;
const BOTTOM: f64 = H - 90.0;
const CALM: &str = "#4e79a7";
const WARN: &str = "#e8590c";
/// Rough width of a character at the 11px labels use, to decide when labels fit.
const CHAR_W: f64 = 6.5;

// Writing into a String cannot fail, so the `fmt::Write` results are ignored here
// and the single io write in `write_svg` carries the only real error.
fn svg(h: &Log2Histogram, opts: &HistogramSvgOptions, s: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#
    );
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Verdana, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"></rect>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" font-size="18" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(&opts.title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="52" font-size="13" text-anchor="middle" fill="#555">{}</text>"##,
        W / 2.0,
        escape(&opts.subtitle)
    );
    if let Some(mark) = opts.mark_from_us {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="72" font-size="12" text-anchor="middle" fill="{WARN}">orange: at or above {}</text>"#,
            W / 2.0,
            escape(&human(mark))
        );
    }
    let mid_y = (TOP + BOTTOM) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">iteration time (log2 buckets, lower bound)</text>"#,
        (LEFT + RIGHT) / 2.0,
        H - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{mid_y}" font-size="12" text-anchor="middle" transform="rotate(-90 20 {mid_y})">iterations</text>"#
    );

    let buckets = h.buckets();
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    if max == 0 {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{mid_y}" font-size="16" text-anchor="middle" fill="#777">no iterations recorded</text>"##,
            (LEFT + RIGHT) / 2.0
        );
        let _ = writeln!(s, "</svg>");
        return;
    }
    let total = h.total();
    let slot = (RIGHT - LEFT) / buckets.len() as f64;
    let count_chars = max.to_string().len() as f64;
    // Counts wider than their slot stand on end instead of overlapping; the tallest
    // bar then leaves room for one above it.
    let upright = count_chars * CHAR_W + 4.0 > slot;
    let headroom = if upright {
        count_chars * CHAR_W + 10.0
    } else {
        18.0
    };
    let bar_h = BOTTOM - TOP - headroom;
    let y_of = |v: u64| BOTTOM - v as f64 / max as f64 * bar_h;

    let step = tick_step(max);
    let mut v = 0;
    loop {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e4e4e4"></line>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{v}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
        match v.checked_add(step) {
            Some(n) if n <= max => v = n,
            _ => break,
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333"></line>"##
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="#333"></line>"##
    );

    let label_chars = buckets
        .iter()
        .map(|b| human(b.lo_us).len())
        .max()
        .unwrap_or(1) as f64;
    let slanted = label_chars * CHAR_W + 4.0 > slot;
    for (i, b) in buckets.iter().enumerate() {
        let x = LEFT + i as f64 * slot;
        let cx = x + slot / 2.0;
        // A count of 1 among millions would round to nothing; keep it visible.
        let height = if b.count > 0 {
            (BOTTOM - y_of(b.count)).max(1.0)
        } else {
            0.0
        };
        let top = BOTTOM - height;
        let fill = match opts.mark_from_us {
            Some(m) if b.lo_us >= m => WARN,
            _ => CALM,
        };
        // The tooltip belongs to the whole column, with an invisible rect filling it,
        // so a bar one pixel high (or none) can still be hovered.
        let _ = writeln!(s, "<g><title>{}</title>", tooltip(b, total));
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{TOP}" width="{slot:.1}" height="{}" fill="black" fill-opacity="0"></rect>"#,
            BOTTOM - TOP
        );
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}" fill="{fill}"></rect>"#,
            x + slot * 0.1,
            slot * 0.8
        );
        if upright {
            let y = top - 4.0;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{y:.1}" font-size="11" transform="rotate(-90 {:.1} {y:.1})">{}</text>"#,
                cx + 4.0,
                cx + 4.0,
                b.count
            );
        } else {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                top - 4.0,
                b.count
            );
        }
        let ly = BOTTOM + 16.0;
        if slanted {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{ly}" font-size="11" text-anchor="end" transform="rotate(-45 {cx:.1} {ly})">{}</text>"#,
                human(b.lo_us)
            );
        } else {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{ly}" font-size="11" text-anchor="middle">{}</text>"#,
                human(b.lo_us)
            );
        }
        let _ = writeln!(s, "</g>");
    }
    let _ = writeln!(s, "</svg>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_of_follows_the_documented_rule() {
        for (us, i) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (1023, 10),
            (1024, 11),
        ] {
            assert_eq!(Log2Histogram::bucket_of(us), i, "bucket_of({us})");
        }
        let i = Log2Histogram::bucket_of(20_000);
        assert_eq!(Log2Histogram::bounds(i), (16_384, 32_768));
        assert_eq!(Log2Histogram::bucket_of(u64::MAX), 63);
        assert_eq!(Log2Histogram::bucket_of(1 << 63), 63);
    }

    #[test]
    fn bounds_round_trip() {
        assert_eq!(Log2Histogram::bounds(0), (0, 1));
        for i in 1..63 {
            let (lo, hi) = Log2Histogram::bounds(i);
            assert_eq!(Log2Histogram::bucket_of(lo), i);
            assert_eq!(Log2Histogram::bucket_of(hi - 1), i);
        }
        assert_eq!(Log2Histogram::bounds(63), (1 << 62, u64::MAX));
        assert_eq!(Log2Histogram::bounds(1000), Log2Histogram::bounds(63));
    }

    #[test]
    fn from_counts_folds_extra_entries_into_the_last_bucket() {
        let mut counts = vec![0u64; 70];
        counts[3] = 2;
        counts[63] = 1;
        counts[64] = 4;
        counts[69] = u64::MAX;
        let h = Log2Histogram::from_counts(&counts);
        assert_eq!(h.counts[3], 2);
        assert_eq!(h.counts[63], u64::MAX, "saturates instead of overflowing");
        let short = Log2Histogram::from_counts(&[5, 6]);
        assert_eq!(short.total(), 11);
        assert_eq!(Log2Histogram::from_counts(&[]), Log2Histogram::default());
    }

    #[test]
    fn buckets_trim_and_fullest_takes_the_first_tie() {
        assert!(Log2Histogram::default().buckets().is_empty());
        assert_eq!(Log2Histogram::default().fullest(), None);
        let mut h = Log2Histogram::default();
        h.add(3, 5);
        h.add(20_000, 5);
        let b = h.buckets();
        assert_eq!(b.len(), 15 - 2 + 1);
        assert_eq!(
            b[0],
            Bucket {
                lo_us: 2,
                hi_us: 4,
                count: 5
            }
        );
        assert_eq!(b[1].count, 0);
        assert_eq!(b.last().unwrap().lo_us, 16_384);
        assert_eq!(h.fullest(), Some(b[0]));
        let mut other = Log2Histogram::default();
        other.add(0, 1);
        h.merge(&other);
        assert_eq!(h.total(), 11);
        assert_eq!(
            h.buckets()[0],
            Bucket {
                lo_us: 0,
                hi_us: 1,
                count: 1
            }
        );
    }

    #[test]
    fn count_at_least_counts_whole_buckets() {
        let mut h = Log2Histogram::default();
        h.add(5, 1);
        h.add(10_000, 2);
        h.add(20_000, 3);
        h.add(40_000, 4);
        assert_eq!(h.count_at_least(0), 10);
        assert_eq!(h.count_at_least(8_192), 9);
        // 10ms falls inside [8192, 16384): that bucket is left out.
        assert_eq!(h.count_at_least(10_000), 7);
        assert_eq!(h.count_at_least(16_384), 7);
        assert_eq!(h.count_at_least(u64::MAX), 0);
    }

    fn text(h: &Log2Histogram) -> String {
        let mut out = Vec::new();
        h.write_text(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_lines_up_and_scales() {
        let mut h = Log2Histogram::default();
        h.add(10_000, 12);
        h.add(20_000, 140);
        h.add(9_000, 1);
        let t = text(&h);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert_eq!(lines[0], format!("value |{} count", "-".repeat(50)));
        assert_eq!(lines[1], format!(" 4096 |{} 0", " ".repeat(50)));
        assert_eq!(lines[2], format!(" 8192 |{:<50} 13", "@".repeat(5)));
        assert_eq!(lines[3], format!("16384 |{} 140", "@".repeat(50)));
        assert_eq!(lines[4], format!("32768 |{} 0", " ".repeat(50)));
        let bars: Vec<usize> = lines.iter().map(|l| l.find('|').unwrap()).collect();
        assert!(bars.iter().all(|&b| b == bars[0]), "{t}");

        let mut h = Log2Histogram::default();
        h.add(0, 1);
        h.add(1 << 40, 1_000_000);
        let t = text(&h);
        let lines: Vec<&str> = t.lines().collect();
        // No bucket before 0; the empty one after the last is shown.
        assert_eq!(lines[1], format!("{:>13} |@{} 1", 0, " ".repeat(49)), "{t}");
        let after = format!("{} |{} 0", 1u64 << 41, " ".repeat(50));
        assert_eq!(lines.last(), Some(&after.as_str()), "{t}");
        assert!(lines[0].starts_with(&format!("{:>13} |", "value")), "{t}");

        let mut h = Log2Histogram::default();
        h.add(u64::MAX, 1);
        let t = text(&h);
        assert_eq!(t.lines().count(), 3, "no bucket after 63: {t}");

        assert_eq!(
            text(&Log2Histogram::default()),
            "(no iterations recorded)\n"
        );
    }

    #[test]
    fn human_labels() {
        let cases = [
            (0, "0"),
            (1, "1us"),
            (512, "512us"),
            (1_024, "1.0ms"),
            (8_192, "8.1ms"),
            (10_000, "10ms"),
            (32_768, "32ms"),
            (1_048_576, "1.0s"),
            (4_194_304, "4.1s"),
        ];
        for (us, s) in cases {
            assert_eq!(human(us), s);
        }
    }

    fn svg_of(h: &Log2Histogram, title: &str, mark: Option<u64>) -> String {
        let opts = HistogramSvgOptions {
            title: title.into(),
            subtitle: "pid 42".into(),
            mark_from_us: mark,
        };
        let mut out = Vec::new();
        h.write_svg(&opts, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Every element opened is closed, in order: enough to catch a forgotten tag.
    fn assert_balanced(svg: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("unterminated tag");
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
            } else {
                stack.push(tag.split_whitespace().next().unwrap());
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    #[test]
    fn svg_has_tooltips_marks_and_escapes() {
        let mut h = Log2Histogram::default();
        h.add(10_000, 10);
        h.add(20_000, 140);
        let svg = svg_of(&h, "a<b & c>d", Some(10_000));
        assert!(
            svg.contains("16384-32767 us: 140 iterations (93.3%)"),
            "{svg}"
        );
        assert!(svg.contains("a&lt;b &amp; c&gt;d"));
        assert!(!svg.contains("a<b"));
        assert!(svg.contains("orange: at or above 10ms"));
        assert!(svg.contains("iteration time (log2 buckets, lower bound)"));
        assert!(svg.contains(">iterations</text>"));
        assert!(svg.contains(">16ms</text>") && svg.contains(">8.1ms</text>"));
        // 8192 is below the mark, 16384 above it.
        assert_eq!(svg.matches(&format!("fill=\"{WARN}\"></rect>")).count(), 1);
        assert_eq!(svg.matches(&format!("fill=\"{CALM}\"></rect>")).count(), 1);
        assert_eq!(svg.matches("<title>").count(), 2);
        assert_eq!(svg.matches("<rect").count(), svg.matches("</rect>").count());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_balanced(&svg);
    }

    #[test]
    fn svg_copes_with_empty_and_extreme_histograms() {
        let svg = svg_of(&Log2Histogram::default(), "t", None);
        assert!(svg.contains("no iterations recorded"));
        assert!(!svg.contains("orange:"));
        assert_balanced(&svg);

        let mut h = Log2Histogram::default();
        h.add(0, u64::MAX);
        h.add(u64::MAX, 1);
        let svg = svg_of(&h, "t", Some(0));
        assert_eq!(svg.matches("<title>").count(), 64);
        assert!(svg.contains("4611686018427387904 us and above: 1 iteration (0.0%)"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_balanced(&svg);
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(1), 1);
        assert_eq!(tick_step(140), 50);
        assert_eq!(tick_step(1_000), 500);
        assert!(tick_step(u64::MAX) >= u64::MAX / 4);
    }
}
