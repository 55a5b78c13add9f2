//! `index.html` of `ljprobe report`: one self-contained page (no network, no
//! other file needed) with the findings first, a table of contents, and per
//! section its summary lines, tables, graphs and links to the files beside it.
//!
//! Each graph lives in its own `<iframe srcdoc>`: inferno's flame graphs carry
//! their own script and fixed element ids ("frames", "details", "search", ...),
//! so two of them in one document would collide, and their script expects to
//! own its document. A srcdoc document shares the page's origin, which lets
//! the page's check script look inside each graph.

use std::{collections::HashSet, fmt::Write as _};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub title: String,
    pub subtitle: String,
    pub findings: Vec<Finding>,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// One sentence.
    pub text: String,
    /// The numbers behind it.
    pub evidence: String,
    /// The `id` of the section it points to.
    pub section: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    High,
    Medium,
    Info,
}

impl Severity {
    fn class(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub lines: Vec<String>,
    pub tables: Vec<Table>,
    pub graphs: Vec<Graph>,
    /// (label, path relative to index.html).
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub title: String,
    /// The whole SVG document.
    pub svg: String,
}

pub fn render(page: &Page) -> String {
    let ids = SectionIds::new(&page.sections);
    let graphs: usize = page.sections.iter().map(|s| s.graphs.len()).sum();
    let svg_bytes: usize = page.sections.iter().flat_map(|s| &s.graphs).map(|g| g.svg.len()).sum();
    let mut h = String::with_capacity(64 * 1024 + svg_bytes * 11 / 10);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body data-graphs=\"{graphs}\">\n",
        esc(&page.title)
    );
    let _ = write!(h, "<header>\n<h1>{}</h1>\n", esc(&page.title));
    if !page.subtitle.is_empty() {
        let _ = writeln!(h, "<p class=\"subtitle\">{}</p>", esc(&page.subtitle));
    }
    h.push_str("</header>\n<main>\n<p id=\"render-note\" class=\"render-note\" hidden></p>\n");
    findings(&mut h, page, &ids);
    contents(&mut h, page, &ids);
    for (i, s) in page.sections.iter().enumerate() {
        section(&mut h, s, &ids.html[i]);
    }
    let _ = write!(
        h,
        "</main>\n<footer>Written by <code>ljprobe report</code>. This page needs no network and no other file; \
         the links above open the raw outputs written beside it.</footer>\n<script>{CHECK_SCRIPT}</script>\n</body>\n</html>\n"
    );
    h
}

fn findings(h: &mut String, page: &Page, ids: &SectionIds) {
    h.push_str("<section id=\"findings\" class=\"findings\">\n<h2>Findings</h2>\n");
    if page.findings.is_empty() {
        h.push_str("<p class=\"none\">Nothing stood out.</p>\n</section>\n");
        return;
    }
    h.push_str("<ul>\n");
    // What matters most first; the caller's order within a severity stays.
    let mut sorted: Vec<&Finding> = page.findings.iter().collect();
    sorted.sort_by_key(|f| f.severity);
    for f in sorted {
        let class = f.severity.class();
        let _ = write!(h, "<li class=\"finding {class}\"><span class=\"badge\">{class}</span> <span class=\"text\">{}</span>", prose(&f.text));
        if let Some(target) = ids.lookup(&f.section) {
            let title = &page.sections[target].title;
            let _ = write!(h, " <a class=\"to\" href=\"#{}\">{} &rarr;</a>", ids.html[target], esc(title));
        }
        if !f.evidence.is_empty() {
            let _ = write!(h, "<div class=\"evidence\">{}</div>", prose(&f.evidence));
        }
        h.push_str("</li>\n");
    }
    h.push_str("</ul>\n</section>\n");
}

fn contents(h: &mut String, page: &Page, ids: &SectionIds) {
    if page.sections.is_empty() {
        return;
    }
    h.push_str("<nav class=\"toc\" aria-label=\"Contents\">\n<h2>Contents</h2>\n<ol>\n");
    for (i, s) in page.sections.iter().enumerate() {
        let n = s.graphs.len();
        let extra = match n {
            0 => String::new(),
            1 => " <span class=\"count\">1 graph</span>".into(),
            n => format!(" <span class=\"count\">{n} graphs</span>"),
        };
        let _ = writeln!(h, "<li><a href=\"#{}\">{}</a>{extra}</li>", ids.html[i], esc(&s.title));
    }
    h.push_str("</ol>\n</nav>\n");
}

fn section(h: &mut String, s: &Section, id: &str) {
    let _ = write!(h, "<section id=\"{id}\" class=\"part\">\n<h2>{}</h2>\n", esc(&s.title));
    if !s.lines.is_empty() {
        h.push_str("<div class=\"lines\">\n");
        for l in &s.lines {
            let _ = writeln!(h, "<p>{}</p>", prose(l));
        }
        h.push_str("</div>\n");
    }
    for t in &s.tables {
        table(h, t);
    }
    for (n, g) in s.graphs.iter().enumerate() {
        graph(h, g, &format!("{id}-graph-{}", n + 1));
    }
    if !s.files.is_empty() {
        h.push_str("<p class=\"files\">Files: ");
        for (n, (label, path)) in s.files.iter().enumerate() {
            let sep = if n == 0 { "" } else { " &middot; " };
            let _ = write!(h, "{sep}<a href=\"{}\">{}</a>", esc(&relative_href(path)), esc(label));
        }
        h.push_str("</p>\n");
    }
    h.push_str("</section>\n");
}

fn table(h: &mut String, t: &Table) {
    h.push_str("<div class=\"table-wrap\"><table>\n");
    if !t.caption.is_empty() {
        let _ = writeln!(h, "<caption>{}</caption>", esc(&t.caption));
    }
    if !t.headers.is_empty() {
        h.push_str("<thead><tr>");
        for c in &t.headers {
            let _ = write!(h, "<th>{}</th>", esc(c));
        }
        h.push_str("</tr></thead>\n");
    }
    h.push_str("<tbody>\n");
    for row in &t.rows {
        h.push_str("<tr>");
        for c in row {
            let class = if numeric(c) { " class=\"num\"" } else { "" };
            let _ = write!(h, "<td{class}>{}</td>", esc(c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table></div>\n");
}

fn graph(h: &mut String, g: &Graph, id: &str) {
    let root = root_at(&g.svg);
    let (w, ht) = root.map_or(DEFAULT_SIZE, |at| size(start_tag(&g.svg[at..])));
    // inferno's script takes the whole width and re-fits its labels (it drops
    // the width attribute), so its frame keeps the graph's own height; other
    // graphs scale with the page and keep their proportions.
    let flame = g.svg.contains("id=\"frames\"");
    let (kind, style, inner) = if flame {
        ("flame", format!("height:{}px", ht.ceil()), FLAME_INNER_CSS)
    } else {
        ("chart", format!("aspect-ratio:{} / {};max-width:{}px", num(w), num(ht), num(w)), CHART_INNER_CSS)
    };
    // The XML declaration and SVG doctype before the root would put the
    // frame's HTML document into quirks mode.
    let body = &g.svg[root.unwrap_or(0)..];
    let doc = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><script>{INNER_SCRIPT}</script><style>{inner}</style></head><body>{body}</body></html>"
    );
    let _ = write!(
        h,
        "<figure class=\"graph\" id=\"{id}\">\n<figcaption>{}</figcaption>\n\
         <iframe class=\"graph {kind}\" title=\"{}\" style=\"{style}\" srcdoc=\"{}\"></iframe>\n</figure>\n",
        esc(&g.title),
        esc(&g.title),
        esc(&doc)
    );
}

/// Used when a graph's root element states no usable size.
const DEFAULT_SIZE: (f64, f64) = (1200.0, 600.0);

/// Where the root element starts: the first `<svg` followed by a space or `>`.
fn root_at(svg: &str) -> Option<usize> {
    svg.match_indices("<svg")
        .map(|(at, _)| at)
        .find(|&at| svg[at + 4..].starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/'))
}

/// The start tag at the beginning of `s`, up to its `>`.
fn start_tag(s: &str) -> &str {
    s.find('>').map_or(s, |end| &s[..=end])
}

/// Width and height in pixels from the root tag: its width/height attributes
/// where they are absolute lengths, else its viewBox.
fn size(tag: &str) -> (f64, f64) {
    let view = attr(tag, "viewBox").and_then(|v| {
        let n: Vec<f64> = v.split(|c: char| c.is_ascii_whitespace() || c == ',').filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect();
        (n.len() == 4 && n[2] > 0.0 && n[3] > 0.0).then(|| (n[2], n[3]))
    });
    let length = |name| {
        let v = attr(tag, name)?.trim();
        let v = v.strip_suffix("px").unwrap_or(v);
        v.parse::<f64>().ok().filter(|n| n.is_finite() && *n > 0.0)
    };
    let w = length("width").or(view.map(|v| v.0)).unwrap_or(DEFAULT_SIZE.0);
    let h = length("height").or(view.map(|v| v.1)).unwrap_or(DEFAULT_SIZE.1);
    (w, h)
}

/// An attribute's value in a start tag (quoted with " or ').
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = tag[from..].find(name).map(|i| from + i) {
        from = at + name.len();
        // `width` must not match inside `stroke-width`.
        if !tag[..at].ends_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let rest = tag[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else { continue };
        let rest = rest.trim_start();
        let quote = rest.chars().next()?;
        if quote != '"' && quote != '\'' {
            continue;
        }
        return rest[1..].find(quote).map(|end| &rest[1..1 + end]);
    }
    None
}

/// The caller's paths are relative; a value with a scheme (`javascript:`) is
/// made a relative path rather than followed.
fn relative_href(path: &str) -> String {
    match path.find([':', '/']) {
        Some(i) if path.as_bytes()[i] == b':' => format!("./{path}"),
        _ => path.to_string(),
    }
}

/// Right-aligned in tables: 12, -3.5, 42%, 7 ms, 1.2 MB/s.
fn numeric(cell: &str) -> bool {
    let c = cell.trim();
    let digits = c.strip_prefix(['-', '+']).unwrap_or(c);
    digits.starts_with(|ch: char| ch.is_ascii_digit()) && c.len() <= 24 && {
        let num_end = digits.find(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == ',')).unwrap_or(digits.len());
        let unit = digits[num_end..].trim();
        unit.len() <= 6 && !unit.contains(char::is_whitespace)
    }
}

fn num(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Sentences (findings, evidence, summary lines): escaped, with `quoted`
/// names set as code, as the terminal output quotes them.
fn prose(s: &str) -> String {
    if !s.matches('`').count().is_multiple_of(2) {
        return esc(s);
    }
    let mut o = String::new();
    for (i, part) in s.split('`').enumerate() {
        match i % 2 {
            0 => o.push_str(&esc(part)),
            _ => {
                let _ = write!(o, "<code>{}</code>", esc(part));
            }
        }
    }
    o
}

/// For text and for double- or single-quoted attribute values, srcdoc included.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Section ids as written in the page: safe characters only, prefixed, and
/// unique even when the caller repeats one.
struct SectionIds {
    html: Vec<String>,
    given: Vec<String>,
}

impl SectionIds {
    fn new(sections: &[Section]) -> SectionIds {
        // "findings", "render-note" and the graph ids ("<id>-graph-<n>") are
        // the page's own: the prefix keeps section ids apart from them.
        let mut taken: HashSet<String> = HashSet::new();
        let mut html = Vec::new();
        for s in sections {
            let slug: String = s.id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
            // Graph ids are "<section id>-graph-<n>": with no "-graph-" in
            // section ids, none can equal another section's graph.
            let slug = slug.replace("-graph-", "-graph_-");
            let base = format!("s-{}", if slug.is_empty() { "section" } else { &slug });
            let mut id = base.clone();
            let mut n = 2;
            while taken.contains(&id) {
                id = format!("{base}-{n}");
                n += 1;
            }
            taken.insert(id.clone());
            html.push(id);
        }
        SectionIds { html, given: sections.iter().map(|s| s.id.clone()).collect() }
    }

    fn lookup(&self, given: &str) -> Option<usize> {
        self.given.iter().position(|g| g == given)
    }
}

/// Runs in each graph's document before the graph's own script.
/// inferno keeps its zoom and search state in the URL with
/// `history.replaceState(..., "?s=term")`, which a srcdoc document
/// (about:srcdoc) refuses with a SecurityError that stopped search half-way
/// (no "Matched" line, no way to reset it): the state just is not kept.
/// Errors are noted on the root element for the page's check.
const INNER_SCRIPT: &str = "window.addEventListener('error',function(e){var r=document.documentElement;\
r.setAttribute('data-error',(r.getAttribute('data-error')||'')+e.message+'\\n')});\
(function(){var replace=history.replaceState;history.replaceState=function(){\
try{return replace.apply(history,arguments)}catch(e){}}})();";

/// inferno drops the root's width and viewBox to fill the window: standalone
/// that means 100%, but inside HTML an SVG without either is 300 px wide.
const FLAME_INNER_CSS: &str = "html,body{margin:0;background:#fff;overflow:hidden}svg{display:block;width:100%}";
const CHART_INNER_CSS: &str = "html,body{margin:0;height:100%;background:#fff;overflow:hidden}svg{display:block;width:100%;height:100%}";

/// Once every frame has loaded: how many graphs drew something visible, on
/// <body data-graphs data-graphs-rendered>, and a note on the page if not all.
const CHECK_SCRIPT: &str = r#"
(function () {
  "use strict";
  function drawn(frame) {
    var doc;
    try { doc = frame.contentDocument; } catch (e) { return false; }
    var svg = doc && doc.querySelector("svg");
    if (!svg) return false;
    var box = svg.getBoundingClientRect();
    if (box.width <= 0 || box.height <= 0) return false;
    // A flame graph has drawn when its frames have. Elsewhere any shape or
    // text will do: an empty histogram that says "no iterations recorded"
    // has drawn what there was.
    var frames = doc.getElementById("frames");
    var marks = frames ? frames.querySelectorAll(":scope > g > rect")
                       : svg.querySelectorAll("rect, path, polyline, polygon, line, circle, ellipse, text");
    for (var i = 0; i < marks.length; i++) {
      var r = marks[i].getBoundingClientRect();
      if (r.width > 0 || r.height > 0) return true;
    }
    return false;
  }
  function check() {
    var graphs = document.querySelectorAll("iframe.graph");
    var failed = [];
    graphs.forEach(function (f) {
      var ok = drawn(f);
      f.parentNode.classList.toggle("failed", !ok);
      if (!ok) failed.push(f.title);
    });
    document.body.setAttribute("data-graphs", String(graphs.length));
    document.body.setAttribute("data-graphs-rendered", String(graphs.length - failed.length));
    var note = document.getElementById("render-note");
    if (failed.length) {
      note.textContent = failed.length + " of " + graphs.length + " graphs did not draw: " + failed.join("; ") +
        ". The raw SVG files beside this page may still open on their own.";
      note.hidden = false;
    }
  }
  if (document.readyState === "complete") check(); else window.addEventListener("load", check);
})();
"#;

const CSS: &str = r#"
:root { --ink: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #f6f8fa;
  --high: #c62828; --medium: #b26a00; --info: #2f6fab; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main, footer { max-width: 1320px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; border-bottom: 1px solid var(--line); }
h1 { font-size: 26px; margin: 0 0 2px; }
.subtitle { margin: 0 0 14px; color: var(--muted); }
h2 { font-size: 19px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
a { color: #0b62c4; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
main code { padding: 0 3px; border-radius: 3px; background: rgba(110, 118, 129, 0.12); }
.render-note { margin: 16px 0 0; padding: 10px 14px; border-radius: 6px; background: #fdecea; color: var(--high);
  border: 1px solid #f5c2c0; font-weight: 600; }
.findings ul { list-style: none; margin: 0; padding: 0; }
.finding { margin: 0 0 8px; padding: 9px 14px; border-left: 5px solid var(--info); border-radius: 4px; background: #eef4fb; }
.finding.high { border-color: var(--high); background: #fdf0ef; }
.finding.medium { border-color: var(--medium); background: #fdf6e8; }
.finding .badge { display: inline-block; min-width: 58px; margin-right: 6px; padding: 0 7px; border-radius: 9px;
  font-size: 11px; font-weight: 700; line-height: 18px; text-align: center; text-transform: uppercase; color: #fff; background: var(--info); vertical-align: 1px; }
.finding.high .badge { background: var(--high); }
.finding.medium .badge { background: var(--medium); }
.finding .text { font-weight: 600; }
.finding .to { margin-left: 6px; font-size: 13px; white-space: nowrap; }
.finding .evidence { margin: 2px 0 0 70px; color: var(--muted); font-size: 13.5px; overflow-wrap: anywhere; }
.findings .none { color: var(--muted); }
.toc ol { margin: 0; padding-left: 22px; columns: 2 260px; }
.toc li { margin: 2px 0; }
.toc .count { color: var(--muted); font-size: 13px; }
.lines p { margin: 3px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.table-wrap { overflow-x: auto; margin: 14px 0; }
table { border-collapse: collapse; font-size: 14px; min-width: 40%; }
caption { text-align: left; font-weight: 600; padding: 0 0 6px; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; border-bottom: 2px solid var(--line); }
td { overflow-wrap: anywhere; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
figure.graph { margin: 18px 0; }
figure.graph figcaption { font-weight: 600; margin-bottom: 6px; }
iframe.graph { display: block; width: 100%; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figure.graph.failed iframe { border: 2px solid var(--high); }
.files { color: var(--muted); font-size: 14px; }
footer { margin-top: 36px; padding-top: 12px; padding-bottom: 28px; border-top: 1px solid var(--line); color: var(--muted); font-size: 13px; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "<script>alert(\"x\")</script> & 'q' </iframe>";

    fn flame_svg() -> String {
        // The parts of inferno's output the page relies on: prolog, root tag
        // with onload, a script, the #frames group.
        format!(
            "<?xml version=\"1.0\" standalone=\"no\"?><!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \"x.dtd\">\
             <svg version=\"1.1\" width=\"1200\" height=\"342\" onload=\"init(evt)\" viewBox=\"0 0 1200 342\" xmlns=\"http://www.w3.org/2000/svg\">\
             <script type=\"text/ecmascript\"><![CDATA[var a = 1 < 2 && \"s\";]]></script>\
             <g id=\"frames\" total_samples=\"3\"><g><title>{} (3 samples)</title><rect x=\"0%\" y=\"300\" width=\"100%\" height=\"15\" fill=\"rgb(1,2,3)\" stroke-width=\"7\"/></g></g></svg>",
            esc(EVIL)
        )
    }

    fn chart_svg() -> String {
        "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"520\" viewBox=\"0 0 1000 520\"><polyline points=\"1,2 3,4\"/></svg>".into()
    }

    fn page() -> Page {
        let section = |id: &str, graphs: Vec<Graph>| Section {
            id: id.into(),
            title: format!("{EVIL} {id}"),
            lines: vec![EVIL.into()],
            tables: vec![Table {
                caption: EVIL.into(),
                headers: vec![EVIL.into(), "share".into()],
                rows: vec![vec![EVIL.into(), "42.5%".into()]],
            }],
            graphs,
            files: vec![(EVIL.into(), "cpu \"x\".svg".into()), ("bad".into(), "javascript:alert(1)".into())],
        };
        Page {
            title: EVIL.into(),
            subtitle: EVIL.into(),
            findings: vec![
                Finding { severity: Severity::Info, text: EVIL.into(), evidence: EVIL.into(), section: "gc".into() },
                Finding { severity: Severity::High, text: "first".into(), evidence: "e".into(), section: "cpu".into() },
                Finding { severity: Severity::Medium, text: "nowhere".into(), evidence: String::new(), section: "missing".into() },
            ],
            sections: vec![
                section("cpu", vec![Graph { title: EVIL.into(), svg: flame_svg() }, Graph { title: "chart".into(), svg: chart_svg() }]),
                section("gc", vec![Graph { title: "heap".into(), svg: chart_svg() }]),
                // Repeated and unsafe ids still make unique, well-formed ones.
                section("cpu", vec![]),
                section("a\" onclick=\"x", vec![]),
                section("findings", vec![]),
                section("cpu-graph-1", vec![]),
            ],
        }
    }

    /// The values of every `name="..."` attribute, as written (still escaped).
    fn attrs<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
        let key = format!(" {name}=\"");
        html.match_indices(&key).map(|(i, _)| &html[i + key.len()..]).map(|rest| &rest[..rest.find('"').unwrap()]).collect()
    }

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
    }

    #[test]
    fn text_cannot_break_out() {
        let p = page();
        let html = render(&p);
        // The page's own check script is the only script at its level: the
        // graphs' scripts sit escaped inside srcdoc.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert_eq!(html.matches("</iframe>").count(), 3);
        assert!(!html.contains("alert(\"x\")"));
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39; &lt;/iframe&gt;"));
        assert!(!html.contains("onclick=\""));
        assert!(attrs(&html, "href").contains(&"./javascript:alert(1)"));
        assert!(attrs(&html, "href").contains(&"cpu &quot;x&quot;.svg"));
    }

    #[test]
    fn srcdoc_holds_the_svg_unchanged() {
        let p = page();
        let html = render(&p);
        let docs = attrs(&html, "srcdoc");
        assert_eq!(docs.len(), 3);
        let flame = unescape(docs[0]);
        let svg = flame_svg();
        assert!(flame.contains(&svg[svg.find("<svg").unwrap()..]), "{flame}");
        assert!(!flame.contains("<!DOCTYPE svg"), "the SVG prolog is dropped: {flame}");
        assert!(flame.starts_with("<!DOCTYPE html>"));
        // The guard against inferno's replaceState comes before its script.
        assert!(flame.find("replaceState").unwrap() < flame.find("CDATA").unwrap());
    }

    #[test]
    fn one_iframe_per_graph_sized_by_its_svg() {
        let html = render(&page());
        assert_eq!(html.matches("<iframe").count(), 3);
        assert!(html.contains("<body data-graphs=\"3\">"));
        let styles = attrs(&html, "style");
        assert_eq!(styles, ["height:342px", "aspect-ratio:1000 / 520;max-width:1000px", "aspect-ratio:1000 / 520;max-width:1000px"]);
    }

    #[test]
    fn ids_are_unique_and_links_resolve() {
        let html = render(&page());
        let ids = attrs(&html, "id");
        let set: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(set.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}");
        }
        let links: Vec<&str> = attrs(&html, "href").into_iter().filter_map(|h| h.strip_prefix('#')).collect();
        for l in &links {
            assert!(set.contains(l), "#{l} points nowhere");
        }
        // Contents: six sections; findings: two of three have a section.
        assert_eq!(links.len(), 6 + 2);
    }

    #[test]
    fn findings_come_by_severity() {
        let html = render(&page());
        let first = html.find("finding high").unwrap();
        let second = html.find("finding medium").unwrap();
        let third = html.find("finding info").unwrap();
        assert!(first < second && second < third);
        let high = &html[first..html[first..].find("</li>").unwrap() + first];
        assert!(high.contains("href=\"#s-cpu\""), "{high}");
    }

    #[test]
    fn sizes_from_the_root_element() {
        let svg = "<?xml?><!-- <svgx --><svg width=\"800px\" stroke-width=\"3\" height='300'><rect/></svg>";
        assert_eq!(root_at(svg), Some(21));
        assert_eq!(size(start_tag(&svg[21..])), (800.0, 300.0));
        assert_eq!(size("<svg viewBox=\"0 0 640, 480\" width=\"100%\">"), (640.0, 480.0));
        assert_eq!(size("<svg>"), DEFAULT_SIZE);
        assert_eq!(root_at("no svg here"), None);
    }

    #[test]
    fn backquoted_names_become_code() {
        assert_eq!(prose("48% of it in `lj_str_new<&>`."), "48% of it in <code>lj_str_new&lt;&amp;&gt;</code>.");
        assert_eq!(prose("an odd ` stays"), "an odd ` stays");
    }

    #[test]
    fn numbers_align_right() {
        for n in ["12", "-3.5", "42%", "7 ms", "1,024", "1.2 MB/s"] {
            assert!(numeric(n), "{n}");
        }
        for t in ["", "ngx_http_lua", "12 slow requests in /api", "trace#3"] {
            assert!(!numeric(t), "{t}");
        }
    }
}
