//! `ljprobe epoll-loop` against the real gateway: a blocking route fills the
//! 16-32 ms bucket and is named as the culprit, a CPU-light route stays under a
//! millisecond, and a slow but non-blocking upstream never blocks the loop.

use std::{fs, process::Command, thread, time::Duration};

use ljprobe_tests::{assert_one_sentence, gateway, ljprobe, out_dir, require_root, stderr, stdout};
use serde_json::Value;
use xtask::{gateway::LuaJitBuild, load::Load, planted};

/// Runs epoll-loop on a fresh gateway while `route` is under load; returns the
/// JSON summary and what was printed.
fn loop_under_load(name: &str, route: &str, connections: u32, rate: Option<u32>) -> (Value, String) {
    let gw = gateway(name, LuaJitBuild::Debug);
    let load = Load { url: gw.config.url(), route: route.into(), duration: Duration::from_secs(8), connections, rate };
    let mut wrk = load.spawn().unwrap();
    thread::sleep(Duration::from_secs(2));
    let dir = out_dir();
    let (json, svg) = (dir.join(format!("{name}.json")), dir.join(format!("{name}.svg")));
    let master = gw.master().to_string();
    let out = ljprobe(&[
        "epoll-loop", "--pid", &master, "--duration", "4s",
        "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
    ]);
    let _ = wrk.kill();
    let _ = wrk.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let svg_text = fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.contains("iterations"), "not a histogram SVG");
    (serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap(), stdout(&out))
}

fn count_below(summary: &Value, us: u64) -> u64 {
    summary["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["hi_us"].as_u64().unwrap() <= us)
        .map(|b| b["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn blocking_route_fills_the_16_32ms_bucket_and_is_named() {
    let p = planted::for_route("/block/sleep").unwrap();
    let label = format!("{} {}", p.function, p.location());
    // Light load: one connection, 20 requests a second, each blocking 20 ms.
    let (s, text) = loop_under_load("loop-block", "/block/sleep", 1, Some(20));
    let fullest = &s["fullest_bucket"];
    assert_eq!(fullest["lo_us"], 16384, "fullest bucket is not 16-32 ms: {s}");
    let long = s["long_iterations"].as_u64().unwrap();
    assert!(long >= 40, "only {long} long iterations in 4 s at 20 requests/s: {s}");
    let top = &s["culprits"][0];
    assert_eq!(top["frame"], label.as_str(), "{s}");
    assert!(top["share"].as_f64().unwrap() >= 0.9, "{top}");
    assert!(text.contains("16384 |@"), "the terminal histogram lacks the bucket:\n{text}");
    assert!(text.contains(&label), "the terminal does not name the culprit:\n{text}");
}

#[test]
fn light_hot_jit_load_iterates_under_a_millisecond() {
    // n=0.01: 10000 loop turns of compiled code, about 0.15 ms a request; an
    // iteration serves whatever requests are ready, up to one per connection.
    let (s, _) = loop_under_load("loop-hot-jit", "/hot/jit?n=0.01", 4, None);
    let total = s["iterations"].as_u64().unwrap();
    let fast = count_below(&s, 1024);
    assert!(total > 1000, "only {total} iterations: {s}");
    assert!(fast * 100 >= total * 95, "{fast} of {total} iterations under 1 ms: {s}");
    assert_eq!(s["long_iterations"], 0, "{s}");
}

#[test]
fn full_size_hot_jit_requests_hold_the_loop_on_cpu_and_are_named() {
    // At its default size /hot/jit is ~12 ms of CPU per request: each request
    // holds the loop that long, on-CPU, and the sampled culprit says where.
    let p = planted::for_route("/hot/jit").unwrap();
    let label = format!("{} {}", p.function, p.location());
    let (s, _) = loop_under_load("loop-hot-jit-full", "/hot/jit", 1, Some(10));
    let fullest = s["fullest_bucket"]["lo_us"].as_u64().unwrap();
    assert_eq!(fullest, 8192, "fullest bucket {fullest} us: {s}");
    if s["long_iterations"].as_u64().unwrap() >= 10 {
        assert_eq!(s["culprits"][0]["frame"], label.as_str(), "{s}");
    }
}

#[test]
fn a_slow_non_blocking_upstream_never_blocks_the_loop() {
    let (s, _) = loop_under_load("loop-slow", "/slow/upstream", 4, None);
    let total = s["iterations"].as_u64().unwrap();
    assert!(total > 100, "only {total} iterations: {s}");
    assert_eq!(s["long_iterations"], 0, "a 50 ms non-blocking wait shows as blocking: {s}");
    let fast = count_below(&s, 1024);
    assert!(fast * 100 >= total * 95, "{fast} of {total} iterations under 1 ms: {s}");
}

#[test]
fn bad_input_gets_one_sentence() {
    require_root();
    assert_one_sentence(&ljprobe(&["epoll-loop", "--pid", "999999999", "--duration", "1s"]), "999999999");
    let out = ljprobe(&["epoll-loop", "--pid", "1", "--threshold", "0"]);
    assert!(!out.status.success() && !stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_process_that_never_waits_in_epoll_gets_an_empty_histogram_and_a_note() {
    require_root();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = ljprobe(&[
        "epoll-loop", "--pid", &sleeper.id().to_string(), "--duration", "1s",
        "--svg", out_dir().join("loop-sleep.svg").to_str().unwrap(),
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no epoll_wait calls seen"), "{}", stdout(&out));
}
