//! `ljprobe diff` and `ljprobe gate`: a known folded pair gives the known colours
//! and changes; on the gateway, the same configuration profiled twice passes
//! the gate 20 times in 20, and a planted regression (one function doing 20%
//! more work, switched on by configuration) fails it 20 times in 20, named.

use std::{fs, path::Path, process::Output};

use ljprobe_tests::{gateway_slower, ljprobe, load_until_stopped, out_dir, require_root, stderr, stdout};
use serde_json::Value;
use xtask::{gateway::LuaJitBuild, load::Load, planted};

/// The fill colour of the flame graph box whose title starts with `frame (`.
fn fill_of(svg: &str, frame: &str) -> String {
    let at = svg.find(&format!("<title>{frame} (")).unwrap_or_else(|| panic!("no frame {frame} in the SVG"));
    let rest = &svg[at..];
    let fill = rest.find("fill=\"").expect("a filled box follows the title") + 6;
    rest[fill..fill + rest[fill..].find('"').unwrap()].to_string()
}

/// (r, g, b) of inferno's `rgb(r,g,b)`.
fn rgb(fill: &str) -> (u8, u8, u8) {
    let v: Vec<u8> = fill.trim_start_matches("rgb(").trim_end_matches(')').split(',').map(|c| c.trim().parse().unwrap()).collect();
    (v[0], v[1], v[2])
}

#[test]
fn diff_of_a_known_pair_colours_growth_red_and_shrinkage_blue() {
    let dir = out_dir().join("diff-known");
    fs::create_dir_all(&dir).unwrap();
    // 1000 samples before, 2000 after: normalized, `grow` doubles its share,
    // `shrink` loses two thirds, `same` keeps its share.
    fs::write(dir.join("before.folded"), "main a.lua:1;grow a.lua:5 100\nmain a.lua:1;shrink a.lua:9 300\nmain a.lua:1;same a.lua:13 600\n").unwrap();
    fs::write(dir.join("after.folded"), "main a.lua:1;grow a.lua:5 400\nmain a.lua:1;shrink a.lua:9 200\nmain a.lua:1;same a.lua:13 1200\nmain a.lua:1 200\n").unwrap();
    let svg = dir.join("diff.svg");
    let json = dir.join("diff.json");
    let o = ljprobe(&[
        "diff",
        dir.join("before.folded").to_str().unwrap(),
        dir.join("after.folded").to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&svg).unwrap();
    let (r, g, b) = rgb(&fill_of(&text, "grow a.lua:5"));
    assert!(r > b && r == 255 && g < 255, "grown frame not red: {r},{g},{b}");
    let (r, g, b) = rgb(&fill_of(&text, "shrink a.lua:9"));
    assert!(b > r && b == 255 && g < 255, "shrunk frame not blue: {r},{g},{b}");
    let (r, g, b) = rgb(&fill_of(&text, "same a.lua:13"));
    assert!(r == g && g == b && r >= 240, "an unchanged frame is near white: {r},{g},{b}");

    let v: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let changes = v["changes"].as_array().unwrap();
    let find = |f: &str| changes.iter().find(|c| c["function"] == f).unwrap_or_else(|| panic!("{f} missing"));
    // Shares: grow 10% -> 20%, shrink 30% -> 10%, same 60% -> 60%.
    assert_eq!(changes[0]["function"], "shrink a.lua:9", "the biggest move first");
    assert!((find("shrink a.lua:9")["self_points"].as_f64().unwrap() + 20.0).abs() < 1e-6);
    assert!((find("grow a.lua:5")["self_points"].as_f64().unwrap() - 10.0).abs() < 1e-6);
    assert!((find("grow a.lua:5")["self_relative"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert!(find("same a.lua:13")["self_points"].as_f64().unwrap().abs() < 1e-6);
    assert!(stdout(&o).contains("shrink a.lua:9"), "{}", stdout(&o));
}

#[test]
fn gate_refuses_what_it_cannot_compare_with_exit_2() {
    let dir = out_dir().join("gate-bad");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("ok.folded"), "a;b 3\n").unwrap();
    fs::write(dir.join("junk.folded"), "this is not a profile\n").unwrap();
    fs::write(dir.join("nofolded.json"), "{\"tool\": \"cpu\", \"unit\": \"samples\"}\n").unwrap();
    let gate = |base: &str, cur: &str| -> Output {
        ljprobe(&[
            "gate",
            "--baseline",
            dir.join(base).to_str().unwrap(),
            "--current",
            dir.join(cur).to_str().unwrap(),
            "--svg",
            dir.join("g.svg").to_str().unwrap(),
            "--markdown",
            dir.join("g.md").to_str().unwrap(),
        ])
    };
    for (base, cur, says) in [
        ("ok.folded", "junk.folded", "is not folded stacks"),
        ("ok.folded", "missing.folded", "cannot read"),
        ("nofolded.json", "ok.folded", "--folded"),
    ] {
        let o = gate(base, cur);
        assert_eq!(o.status.code(), Some(2), "{base} vs {cur}: {}", stderr(&o));
        ljprobe_tests::assert_one_sentence(&o, says);
    }
}

/// `count` CPU profiles of the gateway's only worker under load of /api/quote.
fn profiles(gw: &xtask::gateway::Running, dir: &Path, tag: &str, count: usize) -> Vec<String> {
    let worker = gw.worker();
    let _load = load_until_stopped(Load { url: gw.config.url(), route: "/api/quote".into(), connections: 2, rate: None, duration: Default::default() });
    // Traces compiled and the load steady before the first profile.
    std::thread::sleep(std::time::Duration::from_secs(2));
    (0..count)
        .map(|i| {
            let (folded, json) = (dir.join(format!("{tag}{i}.folded")), dir.join(format!("{tag}{i}.json")));
            let svg = dir.join(format!("{tag}{i}.svg"));
            // ~20000 samples a profile whatever the CPU's speed: what decides
            // the gate's power is the sample count, and that is set by time.
            let o = ljprobe(&[
                "cpu", "--pid", &worker.to_string(), "--duration", "2s", "--freq", "9999",
                "--folded", folded.to_str().unwrap(), "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "profile {tag}{i}: {}", stderr(&o));
            json.display().to_string()
        })
        .collect()
}

fn gate(dir: &Path, base: &str, cur: &str, i: usize) -> (Option<i32>, Value, String) {
    let json = dir.join(format!("verdict{i}.json"));
    let o = ljprobe(&[
        "gate", "--baseline", base, "--current", cur, "--max-regress", "5%",
        "--svg", dir.join(format!("gate{i}.svg")).to_str().unwrap(),
        "--markdown", dir.join(format!("gate{i}.md")).to_str().unwrap(),
        "--json", json.to_str().unwrap(),
    ]);
    let v = serde_json::from_str(&fs::read_to_string(&json).unwrap_or_else(|e| panic!("no verdict: {e}; {}", stderr(&o)))).unwrap();
    (o.status.code(), v, stdout(&o))
}

/// Self share of the function whose label starts with `name ` in a run's JSON summary.
fn self_share(summary: &str, name: &str) -> f64 {
    let v: Value = serde_json::from_str(&fs::read_to_string(summary).unwrap()).unwrap();
    v["top_frames"].as_array().unwrap().iter().filter(|t| t["frame"].as_str().unwrap().starts_with(&format!("{name} "))).map(|t| t["self_share"].as_f64().unwrap()).sum()
}

#[test]
fn gate_passes_the_same_build_20_of_20_and_fails_a_planted_regression_20_of_20() {
    require_root();
    let planted = planted::for_route("/api/quote").unwrap();
    let dir = out_dir().join("gate-gateway");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();

    let same = {
        let gw = gateway_slower("gate-same", LuaJitBuild::Debug, 1, "");
        profiles(&gw, &dir, "base", 21)
    };
    let slower = {
        let gw = gateway_slower("gate-slower", LuaJitBuild::Debug, 1, &planted.function);
        profiles(&gw, &dir, "slower", 20)
    };

    // Two profiles of the same configuration, 20 pairs: all pass.
    for i in 0..20 {
        let (code, v, out) = gate(&dir, &same[i], &same[i + 1], i);
        assert_eq!(code, Some(0), "same build, pair {i} failed the gate:\n{out}\n{}", v["regressions"]);
        assert_eq!(v["pass"], true);
    }
    // Baseline against the planted regression, 20 pairs: all fail, naming it first.
    for i in 0..20 {
        let (code, v, out) = gate(&dir, &same[i], &slower[i], 20 + i);
        assert_eq!(code, Some(1), "planted regression, pair {i} passed the gate:\n{out}");
        let named: Vec<&str> = v["regressions"].as_array().unwrap().iter().map(|r| r["function"].as_str().unwrap()).collect();
        assert!(named[0].starts_with(&format!("{} ", planted.function)), "pair {i} names {named:?}");
        assert!(named[0].contains(&planted.location()), "pair {i} names {named:?}, not at {}", planted.location());
        for other in ["quote_parse ", "quote_render "] {
            assert!(!named.iter().any(|n| n.starts_with(other)), "pair {i} also blames {other}: {named:?}");
        }
        assert!(out.contains(&planted.function), "the terminal names it:\n{out}");
    }
    // The size of the change the gate saw agrees with the work the
    // configuration added (x1.2): share s becomes 1.2s / (1 + 0.2s).
    let mean = |runs: &[String]| runs.iter().map(|r| self_share(r, &planted.function)).sum::<f64>() / runs.len() as f64;
    let (before, after) = (mean(&same), mean(&slower));
    let expected = 1.2 * before / (1.0 + 0.2 * before);
    assert!((after - expected).abs() < 0.25 * (expected - before), "share {before:.3} -> {after:.3}, the planted 20% predicts {expected:.3}");
    let md = fs::read_to_string(dir.join("gate20.md")).unwrap();
    assert!(md.contains("FAIL") && md.contains(&planted.function), "{md}");
}
