//! `ljprobe latency` on the gateway against nginx's own access log: the
//! same requests per route, the same percentiles, the same upstream time;
//! each planted route's time lands in its phase and kind; a request stuck
//! behind a blocking one waits behind it.

use std::{collections::HashMap, fs, path::Path, time::Duration};

use ljprobe_tests::{assert_one_sentence, gateway, ljprobe, ljprobe_then, out_dir, stderr, stdout};
use serde_json::Value;
use xtask::gateway::{http_get, LuaJitBuild, Running};

/// One access-log line of the gateway's format (gateway/conf/nginx.conf.tmpl).
struct Logged {
    route: String,
    request_ms: f64,
    upstream_ms: Option<f64>,
}

fn parse_log(text: &str) -> Vec<Logged> {
    text.lines()
        .filter_map(|l| {
            let after = l.split("\" ").nth(1)?;
            let mut f = after.split(' ');
            let (_status, _bytes, request_time) = (f.next()?, f.next()?, f.next()?);
            let field = |name: &str| l.split(' ').find_map(|w| w.strip_prefix(name));
            Some(Logged {
                route: field("route=")?.to_string(),
                request_ms: request_time.parse::<f64>().ok()? * 1000.0,
                upstream_ms: field("urt=").and_then(|v| v.parse::<f64>().ok()).map(|s| s * 1000.0),
            })
        })
        .collect()
}

/// The q-quantile by nearest rank, as ljprobe takes it.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The access log's bytes from `from` on, once nginx has flushed its buffer
/// (`flush=1s`).
fn log_since(gw: &Running, from: u64) -> String {
    std::thread::sleep(Duration::from_millis(2500));
    let text = fs::read(log_path(gw)).unwrap();
    String::from_utf8_lossy(&text[from as usize..]).into_owned()
}

fn log_path(gw: &Running) -> std::path::PathBuf {
    gw.config.access_log()
}

fn log_len(gw: &Running) -> u64 {
    fs::metadata(log_path(gw)).map(|m| m.len()).unwrap_or(0)
}

fn summary(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn group<'a>(s: &'a Value, key: &str) -> &'a Value {
    s["groups"].as_array().unwrap().iter().find(|g| g["key"] == key).unwrap_or_else(|| panic!("no group {key}: {s:#}"))
}

/// Mean ms per request of the parts of a group whose phase and kind match.
fn part_ms(g: &Value, phase: &str, kind: impl Fn(&str) -> bool) -> f64 {
    g["parts"].as_array().unwrap().iter().filter(|p| p["phase"] == phase && kind(p["kind"].as_str().unwrap())).map(|p| p["ms"].as_f64().unwrap()).sum()
}

fn on_cpu(kind: &str) -> bool {
    kind.starts_with("on-CPU")
}

/// Runs ljprobe latency on the gateway's master while `drive` sends
/// requests, then stops it (Ctrl-C) once the access log has them all.
/// Returns the summary and the access-log lines of those requests.
fn traced(gw: &Running, name: &str, drive: impl FnOnce()) -> (Value, Vec<Logged>, String) {
    traced_with(gw, name, &[], drive)
}

fn traced_with(gw: &Running, name: &str, extra: &[&str], drive: impl FnOnce()) -> (Value, Vec<Logged>, String) {
    let json = out_dir().join(format!("{name}.json"));
    let svg = out_dir().join(format!("{name}.svg"));
    let master = gw.master().to_string();
    let mut logged = String::new();
    let mut args = vec!["latency", "--pid", &master, "--duration", "120s", "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = ljprobe_then(
        &args,
        |pid| {
            // What was logged before the run is flushed first, then left out.
            std::thread::sleep(Duration::from_millis(2500));
            let from = log_len(gw);
            drive();
            logged = log_since(gw, from);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        },
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.trim_end().ends_with("</svg>"), "an SVG was written");
    (summary(&json), parse_log(&logged), stdout(&o))
}

fn get(gw: &Running, path: &str) {
    let r = http_get(gw.config.port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(r.starts_with("HTTP/1.1 200"), "GET {path}: {}", r.lines().next().unwrap_or(""));
}

#[test]
fn latency_agrees_with_the_access_log_and_places_each_route() {
    let gw = gateway("latency", LuaJitBuild::Debug);
    // One at a time: no request waits behind another, so each route's time
    // is its own.
    let plan: &[(&str, &str, usize)] = &[
        ("/health", "/health", 200),
        ("/hot/jit", "/hot/jit", 30),
        ("/block/sleep", "/block/sleep", 20),
        ("/slow/upstream", "/slow/upstream?ms=40", 20),
        ("/slow/access", "/slow/access?ms=30", 20),
        ("/api/backend/*", "/api/backend/echo?delay_ms=15", 20),
    ];
    let (s, log, out) = traced(&gw, "latency", || {
        for round in 0..10 {
            for (_, path, n) in plan {
                for _ in 0..n / 10 + usize::from(round < n % 10) {
                    get(&gw, path);
                }
            }
        }
    });
    let locations: HashMap<&str, &str> = [("/api/backend/*", "/api/backend/")].into_iter().collect();
    for (route, _, n) in plan {
        let ours = group(&s, locations.get(route).unwrap_or(route));
        let theirs: Vec<&Logged> = log.iter().filter(|l| l.route == *route).collect();
        assert_eq!(theirs.len(), *n, "the access log has every request to {route}");
        assert_eq!(ours["count"].as_u64().unwrap(), *n as u64, "{route}: one request each, as the access log:\n{out}");
        for (q, key) in [(0.5, "p50_ms"), (0.99, "p99_ms")] {
            let truth = quantile(theirs.iter().map(|l| l.request_ms).collect(), q);
            let got = ours[key].as_f64().unwrap();
            // nginx times requests in whole milliseconds of its cached clock.
            let tolerance = (truth * 0.05).max(1.0);
            assert!((got - truth).abs() <= tolerance, "{route} {key}: ljprobe {got:.2} ms, access log {truth:.2} ms:\n{out}");
        }
        let mean = ours["mean_ms"].as_f64().unwrap();
        let parts: f64 = ours["parts"].as_array().unwrap().iter().map(|p| p["ms"].as_f64().unwrap()).sum();
        assert!((parts - mean).abs() <= mean * 0.01 + 0.01, "{route}: the parts ({parts:.3} ms) add up to the total ({mean:.3} ms)");
    }

    let g = |route: &str| group(&s, route);
    let share = |g: &Value, ms: f64| ms / g["mean_ms"].as_f64().unwrap();
    // Waiting on the upstream it called (a subrequest), nothing on the CPU to speak of.
    let slow = g("/slow/upstream");
    assert!(share(slow, part_ms(slow, "content", |k| k == "waiting on upstream")) >= 0.9, "/slow/upstream waits on its upstream:\n{out}");
    // Waiting in the access phase (ngx.sleep yields).
    let access = g("/slow/access");
    assert!(share(access, part_ms(access, "access", |k| k == "waiting (yielded)")) >= 0.9, "/slow/access waits in its access phase:\n{out}");
    // Blocked off the CPU in the content phase (usleep).
    let block = g("/block/sleep");
    assert!(share(block, part_ms(block, "content", |k| k == "blocked")) >= 0.9, "/block/sleep blocks in its content phase:\n{out}");
    // On the CPU in Lua in the content phase: most of its time, and most of its CPU.
    let hot = g("/hot/jit");
    let lua = part_ms(hot, "content", |k| k == "on-CPU in Lua");
    assert!(share(hot, part_ms(hot, "content", on_cpu)) >= 0.7, "/hot/jit runs on the CPU in its content phase:\n{out}");
    assert!(lua >= 0.8 * part_ms(hot, "content", on_cpu), "/hot/jit's CPU is Lua's:\n{out}");
    // A plain proxy: its upstream phase, as long as nginx's own upstream time.
    let proxy = g("/api/backend/");
    let upstream: f64 = ["upstream"].iter().map(|p| part_ms(proxy, p, |_| true)).sum();
    let truth: Vec<f64> = log.iter().filter(|l| l.route == "/api/backend/*").filter_map(|l| l.upstream_ms).collect();
    let truth = truth.iter().sum::<f64>() / truth.len() as f64;
    assert!((upstream - truth).abs() <= (truth * 0.05).max(1.0), "/api/backend/ upstream: ljprobe {upstream:.2} ms, access log {truth:.2} ms:\n{out}");
    assert!(proxy["upstream"]["response_ms"].as_f64().is_some(), "nginx's own upstream timings are read:\n{out}");
}

#[test]
fn a_request_behind_a_blocking_one_waits_behind_it() {
    // The stripped stock LuaJIT: the Lua function that held the worker is still named.
    let gw = gateway("latency-behind", LuaJitBuild::Stock);
    let (s, _, out) = traced(&gw, "latency-behind", || {
        for _ in 0..3 {
            // /slow/access sleeps 30 ms (yields); 15 ms in, /block/sleep
            // blocks the worker for 200 ms, so the first cannot go on when
            // its sleep ends. The head start is ample for a slow machine to
            // have it sleeping by then.
            let port = gw.config.port;
            let waiting = std::thread::spawn(move || http_get(port, "/slow/access?ms=30").unwrap());
            std::thread::sleep(Duration::from_millis(15));
            get(&gw, "/block/sleep?ms=200");
            assert!(waiting.join().unwrap().starts_with("HTTP/1.1 200"));
        }
    });
    let block = group(&s, "/block/sleep");
    let blocked = part_ms(block, "content", |k| k == "blocked");
    let access = group(&s, "/slow/access");
    let behind = part_ms(access, "access", |k| k == "waiting behind other requests");
    let own = part_ms(access, "access", |k| k == "waiting (yielded)");
    // Its own wait was 30 ms, of which about 15 ms passed before the block
    // began; the rest of the block it spent behind. "Behind" is counted from
    // the start of the loop iteration that ran the block (an upper bound), so
    // the split may move by those 15 ms, never more than its own sleep.
    assert!(blocked >= 150.0, "/block/sleep blocked {blocked:.1} ms:\n{out}");
    assert!(behind >= blocked - 35.0, "/slow/access waited {behind:.1} ms behind a {blocked:.1} ms block:\n{out}");
    assert!(own <= 35.0, "/slow/access's own wait is its 30 ms sleep, not {own:.1} ms:\n{out}");
    let slowest = s["slowest"].as_array().unwrap();
    let held = slowest.iter().find(|r| r["location"] == "/block/sleep").expect("a /block/sleep request is among the slowest");
    let p = xtask::planted::for_route("/block/sleep").unwrap();
    let by = held["held_by"].as_str().unwrap_or("");
    assert!(by.contains(&p.function) && by.contains(&format!(":{}", p.line)), "held by {by}, not {}:{}", p.function, p.line);
}

#[test]
fn sampled_counts_are_scaled_to_what_nginx_took() {
    let gw = gateway("latency-sampled", LuaJitBuild::Debug);
    // Long enough for two windows (one every 10 s), the same mix all along.
    let (s, log, out) = traced_with(&gw, "latency-sampled", &["--sample", "40"], || {
        let until = std::time::Instant::now() + Duration::from_secs(16);
        while std::time::Instant::now() < until {
            for _ in 0..4 {
                get(&gw, "/health");
            }
            get(&gw, "/slow/access?ms=2");
            get(&gw, "/hot/jit");
        }
    });
    let sampling = &s["sampling"];
    assert!(sampling["windows"].as_u64().unwrap() >= 2, "several windows: {sampling}");
    let followed = sampling["followed"].as_u64().unwrap();
    let taken = sampling["taken_by_nginx"].as_u64().expect("Debian's nginx counts its requests (stub_status)");
    assert!(followed > 0 && followed < taken, "some requests followed, not all: {sampling}");
    for route in ["/health", "/slow/access"] {
        let truth = log.iter().filter(|l| l.route == route).count() as f64;
        let estimate = group(&s, route)["estimated_count"].as_f64().unwrap();
        assert!((estimate - truth).abs() <= truth * 0.15, "{route}: estimated {estimate:.0} requests, the access log has {truth}:\n{out}");
    }
    let access = group(&s, "/slow/access");
    assert!(part_ms(access, "access", |k| k == "waiting (yielded)") >= 1.5, "a sampled request is followed whole:\n{out}");
    // The scheduler's and the event loop's tracepoints and the timer samples
    // open only with the windows: a followed request's time is still split.
    let hot = group(&s, "/hot/jit");
    let cpu = part_ms(hot, "content", on_cpu);
    assert!(cpu >= 0.7 * hot["mean_ms"].as_f64().unwrap(), "/hot/jit runs on the CPU in its content phase when sampled:\n{out}");
    assert!(part_ms(hot, "content", |k| k == "on-CPU in Lua") >= 0.8 * cpu, "the windows' timer samples find its Lua:\n{out}");
}

#[test]
fn latency_refuses_what_is_not_nginx_in_one_sentence() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let o = ljprobe(&["latency", "--pid", &sleeper.id().to_string(), "--duration", "1s"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_one_sentence(&o, "is not nginx");
    assert_one_sentence(&ljprobe(&["latency", "--pid", "999999999", "--duration", "1s"]), "999999999");
}
