//! `ljprobe cpu` against real LuaJIT processes: fidelity against LuaJIT's own
//! profiler on the same run, on the debug and the stock stripped build.

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use ljprobe_tests::{
    fidelity::{assert_samples, fidelity, CpuShare, WORKLOAD},
    luajit as jp,
    assert_one_sentence, gateway, gateway_with_workers, ljprobe, ljprobe_then, load_until_stopped, out_dir, read_folded,
    require_root, stderr, stdout, weight,
};
use serde_json::Value;
use xtask::{gateway::LuaJitBuild, load::Load, planted};

#[test]
fn lua_shares_agree_with_luajits_own_profiler_on_the_debug_build() {
    // luajit.c's pmain is a C function called through lua_cpcall: its symbol, not an address.
    fidelity(jp::debug_build(), Some("pmain"));
}

#[test]
fn lua_shares_agree_with_luajits_own_profiler_on_the_stock_build() {
    fidelity(jp::stock_build(), None);
}

#[test]
fn a_target_that_exits_mid_run_still_gets_its_samples_written() {
    require_root();
    let dir = out_dir();
    let script = dir.join("short.lua");
    fs::write(&script, WORKLOAD).unwrap();
    // 1.5 s of CPU time (os.clock), however long that takes here.
    let mut child = Command::new("/usr/bin/luajit").arg(&script).arg("1.5").stdout(Stdio::null()).spawn().unwrap();
    thread::sleep(Duration::from_millis(300));
    let json = dir.join("cpu-short.json");
    let mut from = None;
    let out = ljprobe_then(
        &["cpu", "--pid", &child.id().to_string(), "--duration", "20s", "--json", json.to_str().unwrap(), "--svg", dir.join("cpu-short.svg").to_str().unwrap()],
        |_| from = Some(CpuShare::start(child.id())),
    );
    // The target has exited; unreaped, it still has its CPU time.
    let cpu = from.expect("ljprobe started tracing").cpu();
    child.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("exited"), "exit not reported: {}", stderr(&out));
    let summary: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"], "target-exited");
    // The default 99 Hz for the CPU time it had left once ljprobe traced it.
    let expected = 99.0 * cpu.as_secs_f64();
    let samples = summary["samples"].as_u64().unwrap();
    assert!(samples as f64 >= 0.5 * expected && expected >= 20.0, "{samples} samples for {cpu:?} of CPU at 99 Hz: {summary}");
    assert!(summary["duration_secs"].as_f64().unwrap() < 10.0);
}

#[test]
fn a_process_without_luajit_gets_one_sentence() {
    require_root();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = ljprobe(&["cpu", "--pid", &sleeper.id().to_string(), "--duration", "1s"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_one_sentence(&out, "has no LuaJIT mapped");
}

/// Samples the gateway's master while `route` is under load; returns the JSON
/// summary and the folded stacks as (stack, weight).
fn profile_gateway_route(name: &str, route: &str) -> (Value, Vec<(String, u64)>) {
    profile_gateway_route_with(name, route, &[])
}

fn profile_gateway_route_with(name: &str, route: &str, extra: &[&str]) -> (Value, Vec<(String, u64)>) {
    let gw = gateway(name, LuaJitBuild::Debug);
    // Until stopped: however long ljprobe takes to start, the load outlasts it.
    let wrk = load_until_stopped(Load { url: gw.config.url(), route: route.into(), duration: Duration::ZERO, connections: 4, rate: None });
    thread::sleep(Duration::from_secs(1));
    let dir = out_dir();
    let (json, folded) = (dir.join(format!("{name}.json")), dir.join(format!("{name}.folded")));
    let master = gw.master().to_string();
    let svg = dir.join(format!("{name}.svg"));
    let mut args = vec![
        "cpu", "--pid", &master, "--duration", "3s", "--freq", "499",
        "--json", json.to_str().unwrap(), "--folded", folded.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = ljprobe(&args);
    drop(wrk);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let summary: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    (summary, read_folded(&folded))
}

#[test]
fn gateway_hot_jit_is_its_planted_function_running_in_traces() {
    let p = planted::for_route("/hot/jit").unwrap();
    let label = format!("{} {}", p.function, p.location());
    let (summary, stacks) = profile_gateway_route("cpu-hot-jit", "/hot/jit");
    let top = &summary["top_frames"][0];
    assert_eq!(top["frame"], label.as_str(), "top function is not the planted one: {summary}");
    assert!(top["self_share"].as_f64().unwrap() > 0.5, "{top}");
    let with_fn = weight(&stacks, |s| s.contains(&label));
    let in_trace = weight(&stacks, |s| s.contains(&format!("{label};trace#")));
    assert!(in_trace * 10 >= with_fn * 8, "only {in_trace} of {with_fn} samples of {label} in traces");
}

#[test]
fn gateway_hot_nyi_is_its_planted_function_mostly_interpreted() {
    let p = planted::for_route("/hot/nyi").unwrap();
    let label = format!("{} {}", p.function, p.location());
    let (summary, stacks) = profile_gateway_route("cpu-hot-nyi", "/hot/nyi");
    let total = weight(&stacks, |_| true);
    let with_fn = weight(&stacks, |s| s.contains(&label));
    assert!(with_fn * 10 >= total * 6, "{label} in only {with_fn} of {total} samples:\n{summary}");
    // FNEW aborts every trace through it: at most a tenth may be compiled code.
    let in_trace = weight(&stacks, |s| s.contains(&label) && s.contains("trace#"));
    assert!(in_trace * 10 <= with_fn, "{in_trace} of {with_fn} samples of {label} ran in traces");
}

fn depth(stack: &str) -> usize {
    stack.split(';').count()
}

#[test]
fn gateway_c_level_graph_unwinds_nginx_and_luajit_deeply() {
    let (_, stacks) = profile_gateway_route_with("cpu-c", "/hot/jit", &["--stack", "c"]);
    let total = weight(&stacks, |_| true);
    let deep = weight(&stacks, |s| depth(s) > 5);
    assert!(deep * 2 > total, "only {deep} of {total} samples unwound deeper than 5 frames");
    assert!(weight(&stacks, |s| s.contains("ngx_")) * 2 > total, "nginx frames missing from most samples");
    // /hot/jit runs in traces, which the C graph shows right on top of the lua
    // module's entry into the VM; the rest goes through lj_*/lua_* frames.
    let in_luajit = weight(&stacks, |s| {
        s.contains("ngx_http_lua_run_thread;") && (s.contains(";trace#") || s.contains(";lj_") || s.contains(";lua_"))
    });
    assert!(in_luajit * 2 > total, "only {in_luajit} of {total} samples show nginx entering LuaJIT");
}

#[test]
fn gateway_mixed_graph_puts_lua_between_nginx_and_what_lua_calls() {
    let p = planted::for_route("/hot/jit").unwrap();
    let label = format!("{} {}", p.function, p.location());
    let (_, stacks) = profile_gateway_route_with("cpu-mixed", "/hot/jit", &["--stack", "mixed"]);
    let total = weight(&stacks, |_| true);
    // nginx's own frames below the Lua ones: the run_thread entry, then Lua.
    let spliced = weight(&stacks, |s| {
        let (Some(ngx), Some(lua)) = (s.find("ngx_http_lua_run_thread"), s.find(&label)) else { return false };
        ngx < lua
    });
    assert!(spliced * 2 > total, "only {spliced} of {total} samples have {label} above ngx_http_lua_run_thread");
}

#[test]
fn kernel_frames_sit_on_top_with_kernel() {
    require_root();
    let dir = out_dir();
    let script = dir.join("syscalls.lua");
    fs::write(&script, "local f = io.open('/dev/zero', 'rb')\nlocal t = os.clock() + 4\nwhile os.clock() < t do f:read(65536) end\n").unwrap();
    let mut child = Command::new("/usr/bin/luajit").arg(&script).spawn().unwrap();
    thread::sleep(Duration::from_millis(300));
    let folded = dir.join("cpu-kernel.folded");
    let out = ljprobe(&[
        "cpu", "--pid", &child.id().to_string(), "--duration", "2s", "--freq", "499", "--kernel",
        "--folded", folded.to_str().unwrap(), "--svg", dir.join("cpu-kernel.svg").to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&folded).unwrap();
    let stacks: Vec<(String, u64)> =
        text.lines().filter_map(|l| l.rsplit_once(' ').map(|(s, w)| (s.to_string(), w.parse().unwrap_or(0)))).collect();
    let total = weight(&stacks, |_| true);
    let kernel = weight(&stacks, |s| s.ends_with("_[k]"));
    assert!(kernel * 5 > total, "reading /dev/zero: only {kernel} of {total} samples end in kernel frames");
}

#[test]
fn c_level_graph_of_a_process_without_lua_notes_it() {
    require_root();
    let mut yes = Command::new("yes").stdout(Stdio::null()).spawn().unwrap();
    let dir = out_dir();
    let folded = dir.join("cpu-yes.folded");
    let out = ljprobe(&[
        "cpu", "--pid", &yes.id().to_string(), "--duration", "1s", "--stack", "c",
        "--folded", folded.to_str().unwrap(), "--svg", dir.join("cpu-yes.svg").to_str().unwrap(),
    ]);
    let _ = yes.kill();
    let _ = yes.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no Lua VM"), "{}", stderr(&out));
    let text = fs::read_to_string(&folded).unwrap();
    assert!(text.contains("main"), "no native frames for `yes`:\n{text}");
}

#[test]
fn per_worker_roots_each_stack_in_its_worker() {
    let gw = gateway_with_workers("cpu-per-worker", LuaJitBuild::Debug, 2);
    assert_eq!(gw.status.worker_pids.len(), 2);
    let load = Load { url: gw.config.url(), route: "/hot/jit".into(), duration: Duration::ZERO, connections: 8, rate: None };
    let wrk = load_until_stopped(load);
    thread::sleep(Duration::from_secs(1));
    let dir = out_dir();
    let folded = dir.join("cpu-per-worker.folded");
    let out = ljprobe(&[
        "cpu", "--pid", &gw.master().to_string(), "--duration", "2s", "--per-worker",
        "--folded", folded.to_str().unwrap(), "--svg", dir.join("cpu-per-worker.svg").to_str().unwrap(),
    ]);
    drop(wrk);
    assert!(out.status.success(), "{}", stderr(&out));
    let roots: Vec<String> = fs::read_to_string(&folded).unwrap().lines().map(|l| l.split(';').next().unwrap().to_string()).collect();
    assert!(!roots.is_empty());
    let workers: Vec<String> = gw.status.worker_pids.iter().map(|p| format!("[pid {p}]")).collect();
    for r in &roots {
        assert!(workers.contains(r), "stack rooted in {r}, not in a worker {workers:?}");
    }
}

#[test]
fn ctrl_c_stops_early_and_still_writes_everything() {
    require_root();
    let dir = out_dir();
    let script = dir.join("ctrlc.lua");
    fs::write(&script, WORKLOAD).unwrap();
    let mut target = Command::new("/usr/bin/luajit").arg(&script).arg("20").stdout(Stdio::null()).spawn().unwrap();
    thread::sleep(Duration::from_millis(300));
    let (json, svg) = (dir.join("cpu-ctrlc.json"), dir.join("cpu-ctrlc.svg"));
    let _ = fs::remove_file(&svg);
    let pid = target.id().to_string();
    let mut from = None;
    let out = ljprobe_then(
        &["cpu", "--pid", &pid, "--duration", "60s", "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()],
        |ljprobe| {
            from = Some(CpuShare::start(target.id()));
            thread::sleep(Duration::from_secs(2));
            // SAFETY: signalling our own child.
            unsafe { libc::kill(ljprobe as i32, libc::SIGINT) };
        },
    );
    let share = from.expect("ljprobe started tracing").share();
    let _ = target.kill();
    let _ = target.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"], "interrupted");
    assert!(summary["duration_secs"].as_f64().unwrap() < 10.0);
    // The default 99 Hz, for about 2 s of whatever CPU the target got.
    assert_samples(&summary, 99.0, share);
    assert!(fs::read_to_string(&svg).unwrap().contains("heavy"), "the SVG lacks what was collected");
}

#[test]
fn stacks_deeper_than_the_walk_are_cut_visibly() {
    require_root();
    let dir = out_dir();
    let script = dir.join("deep.lua");
    // 200 nested calls, spinning at the bottom: deeper than the 128 frames walked.
    fs::write(
        &script,
        "local function down(n)\n  if n == 0 then local x = 0 while true do x = (x + 1) % 7 end end\n  return down(n - 1) + 1\nend\ndown(200)\n",
    )
    .unwrap();
    let mut child = Command::new("/usr/bin/luajit").arg(&script).spawn().unwrap();
    thread::sleep(Duration::from_millis(300));
    let folded = dir.join("cpu-deep.folded");
    let out = ljprobe(&[
        "cpu", "--pid", &child.id().to_string(), "--duration", "1s",
        "--folded", folded.to_str().unwrap(), "--svg", dir.join("cpu-deep.svg").to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&folded).unwrap();
    let heaviest = text.lines().max_by_key(|l| l.rsplit_once(' ').and_then(|(_, w)| w.parse::<u64>().ok())).unwrap();
    assert!(heaviest.starts_with("[truncated"), "no truncation marker at the root: {}", &heaviest[..120.min(heaviest.len())]);
    assert!(heaviest.matches("down ").count() >= 64, "fewer than 64 Lua frames walked");
}
