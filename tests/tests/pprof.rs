//! `--pprof` read back by `go tool pprof` (Debian's golang-go): the planted
//! functions of the gateway under their files and lines, in the sample types
//! of each tool, with the shares ljprobe's own folded stacks and JSON give
//! them in the same run.

use std::{fs, path::Path, process::Command, thread, time::Duration};

use ljprobe_tests::{gateway, ljprobe, load_until_stopped, out_dir, read_folded, stderr, stdout, weight, Background};
use serde_json::Value;
use xtask::{
    gateway::{LuaJitBuild, Running},
    load::Load,
    planted::{self, Planted},
};

/// `go tool pprof ARGS FILE`'s standard output; go gets a cache of its own.
fn go_pprof(file: &Path, args: &[&str]) -> String {
    let home = out_dir().join("go-home");
    fs::create_dir_all(&home).unwrap();
    let out = Command::new("/usr/bin/go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("HOME", &home)
        .env("GOCACHE", home.join("cache"))
        .output()
        .expect("go runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "go tool pprof {args:?}: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The first row of `-top` whose name starts with `starts`: its name and its
/// cumulative percentage.
fn top_row(top: &str, starts: &str) -> Option<(String, f64)> {
    top.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let name = fields.get(5..)?.join(" ");
        let cum = fields[4].strip_suffix('%')?.parse().ok()?;
        name.starts_with(starts).then_some((name, cum))
    })
}

/// The value after "Total samples = " in pprof's header, without its unit.
fn total(top: &str, unit: &str) -> f64 {
    let v = top.split("Total samples = ").nth(1).and_then(|t| t.split_whitespace().next()).expect("a total");
    v.strip_suffix(unit).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("total {v} is not in {unit}"))
}

/// The share (percent) of the weight whose stacks hold `p`'s function in
/// ljprobe's folded stacks.
fn folded_share(folded: &[(String, u64)], p: &Planted) -> f64 {
    let label = format!("{} {}", p.function, p.location());
    weight(folded, |s| s.contains(&label)) as f64 * 100.0 / weight(folded, |_| true).max(1) as f64
}

/// The share (percent) of the stacks holding `function`, from one of the
/// summary's lists (where it is the innermost Lua function).
fn json_share(summary: &Value, list: &str, function: &str) -> f64 {
    let t = summary[list].as_array().unwrap().iter().find(|t| t["frame"].as_str().unwrap().starts_with(&format!("{function} ")));
    t.unwrap_or_else(|| panic!("{function} not in {list}: {}", summary[list]))["total_share"].as_f64().unwrap() * 100.0
}

struct Run {
    summary: Value,
    folded: Vec<(String, u64)>,
    pprof: std::path::PathBuf,
}

/// Runs `ljprobe TOOL --pid WORKER` with `--pprof` and every other output.
fn run(gw: &Running, name: &str, tool: &str, extra: &[&str]) -> Run {
    let dir = out_dir();
    let file = |ext: &str| dir.join(format!("{name}.{ext}"));
    let (json, pb, svg, folded) = (file("json"), file("pb.gz"), file("svg"), file("folded"));
    let _ = fs::remove_file(&pb);
    let worker = gw.worker().to_string();
    let mut args = vec![
        tool, "--pid", &worker, "--duration", "3s",
        "--json", json.to_str().unwrap(), "--pprof", pb.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
        "--folded", folded.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = ljprobe(&args);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("  pprof: {}", pb.display())), "{}", stdout(&out));
    let summary: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["pprof"], pb.to_str().unwrap());
    Run { summary, folded: read_folded(&folded), pprof: pb }
}

fn load(gw: &Running, route: &str, connections: u32, rate: Option<u32>) -> Background {
    let wrk = load_until_stopped(Load { url: gw.config.url(), route: route.into(), duration: Duration::ZERO, connections, rate });
    thread::sleep(Duration::from_secs(1));
    wrk
}

/// The planted function's row in `-top -filefunctions` names its file, and
/// holds the share of the stacks ljprobe's own outputs give it.
fn assert_planted(top: &str, p: &Planted, share: f64) {
    let file = p.path().display().to_string();
    let Some((row, cum)) = top_row(top, &format!("{} {file}", p.function)) else {
        panic!("no `{} {file}` row in:\n{top}", p.function);
    };
    assert!((cum - share).abs() <= 1.0, "{row}: {cum}% in pprof, {share:.2}% in ljprobe's summary\n{top}");
}

#[test]
fn cpu_profile_names_hot_jit_work_in_its_file_and_line_with_ljprobes_share() {
    let p = planted::for_route("/hot/jit").unwrap();
    let gw = gateway("pprof-cpu", LuaJitBuild::Debug);
    let wrk = load(&gw, "/hot/jit", 4, None);
    let Run { summary, folded, pprof: pb } = run(&gw, "pprof-cpu", "cpu", &["--freq", "499"]);
    drop(wrk);
    let top = go_pprof(&pb, &["-top", "-filefunctions"]);
    assert!(top.contains("Type: cpu"), "the default sample type is not cpu:\n{top}");
    assert_planted(&top, &p, folded_share(&folded, &p));
    assert_planted(&top, &p, json_share(&summary, "top_frames", &p.function));
    // Each sample is 1/499 s of CPU time; both columns hold every sample.
    let weight = summary["weight"].as_f64().unwrap();
    let samples = go_pprof(&pb, &["-top", "-sample_index=samples"]);
    assert_eq!(total(&samples, ""), weight, "{samples}");
    let ns = total(&go_pprof(&pb, &["-top", "-unit=ns"]), "ns");
    assert!((ns - weight * 1e9 / 499.0).abs() <= weight, "{ns} ns for {weight} samples at 499 Hz");
    // The line is a field: the function's own line, where pprof shows it.
    let lines = go_pprof(&pb, &["-top", "-lines"]);
    assert!(top_row(&lines, &format!("{} {}", p.function, p.location())).is_some(), "no {} {} in:\n{lines}", p.function, p.location());
}

#[test]
fn offcpu_profile_is_in_nanoseconds_under_block_sleep_work() {
    let p = planted::for_route("/block/sleep").unwrap();
    let gw = gateway("pprof-offcpu", LuaJitBuild::Debug);
    let wrk = load(&gw, "/block/sleep", 1, Some(20));
    let Run { summary, folded, pprof: pb } = run(&gw, "pprof-offcpu", "offcpu", &[]);
    drop(wrk);
    let top = go_pprof(&pb, &["-top", "-filefunctions"]);
    assert!(top.contains("Type: off-cpu"), "{top}");
    // Not innermost (the FFI call to usleep is): the folded stacks say its share.
    assert_planted(&top, &p, folded_share(&folded, &p));
    // ljprobe counts microseconds; pprof reads nanoseconds and shows them in ms.
    let us = summary["blocked_us"].as_f64().unwrap();
    assert!(us > 0.0, "nothing blocked: {summary}");
    let ms = total(&go_pprof(&pb, &["-top", "-unit=ms"]), "ms");
    assert!((ms - us / 1000.0).abs() <= 0.01 * ms.max(1.0), "pprof {ms} ms, ljprobe {us} us");
}

#[test]
fn alloc_profile_has_space_and_objects_under_alloc_churn_work() {
    let p = planted::for_route("/alloc/churn").unwrap();
    let gw = gateway("pprof-alloc", LuaJitBuild::Debug);
    let wrk = load(&gw, "/alloc/churn", 2, None);
    let Run { summary, folded, pprof: pb } = run(&gw, "pprof-alloc", "alloc", &["--overhead", "3"]);
    drop(wrk);
    let space = go_pprof(&pb, &["-top", "-filefunctions", "-sample_index=alloc_space"]);
    assert!(space.contains("Type: alloc_space"), "{space}");
    assert_planted(&space, &p, folded_share(&folded, &p));
    assert_planted(&space, &p, json_share(&summary, "top_by_bytes", &p.function));
    let objects = go_pprof(&pb, &["-top", "-filefunctions", "-sample_index=alloc_objects"]);
    assert_planted(&objects, &p, json_share(&summary, "top_by_count", &p.function));
    // Without -sample_index: what the flame graph weighs (bytes by default).
    assert!(go_pprof(&pb, &["-top"]).contains("Type: alloc_space"));
}
