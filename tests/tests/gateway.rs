//! The bundled gateway is the ground truth of every other test: check that it
//! really serves its routes on both LuaJIT builds, and that the planted-problem
//! table in gateway/README.md points at real functions.

use std::{fs, time::Duration};

use ljprobe_tests::{cpu_time, gateway, request_cost};
use xtask::{
    gateway::{http_get, LuaJitBuild},
    load::{requests_per_sec, Load},
    paths, planted,
};

fn get(port: u16, path: &str) -> (u16, String) {
    let resp = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, resp)
}

#[test]
fn serves_every_route_on_the_debug_luajit_and_maps_it() {
    let gw = gateway("gateway-debug", LuaJitBuild::Debug);
    let lib = &gw.status.libluajit;
    assert_eq!(lib.len(), 1, "one worker, one libluajit: {lib:?}");
    let debug_lib = paths::luajit_debug_lib();
    assert!(lib[0].starts_with(debug_lib.to_str().unwrap()), "worker mapped {} not the debug build", lib[0]);

    let port = gw.config.port;
    let (s, body) = get(port, "/health");
    assert_eq!(s, 200, "{body}");
    for route in ["/hot/jit?n=1", "/hot/nyi?n=1", "/alloc/churn", "/block/sleep?ms=2", "/slow/upstream?ms=5", "/leak"] {
        let (s, body) = get(port, route);
        assert_eq!(s, 200, "{route}: {body}");
    }
    let (s, metrics) = get(port, "/metrics");
    assert_eq!(s, 200);
    // Prometheus text format, counting what we just sent.
    assert!(metrics.contains("# TYPE"), "{metrics}");
    assert!(metrics.contains("/hot/jit"), "{metrics}");
}

#[test]
fn runs_on_the_stock_stripped_luajit_and_takes_load() {
    let gw = gateway("gateway-stock", LuaJitBuild::Stock);
    let lib = &gw.status.libluajit;
    assert_eq!(lib.len(), 1);
    assert!(lib[0].starts_with("/usr/lib/"), "stock gateway mapped {}", lib[0]);
    // What a request costs the worker on this machine, one at a time.
    let cost = request_cost(&gw, "/hot/jit", 5, Duration::ZERO);
    let (worker, cpu_before, started) = (gw.worker(), cpu_time(gw.worker()).unwrap(), std::time::Instant::now());
    let report = Load {
        url: gw.config.url(),
        route: "/hot/jit".into(),
        duration: Duration::from_secs(2),
        connections: 2,
        rate: None,
    }
    .run()
    .unwrap();
    let busy = cpu_time(worker).unwrap().saturating_sub(cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    let rps = requests_per_sec(&report).expect("wrk reports requests/sec");
    assert!(!report.contains("Non-2xx"), "errors under load:\n{report}");
    // Saturated by two connections, the worker serves as many requests as its
    // CPU time pays for at that cost, whatever share of a CPU it got (all of
    // one, or less beside other processes or under a CPU quota): a tenth at
    // least, or it was not under load.
    let paid = busy / cost.cpu.as_secs_f64();
    assert!(busy >= 0.1, "the worker was busy {busy:.2} of the time:\n{report}");
    assert!((0.75..=1.33).contains(&(rps / paid)), "{rps} req/s; its CPU time ({busy:.2} of a CPU at {:?} a request) pays for {paid:.0}:\n{report}", cost.cpu);
}

#[test]
fn paced_load_stays_near_the_asked_rate() {
    let gw = gateway("gateway-rate", LuaJitBuild::Debug);
    let report = Load {
        url: gw.config.url(),
        route: "/health".into(),
        duration: Duration::from_secs(3),
        connections: 2,
        rate: Some(50),
    }
    .run()
    .unwrap();
    let rps = requests_per_sec(&report).unwrap();
    assert!((30.0..=70.0).contains(&rps), "asked 50 req/s, got {rps}:\n{report}");
}

#[test]
fn planted_table_names_real_functions_at_their_definition_lines() {
    let all = planted::all().unwrap();
    for route in ["/hot/nyi", "/hot/jit", "/alloc/churn", "/block/sleep", "/slow/upstream", "/leak"] {
        assert!(all.iter().any(|p| p.route == route), "no planted row for {route}");
    }
    for p in &all {
        let text = fs::read_to_string(p.path()).unwrap_or_else(|e| panic!("{}: {e}", p.file));
        let line = text.lines().nth(p.line as usize - 1).unwrap_or_default();
        assert!(
            line.contains("function") && line.contains(&p.function),
            "{}:{} is `{line}`, not the definition of {}",
            p.file,
            p.line,
            p.function
        );
    }
}
