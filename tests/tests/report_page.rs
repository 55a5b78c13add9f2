//! The page of `ljprobe report` in a real browser (headless Chromium), with no
//! root, BPF or gateway: a real inferno flame graph and a line chart, frame
//! names and findings that would break out of naive HTML, two findings. Every
//! graph must draw, the findings read as text, and the flame graph's own
//! search, hover and click-to-zoom must still work inside the page.

use std::fs;

use ljprobe::tools::report::page::{self, Finding, Graph, Page, Section, Severity, Table};
use ljprobe_flamegraph::{
    linechart::{LineChart, Series, Side},
    svg::{self, SvgOptions},
    Folded, Frame,
};
use ljprobe_tests::{chromium, out_dir};
use serde_json::Value;

/// The Lua function the graph and the findings are about, with every character
/// HTML and SVG escape.
const HOT: &str = "hot_handler<\"q\">&'x'";
const HOT_FILE: &str = "app/<script>.lua";
const EVIL_FINDING: &str = "<script>alert(\"pwned\")</script> & 'quotes': hot_handler takes 60% of the CPU";

fn flame_graph() -> String {
    let main = Frame::Native("main".into());
    let hot = Frame::Lua { name: Some(HOT.into()), file: HOT_FILE.into(), line: 12, at: None };
    let cold = Frame::Lua { name: Some("cold".into()), file: "app/cold.lua".into(), line: 4, at: None };
    let mut f = Folded::default();
    f.add(&[main.clone(), hot.clone(), Frame::Trace(3)], 45);
    f.add(&[main.clone(), hot, Frame::Native("lj_str_new".into())], 15);
    f.add(&[main.clone(), cold], 30);
    f.add(&[main, Frame::Vm("[GC]".into())], 10);
    let opts = SvgOptions { title: "ljprobe cpu: PID 42 <nginx>".into(), subtitle: "100 samples".into(), count_name: "samples".into() };
    let mut out = Vec::new();
    svg::render(&f, &opts, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn line_chart() -> String {
    let heap: Vec<(f64, f64)> = (0..50).map(|i| (i as f64 * 0.1, 8.0 + (i as f64 * 0.3).sin() * 3.0 + i as f64 * 0.1)).collect();
    LineChart {
        title: "Lua heap of PID 42 <nginx>".into(),
        subtitle: "5.0s, every 100ms".into(),
        x_label: "seconds".into(),
        left_label: "MiB".into(),
        right_label: String::new(),
        series: vec![Series {
            name: "heap & \"threshold\"".into(),
            color: "#4e79a7".into(),
            side: Side::Left,
            points: heap.clone(),
            band: heap.iter().map(|&(x, y)| (x, y - 0.5, y + 0.5)).collect(),
            faint: false,
        }],
        marks: vec![1.0, 2.5, 4.0],
        marks_name: "GC cycle finished (3)".into(),
        tips: heap.iter().map(|&(x, y)| (x, format!("t={x:.1}s heap {y:.1} MiB"))).collect(),
    }
    .svg()
}

fn report() -> Page {
    Page {
        title: "ljprobe report: PID 42 <nginx> & \"friends\"".into(),
        subtitle: "cpu, offcpu, epoll-loop, gc and alloc over 10s".into(),
        findings: vec![
            Finding {
                severity: Severity::Medium,
                text: "The collector ran 3 cycles in 5 s while the heap stayed near 10 MiB.".into(),
                evidence: "heap 8.0 to 12.9 MiB; GC cycles at 1.0 s, 2.5 s, 4.0 s".into(),
                section: "gc".into(),
            },
            Finding {
                severity: Severity::High,
                text: EVIL_FINDING.into(),
                evidence: format!("60 of 100 samples in {HOT} {HOT_FILE}:12, 45 of them in trace#3, 15 in `lj_str_new`"),
                section: "cpu".into(),
            },
        ],
        sections: vec![
            Section {
                id: "cpu".into(),
                title: "CPU".into(),
                lines: vec![format!("100 samples at 99 Hz; the hottest Lua function is {HOT}.")],
                tables: vec![Table {
                    caption: "Hottest functions (self)".into(),
                    headers: vec!["function".into(), "samples".into(), "share".into()],
                    rows: vec![
                        vec![format!("{HOT} {HOT_FILE}:12"), "60".into(), "60%".into()],
                        vec!["cold app/cold.lua:4".into(), "30".into(), "30%".into()],
                        vec!["[GC]".into(), "10".into(), "10%".into()],
                    ],
                }],
                graphs: vec![Graph { title: "CPU by Lua function <mixed>".into(), svg: flame_graph() }],
                files: vec![("flame graph (SVG)".into(), "cpu.svg".into())],
            },
            Section {
                id: "gc".into(),
                title: "GC & heap".into(),
                lines: vec!["3 cycles finished.".into()],
                tables: vec![],
                graphs: vec![Graph { title: "Heap over time".into(), svg: line_chart() }],
                files: vec![("line chart (SVG)".into(), "gc.svg".into())],
            },
        ],
    }
}

/// Drives the flame graph inside the page the way a user would, and writes
/// what happened as JSON on `<body data-probe>`.
const PROBE: &str = r##"<script>
window.addEventListener("load", function () { setTimeout(function () {
  var out = {};
  try {
    var f = document.querySelector("iframe.graph.flame"), w = f.contentWindow, d = f.contentDocument;
    var click = function (el) { el.dispatchEvent(new w.MouseEvent("click", { bubbles: true })); };
    var groups = [].slice.call(d.querySelectorAll("#frames > g"));
    out.frames = groups.length;
    out.frame_width = f.clientWidth;
    out.svg_width = d.querySelector("svg").getBoundingClientRect().width;
    out.frames_width = Number(d.getElementById("frames").getAttribute("width"));
    out.search_is_function = typeof w.search === "function";
    w.search("hot_handler");
    out.matched = d.getElementById("matched").textContent;
    out.search_button = d.getElementById("search").textContent;
    var hot = groups.filter(function (g) { return g.querySelector("title").textContent.indexOf("hot_handler") === 0; })[0];
    var rect = hot.querySelector("rect");
    rect.dispatchEvent(new w.MouseEvent("mouseover", { bubbles: true }));
    out.details = d.getElementById("details").textContent;
    click(rect);
    out.hot_width_zoomed = rect.getAttribute("width");
    out.hidden_zoomed = d.querySelectorAll("#frames > g.hide").length;
    out.unzoom_shown = !d.getElementById("unzoom").classList.contains("hide");
    click(d.getElementById("unzoom"));
    out.hidden_unzoomed = d.querySelectorAll("#frames > g.hide").length;
    out.hot_width = rect.getAttribute("width");
    click(d.getElementById("search"));
    out.search_button_reset = d.getElementById("search").textContent;
    out.errors = [].map.call(document.querySelectorAll("iframe.graph"), function (g) {
      return g.contentDocument.documentElement.getAttribute("data-error") || "";
    }).join("");
  } catch (e) { out.exception = String(e && e.stack || e); }
  document.body.setAttribute("data-probe", JSON.stringify(out));
}, 200); });
</script>"##;

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'").replace("&nbsp;", "\u{a0}").replace("&amp;", "&")
}

#[test]
fn report_page_renders_every_graph_and_stays_interactive() {
    let dir = out_dir().join("report-page");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let report = report();
    for (name, s) in [("cpu.svg", 0), ("gc.svg", 1)] {
        fs::write(dir.join(name), &report.sections[s].graphs[0].svg).unwrap();
    }
    let html = page::render(&report);
    let index = dir.join("index.html");
    fs::write(&index, &html).unwrap();
    assert!(no_fetches(&html), "the page must not load anything from the network");

    let png = out_dir().join("report-page.png");
    let r = chromium::check_page(&index, &png).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("report page: {} of {} graphs drawn; {}, screenshot {}", r.rendered, r.graphs, index.display(), png.display());
    assert_eq!((r.graphs, r.rendered), (2, 2), "graphs on the page vs drawn (see {})", png.display());
    assert!(r.dom.contains("id=\"render-note\" class=\"render-note\" hidden"), "the page says some graph did not draw");
    // The finding reads as text: escaped once in the DOM, never markup.
    assert!(r.dom.contains("&lt;script&gt;alert(\"pwned\")&lt;/script&gt; &amp; 'quotes'"), "finding text missing or mangled");
    assert!(!r.dom.contains("<script>alert"), "a finding became markup");
    assert!(r.dom.contains("hot_handler&lt;\"q\"&gt;&amp;'x' app/&lt;script&gt;.lua:12"), "evidence or table cell mangled");
    assert!(r.dom.contains("15 in <code>lj_str_new</code>"), "`quoted` names are not set as code");
    let high = r.dom.find("finding high").expect("the high finding");
    assert!(high < r.dom.find("finding medium").expect("the medium finding"), "findings not by severity");

    // The same page with a script that uses the flame graph as a person would.
    let probe_page = dir.join("index-probe.html");
    let at = html.rfind("</body>").unwrap();
    fs::write(&probe_page, format!("{}{PROBE}{}", &html[..at], &html[at..])).unwrap();
    let dom = chromium::dump_dom(&probe_page).unwrap_or_else(|e| panic!("{e:#}"));
    let body = chromium::body_tag(&dom).unwrap();
    let probe = chromium::attr(body, "data-probe").unwrap_or_else(|| panic!("the probe did not run: {body}"));
    let probe: Value = serde_json::from_str(&unescape(probe)).unwrap();
    eprintln!("flame graph probe: {probe:#}");
    assert_eq!(probe["exception"], Value::Null, "{probe:#}");
    assert_eq!(probe["errors"], "", "a graph's script failed: {probe:#}");
    assert!(probe["search_is_function"].as_bool().unwrap(), "{probe:#}");
    // The frames of `main`, the two functions and their children, [GC], and the root.
    assert_eq!(probe["frames"], 7, "{probe:#}");
    // The graph fills its frame, and inferno laid its frames out for that width.
    let width = |k: &str| probe[k].as_f64().unwrap();
    assert!(width("frame_width") > 1000.0, "{probe:#}");
    assert_eq!(width("svg_width"), width("frame_width"), "{probe:#}");
    assert_eq!(width("frames_width"), width("svg_width") - 20.0, "{probe:#}");
    assert_eq!(probe["matched"], "Matched: 60.0%", "search: {probe:#}");
    assert_eq!(probe["search_button"], "Reset Search", "{probe:#}");
    let details = probe["details"].as_str().unwrap();
    assert!(details.contains(&format!("{HOT} {HOT_FILE}:12 (60 samples")), "hover shows the name as written: {details}");
    assert_eq!(probe["hot_width_zoomed"], "100.0000%", "click-to-zoom: {probe:#}");
    // Zoomed into the hot function: `cold` and [GC] are out of view.
    assert_eq!(probe["hidden_zoomed"], 2, "{probe:#}");
    assert!(probe["unzoom_shown"].as_bool().unwrap(), "{probe:#}");
    assert_eq!(probe["hidden_unzoomed"], 0, "{probe:#}");
    assert_eq!(probe["hot_width"], "60.0000%", "unzoom: {probe:#}");
    assert_eq!(probe["search_button_reset"], "Search", "resetting the search: {probe:#}");
}

/// Every "http://" in the page is an XML namespace or a comment, not
/// something a browser would fetch: no src= or href= to the network.
fn no_fetches(html: &str) -> bool {
    let decoded = unescape(&unescape(html));
    !["src=\"http", "href=\"http", "src='http", "href='http", "url(http", "@import"].iter().any(|p| decoded.contains(p))
}

/// Graphs that draw nothing are counted as not rendered, and the page says
/// which at the top: a file cut short before its root element, and a flame
/// graph without frames.
#[test]
fn a_graph_that_draws_nothing_is_reported() {
    let dir = out_dir().join("report-page-broken");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let cut = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n";
    let frameless = r#"<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="200"><rect width="1200" height="200" fill="white"/><g id="frames" total_samples="0"></g></svg>"#;
    let mut report = report();
    report.sections[1].graphs.push(Graph { title: "Cut <short>".into(), svg: cut.into() });
    report.sections[1].graphs.push(Graph { title: "No frames".into(), svg: frameless.into() });
    let index = dir.join("index.html");
    fs::write(&index, page::render(&report)).unwrap();
    let dom = chromium::dump_dom(&index).unwrap_or_else(|e| panic!("{e:#}"));
    let body = chromium::body_tag(&dom).unwrap();
    assert_eq!(chromium::attr(body, "data-graphs"), Some("4"), "{body}");
    assert_eq!(chromium::attr(body, "data-graphs-rendered"), Some("2"), "{body}");
    let note = dom.find("<p id=\"render-note\"").map(|at| &dom[at..at + dom[at..].find("</p>").unwrap()]);
    assert_eq!(
        note,
        Some("<p id=\"render-note\" class=\"render-note\">2 of 4 graphs did not draw: Cut &lt;short&gt;; No frames. The raw SVG files beside this page may still open on their own."),
    );
}
