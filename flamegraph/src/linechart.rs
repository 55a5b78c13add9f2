//! Line charts over time as plain SVG text: lines on a left and an optional
//! right axis, an optional min-max band around a line, vertical tick marks for
//! events (e.g. finished GC cycles), and a hover text per point in time.
//! `ljprobe gc` draws the heap over a run with it.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

/// Which y axis a series is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

pub struct Series {
    /// For the legend.
    pub name: String,
    pub color: String,
    pub side: Side,
    /// (x, y) in axis units, x ascending.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high): drawn as a light band behind the line.
    pub band: Vec<(f64, f64, f64)>,
    /// Thin and dashed: a reference line rather than a measurement.
    pub faint: bool,
}

pub struct LineChart {
    pub title: String,
    pub subtitle: String,
    pub x_label: String,
    pub left_label: String,
    /// Without a right-side series the right axis is not drawn.
    pub right_label: String,
    pub series: Vec<Series>,
    /// x positions of events, drawn as short ticks along the bottom edge.
    pub marks: Vec<f64>,
    pub marks_name: String,
    /// (x, text): hovering the chart near x shows the text.
    pub tips: Vec<(f64, String)>,
}

const W: f64 = 1000.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = W - 80.0;
const TOP: f64 = 100.0;
const BOTTOM: f64 = H - 60.0;
const MARK: &str = "#c0392b";

impl LineChart {
    pub fn write_svg(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self.svg().as_bytes())
    }

    // Writing into a String cannot fail: the `fmt::Write` results are ignored
    // and `write_svg`'s one io write carries the only real error.
    pub fn svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#);
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Verdana, sans-serif">"#
        );
        let _ = writeln!(s, r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"></rect>"#);
        let _ = writeln!(s, r#"<text x="{}" y="28" font-size="18" text-anchor="middle">{}</text>"#, W / 2.0, escape(&self.title));
        let _ = writeln!(
            s,
            r##"<text x="{}" y="50" font-size="13" text-anchor="middle" fill="#555">{}</text>"##,
            W / 2.0,
            escape(&self.subtitle)
        );
        self.legend(&mut s);
        let xs = self.series.iter().flat_map(|l| l.points.iter().map(|p| p.0)).chain(self.marks.iter().copied());
        let (x0, x1) = bounds(xs);
        if x1 <= x0 && self.series.iter().all(|l| l.points.is_empty()) {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" font-size="16" text-anchor="middle" fill="#777">nothing was recorded</text>"##,
                (LEFT + RIGHT) / 2.0,
                (TOP + BOTTOM) / 2.0
            );
            let _ = writeln!(s, "</svg>");
            return s;
        }
        let x = Scale::new(0.0f64.min(x0), x1, LEFT, RIGHT);
        let left = Scale::new(0.0, self.max_of(Side::Left), BOTTOM, TOP).rounded();
        let right = self
            .series
            .iter()
            .any(|l| l.side == Side::Right)
            .then(|| Scale::new(0.0, self.max_of(Side::Right), BOTTOM, TOP).rounded());
        axes(&mut s, &x, &left, right.as_ref(), self);
        for (i, (tx, text)) in self.tips.iter().enumerate() {
            // Each tip owns the strip halfway to its neighbours.
            let lo = if i == 0 { x.lo } else { (self.tips[i - 1].0 + tx) / 2.0 };
            let hi = self.tips.get(i + 1).map_or(x.hi, |n| (n.0 + tx) / 2.0);
            let (a, b) = (x.at(lo), x.at(hi));
            let _ = writeln!(
                s,
                r#"<g><title>{}</title><rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{}" fill="black" fill-opacity="0"></rect></g>"#,
                escape(text),
                (b - a).max(0.5),
                BOTTOM - TOP
            );
        }
        for l in &self.series {
            let y = if l.side == Side::Left { &left } else { right.as_ref().unwrap_or(&left) };
            if !l.band.is_empty() {
                let _ = writeln!(
                    s,
                    r#"<polygon points="{}" fill="{}" fill-opacity="0.18" stroke="none"></polygon>"#,
                    path(band_outline(&l.band).into_iter().map(|(px, py)| (x.at(px.max(x.lo)), y.at(py)))),
                    l.color
                );
            }
            let dash = if l.faint { r#" stroke-dasharray="6 4" stroke-opacity="0.6""# } else { "" };
            // The left axis carries the main measure: right-axis lines are thinner.
            let width = match (l.faint, l.side) {
                (true, _) => 1.2,
                (false, Side::Right) => 1.4,
                (false, Side::Left) => 2.0,
            };
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}"{dash}></polyline>"#,
                path(l.points.iter().map(|&(px, py)| (x.at(px), y.at(py)))),
                l.color
            );
        }
        // One tick per pixel column: thousands of events in a long run
        // would otherwise make thousands of identical lines.
        let mut columns: Vec<i64> = self.marks.iter().map(|&m| x.at(m).round() as i64).collect();
        columns.dedup();
        for mx in columns {
            let _ = writeln!(
                s,
                r#"<line x1="{mx}" y1="{BOTTOM}" x2="{mx}" y2="{}" stroke="{MARK}" stroke-width="1.5"></line>"#,
                BOTTOM - 14.0
            );
        }
        let _ = writeln!(s, "</svg>");
        s
    }

    fn max_of(&self, side: Side) -> f64 {
        let on_side = self.series.iter().filter(|l| l.side == side);
        let ys = on_side.flat_map(|l| l.points.iter().map(|p| p.1).chain(l.band.iter().map(|b| b.2)));
        bounds(ys).1
    }

    fn legend(&self, s: &mut String) {
        let mut x = LEFT;
        let y = 76.0;
        for l in &self.series {
            let dash = if l.faint { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"{dash}></line>"#,
                x + 24.0,
                l.color
            );
            let _ = writeln!(s, r#"<text x="{}" y="{}" font-size="12">{}</text>"#, x + 30.0, y + 4.0, escape(&l.name));
            x += 42.0 + 7.0 * l.name.chars().count() as f64;
        }
        if !self.marks_name.is_empty() {
            let _ = writeln!(s, r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{MARK}"></line>"#, y - 6.0, y + 6.0);
            let _ = writeln!(s, r#"<text x="{}" y="{}" font-size="12">{}</text>"#, x + 8.0, y + 4.0, escape(&self.marks_name));
        }
    }
}

/// A linear map from [lo, hi] in data units to [from, to] in pixels.
struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn new(lo: f64, hi: f64, from: f64, to: f64) -> Scale {
        // A flat or empty range still gets an axis.
        let hi = if hi > lo { hi } else { lo + 1.0 };
        Scale { lo, hi, from, to }
    }

    fn at(&self, v: f64) -> f64 {
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }

    /// The smallest 1, 2 or 5 times a power of ten that splits the range
    /// into at most six steps.
    fn step(&self) -> f64 {
        let span = self.hi - self.lo;
        let raw = span / 6.0;
        let base = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0].iter().map(|k| k * base).find(|s| *s >= raw).unwrap_or(span)
    }

    /// The top raised to the next tick, so the axis ends on a labelled value.
    fn rounded(self) -> Scale {
        let step = self.step();
        Scale { hi: (self.hi / step - 1e-9).ceil() * step, ..self }
    }

    /// Round tick values, `step` apart.
    fn ticks(&self) -> Vec<f64> {
        let step = self.step();
        let first = (self.lo / step).ceil() * step;
        (0..=10).map(|i| first + i as f64 * step).take_while(|v| *v <= self.hi + step * 1e-9).collect()
    }
}

fn axes(s: &mut String, x: &Scale, left: &Scale, right: Option<&Scale>, c: &LineChart) {
    for v in left.ticks() {
        let y = left.at(v);
        let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e4e4e4"></line>"##);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#, LEFT - 6.0, y + 4.0, num(v));
    }
    if let Some(r) = right {
        for v in r.ticks() {
            let _ = writeln!(s, r#"<text x="{}" y="{:.1}" font-size="11">{}</text>"#, RIGHT + 6.0, r.at(v) + 4.0, num(v));
        }
        let _ = writeln!(s, r##"<line x1="{RIGHT}" y1="{TOP}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333"></line>"##);
        let mid = (TOP + BOTTOM) / 2.0;
        let rx = W - 16.0;
        let _ = writeln!(
            s,
            r#"<text x="{rx}" y="{mid}" font-size="12" text-anchor="middle" transform="rotate(90 {rx} {mid})">{}</text>"#,
            escape(&c.right_label)
        );
    }
    for v in x.ticks() {
        let px = x.at(v);
        let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{BOTTOM}" x2="{px:.1}" y2="{}" stroke="#333"></line>"##, BOTTOM + 4.0);
        let _ = writeln!(s, r#"<text x="{px:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#, BOTTOM + 17.0, num(v));
    }
    let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333"></line>"##);
    let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="#333"></line>"##);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        H - 16.0,
        escape(&c.x_label)
    );
    let mid = (TOP + BOTTOM) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="20" y="{mid}" font-size="12" text-anchor="middle" transform="rotate(-90 20 {mid})">{}</text>"#,
        escape(&c.left_label)
    );
}

/// A band as steps: each (x, low, high) covers the stretch from the previous
/// x (for the first, as far back as the next one is ahead) up to its own x,
/// since a point sums up the interval that ends there.
fn band_outline(band: &[(f64, f64, f64)]) -> Vec<(f64, f64)> {
    let first_width = match band {
        [a, b, ..] => b.0 - a.0,
        _ => 0.0,
    };
    let starts: Vec<f64> =
        band.iter().enumerate().map(|(i, b)| if i == 0 { b.0 - first_width } else { band[i - 1].0 }).collect();
    let upper = band.iter().zip(&starts).flat_map(|(b, &x0)| [(x0, b.2), (b.0, b.2)]);
    let lower: Vec<(f64, f64)> = band.iter().zip(&starts).flat_map(|(b, &x0)| [(x0, b.1), (b.0, b.1)]).collect();
    upper.chain(lower.into_iter().rev()).collect()
}

/// The (min, max) of finite values; (0, 0) without any.
fn bounds(vs: impl Iterator<Item = f64>) -> (f64, f64) {
    vs.filter(|v| v.is_finite()).fold(None, |acc: Option<(f64, f64)>, v| Some(acc.map_or((v, v), |(a, b)| (a.min(v), b.max(v)))))
        .unwrap_or((0.0, 0.0))
}

fn path(points: impl Iterator<Item = (f64, f64)>) -> String {
    let mut p = String::new();
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        let _ = write!(p, "{}{x:.1},{y:.1}", if p.is_empty() { "" } else { " " });
    }
    p
}

/// A tick label without float noise: 0.30000000000000004 is "0.3".
fn num(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> LineChart {
        LineChart {
            title: "heap <&> over time".into(),
            subtitle: "PID 42".into(),
            x_label: "seconds".into(),
            left_label: "MB".into(),
            right_label: "MB/s".into(),
            series: vec![
                Series {
                    name: "heap".into(),
                    color: "#4e79a7".into(),
                    side: Side::Left,
                    points: vec![(0.1, 8.0), (0.2, 24.0), (0.3, 2.0)],
                    band: vec![(0.1, 7.5, 8.5), (0.2, 20.0, 25.0), (0.3, 1.0, 3.0)],
                    faint: false,
                },
                Series {
                    name: "threshold".into(),
                    color: "#4e79a7".into(),
                    side: Side::Left,
                    points: vec![(0.1, 16.0), (0.2, 48.0), (0.3, 4.0)],
                    band: vec![],
                    faint: true,
                },
                Series {
                    name: "allocation rate".into(),
                    color: "#f28e2b".into(),
                    side: Side::Right,
                    points: vec![(0.1, 80.0), (0.2, 160.0), (0.3, 0.0)],
                    band: vec![],
                    faint: false,
                },
            ],
            marks: vec![0.25],
            marks_name: "GC cycle finished (1)".into(),
            tips: vec![(0.1, "t=0.1s".into()), (0.2, "t=0.2s".into()), (0.3, "t=0.3s".into())],
        }
    }

    /// Every element, parsed by a real XML reader: names of the start tags,
    /// and the `points` attributes of the polylines.
    fn parse(svg: &str) -> (Vec<String>, Vec<String>) {
        use quick_xml::{events::Event, Reader};
        let mut r = Reader::from_str(svg);
        let (mut tags, mut lines) = (Vec::new(), Vec::new());
        loop {
            match r.read_event().expect("the SVG is well-formed XML") {
                Event::Start(e) | Event::Empty(e) => {
                    let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                    if name == "polyline" {
                        let pts = e.try_get_attribute("points").unwrap().expect("points");
                        lines.push(String::from_utf8(pts.value.to_vec()).unwrap());
                    }
                    tags.push(name);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        (tags, lines)
    }

    #[test]
    fn parses_as_xml_and_holds_every_point() {
        let svg = chart().svg();
        let (tags, lines) = parse(&svg);
        assert_eq!(tags[0], "svg");
        assert_eq!(lines.len(), 3, "{svg}");
        for l in &lines {
            assert_eq!(l.split(' ').count(), 3, "{l}");
        }
        // The left axis goes up to 50 (the threshold's 48, rounded to a tick).
        let y_of_24 = BOTTOM - 24.0 / 50.0 * (BOTTOM - TOP);
        assert!(lines[0].contains(&format!(",{y_of_24:.1}")), "{}", lines[0]);
        assert!(svg.contains("heap &lt;&amp;&gt; over time"));
        assert!(svg.contains("GC cycle finished (1)"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert_eq!(tags.iter().filter(|t| *t == "polygon").count(), 1);
        assert!(svg.contains(">MB/s</text>"));
    }

    #[test]
    fn empty_and_flat_charts_still_parse() {
        let mut c = chart();
        for l in &mut c.series {
            l.points.clear();
            l.band.clear();
        }
        c.marks.clear();
        c.tips.clear();
        let svg = c.svg();
        parse(&svg);
        assert!(svg.contains("nothing was recorded"));

        let mut c = chart();
        c.series.truncate(1);
        c.series[0].points = vec![(0.0, 0.0)];
        c.series[0].band.clear();
        let svg = c.svg();
        let (_, lines) = parse(&svg);
        assert_eq!(lines.len(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(!svg.contains(">MB/s</text>"), "no right axis without a right-side series");
    }

    #[test]
    fn bands_are_steps_over_their_intervals() {
        let outline = band_outline(&[(1.0, 2.0, 3.0), (2.0, 4.0, 5.0)]);
        assert_eq!(outline, vec![(0.0, 3.0), (1.0, 3.0), (1.0, 5.0), (2.0, 5.0), (2.0, 4.0), (1.0, 4.0), (1.0, 2.0), (0.0, 2.0)]);
        assert_eq!(band_outline(&[(1.0, 2.0, 3.0)]), vec![(1.0, 3.0), (1.0, 3.0), (1.0, 2.0), (1.0, 2.0)]);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(Scale::new(0.0, 10.0, 0.0, 1.0).ticks(), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(Scale::new(0.0, 5.2, 0.0, 1.0).ticks(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(Scale::new(0.0, 37.0, 0.0, 1.0).ticks(), vec![0.0, 10.0, 20.0, 30.0]);
        assert_eq!(Scale::new(0.0, 48.0, 0.0, 1.0).rounded().hi, 50.0);
        assert_eq!(Scale::new(0.0, 50.0, 0.0, 1.0).rounded().hi, 50.0);
        assert_eq!(num(0.1 + 0.2), "0.3");
        assert_eq!(num(20.0), "20");
    }
}
