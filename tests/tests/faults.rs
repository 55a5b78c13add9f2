//! What happens in production: ljprobe killed with SIGKILL, nginx reloading and
//! losing a worker mid-run, two tools on one worker at once, a target that
//! replaces its program. The kernel's own lists (bpftool) and the gateway's
//! answers are the ground truth, not ljprobe's word.

use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use ljprobe_host::proc;
use ljprobe_tests::{cpu_time, gateway, gateway_with_workers, luajit, ljprobe_then, out_dir, read_folded, require_root, stderr, stdout, weight};
use serde_json::Value;
use xtask::{
    gateway::{http_get, LuaJitBuild, Running},
    load::Load,
    planted,
};

/// The BPF objects process `pid` holds (`prog`, `link` or `map` with its ID),
/// from its file descriptors: perf events and tracepoints are held through
/// `bpf_link`s, uprobes too.
fn bpf_objects_of(pid: u32) -> Vec<(&'static str, u64)> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return vec![] };
    let mut objects = Vec::new();
    for fd in fds.filter_map(Result::ok) {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
        let object = match (field("link_id:"), field("prog_id:"), field("map_id:")) {
            (Some(id), _, _) => ("link", id),
            (None, Some(id), _) => ("prog", id),
            (None, None, Some(id)) => ("map", id),
            _ => continue,
        };
        objects.push(object);
    }
    objects
}

/// Whether the kernel still lists a BPF object (`bpftool prog|link|map show id N`).
fn exists((kind, id): (&str, u64)) -> bool {
    let out = Command::new("bpftool").args([kind, "show", "id", &id.to_string()]).output();
    out.expect("bpftool runs (cargo xtask setup installs it)").status.success()
}

/// Probe definitions the kernel keeps in tracefs (legacy uprobes and kprobes).
fn tracefs_probes() -> String {
    ["uprobe_events", "kprobe_events"]
        .iter()
        .map(|f| fs::read_to_string(format!("/sys/kernel/tracing/{f}")).unwrap_or_default())
        .collect()
}

fn health(gw: &Running) -> bool {
    http_get(gw.config.port, "/health").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
}

fn out_args(name: &str) -> Vec<String> {
    let dir = out_dir();
    ["--json", &format!("{name}.json"), "--svg", &format!("{name}.svg"), "--folded", &format!("{name}.folded")]
        .iter()
        .map(|a| if a.starts_with("--") { a.to_string() } else { dir.join(a).display().to_string() })
        .collect()
}

fn summary(name: &str) -> Value {
    let path = out_dir().join(format!("{name}.json"));
    serde_json::from_str(&fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn sigkill_leaves_nothing_attached_and_the_target_keeps_serving() {
    let gw = gateway("fault-kill9", LuaJitBuild::Debug);
    let worker = gw.worker();
    let load = Load { url: gw.config.url(), route: "/hot/jit?n=0.05".into(), duration: Duration::from_secs(40), connections: 2, rate: None };
    let mut wrk = load.spawn().unwrap();
    let master = gw.master().to_string();
    for tool in [&["cpu", "--stack", "mixed"][..], &["offcpu", "--stack", "mixed"], &["epoll-loop"]] {
        let mut args: Vec<&str> = tool.to_vec();
        args.extend(["--pid", &master, "--duration", "60s"]);
        // Seen while it runs, so that the checks after the kill could fail.
        let (mut objects, mut listed) = (Vec::new(), false);
        let probes_before = tracefs_probes();
        let started = Instant::now();
        let out = ljprobe_then(&args, |pid| {
            objects = bpf_objects_of(pid);
            listed = objects.iter().all(|&o| exists(o));
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        assert!(started.elapsed() < Duration::from_secs(50), "{tool:?} was not killed: {}", stderr(&out));
        let has = |kind| objects.iter().any(|o| o.0 == kind);
        assert!(has("prog") && has("link") && has("map"), "{tool:?} held no program, link and map: {objects:?}");
        assert!(listed, "the kernel does not list what {tool:?} held: {objects:?}");
        // The kernel frees a dead process's BPF objects once their last
        // reference goes: prompt, but not synchronous with its exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while objects.iter().any(|&o| exists(o)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<_> = objects.iter().copied().filter(|&o| exists(o)).collect();
        assert!(left.is_empty(), "{tool:?}: {left:?} of the killed ljprobe are still in the kernel");
        assert_eq!(tracefs_probes(), probes_before, "{tool:?} left probe definitions in tracefs");
        assert!(proc::alive(worker), "the worker died under {tool:?}");
        assert!(health(&gw), "the gateway stopped answering after {tool:?} was killed");
    }
    let _ = wrk.kill();
    let _ = wrk.wait();
    assert_eq!(proc::nginx_workers(gw.master()), vec![worker], "the worker was replaced");
}

/// Polls the master's workers until `done` holds for them (at most 10 s).
fn wait_for_workers(master: u32, done: impl Fn(&[u32]) -> bool) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = proc::nginx_workers(master);
        if done(&now) || Instant::now() > deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_master_is_followed_through_reload_and_a_worker_crash() {
    let gw = gateway_with_workers("fault-follow", LuaJitBuild::Debug, 2);
    let master = gw.master();
    let first = gw.status.worker_pids.clone();
    let p = planted::for_route("/hot/jit").unwrap();
    // Many connections, so that the workers that start mid-run get some.
    let load = Load { url: gw.config.url(), route: "/hot/jit?n=0.1".into(), duration: Duration::from_secs(40), connections: 8, rate: None };
    let mut wrk = load.spawn().unwrap();
    let name = "fault-follow";
    let mut args: Vec<String> = ["cpu", "--pid", &master.to_string(), "--duration", "12s", "--per-worker"].map(String::from).to_vec();
    args.extend(out_args(name));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut reloaded, mut respawned, mut crashed) = (Vec::new(), Vec::new(), 0);
    let out = ljprobe_then(&args, |_| {
        thread::sleep(Duration::from_secs(2));
        // SAFETY: signalling the gateway's master, as `nginx -s reload` does.
        unsafe { libc::kill(master as i32, libc::SIGHUP) };
        reloaded = wait_for_workers(master, |w| w.len() == 2 && w.iter().all(|p| !first.contains(p)));
        thread::sleep(Duration::from_secs(3));
        crashed = reloaded[0];
        // SAFETY: a worker crash, as a segfault in a C module would be.
        unsafe { libc::kill(crashed as i32, libc::SIGKILL) };
        respawned = wait_for_workers(master, |w| w.len() == 2 && !w.contains(&crashed));
    });
    // What the surviving new workers ran, all of it inside the run: nginx
    // hands connections to whichever worker accepts first, so one may get
    // little of the load.
    let ran: Vec<(u32, Duration)> = respawned.iter().map(|&w| (w, cpu_time(w).unwrap_or_default())).collect();
    let _ = wrk.kill();
    let _ = wrk.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(reloaded.iter().all(|p| !first.contains(p)), "the reload started no new workers: {first:?} -> {reloaded:?}");
    let new_one = *respawned.iter().find(|p| !reloaded.contains(p)).expect("the master respawned the crashed worker");

    let s = summary(name);
    let seen: Vec<u64> = s["pids"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    for pid in first.iter().chain(&reloaded).chain([&new_one]) {
        assert!(seen.contains(&u64::from(*pid)), "worker {pid} is not among the PIDs seen {seen:?}: {s}");
    }
    let events = s["events"].as_array().unwrap();
    let has = |pid: u32, what: &str| events.iter().any(|e| e["pid"] == pid && e["what"] == what);
    for &pid in reloaded.iter().chain([&new_one]) {
        assert!(has(pid, "joined"), "no `joined` event for worker {pid}: {s}");
    }
    assert!(has(crashed, "exited"), "the crash of {crashed} is not reported: {s}");
    assert!(first.iter().all(|&pid| has(pid, "exited")), "the retired workers' exit is not reported: {s}");

    // Really sampled, not only listed: each new worker that ran gets the
    // samples its CPU time calls for (99 Hz), under its own root
    // (`--per-worker`), and the planted function is named from their memory.
    let stacks = read_folded(&out_dir().join(format!("{name}.folded")));
    let label = format!("{} {}", p.function, p.location());
    for (pid, cpu) in &ran {
        let expected = cpu.as_secs_f64() * 99.0;
        let got = weight(&stacks, |st| st.starts_with(&format!("[pid {pid}];")));
        assert!(got as f64 >= 0.4 * expected - 2.0, "worker {pid} ran {cpu:?} but has {got} samples: {stacks:#?}");
    }
    let planted = weight(&stacks, |st| respawned.iter().any(|pid| st.starts_with(&format!("[pid {pid}];"))) && st.contains(&label));
    assert!(planted > 0, "no sample of {label} in the workers that started during the run: {stacks:#?}");
}

#[test]
fn two_tools_on_one_worker_both_work() {
    let gw = gateway("fault-two-tools", LuaJitBuild::Debug);
    let (hot, sleep) = (planted::for_route("/hot/jit").unwrap(), planted::for_route("/block/sleep").unwrap());
    let url = gw.config.url();
    let load = |route: &str, rate| Load { url: url.clone(), route: route.into(), duration: Duration::from_secs(20), connections: 1, rate }.spawn().unwrap();
    // Light enough that the worker seldom waits for a CPU: the blocked time
    // is the sleep's, and the samples the hot loop's. Heavy enough for about
    // fifty samples of it in 5 s at 99 Hz: at a fifth of this (n=0.2), 19
    // samples once put only 9 in it, beside 5 of nginx's own C code.
    let mut loads = [load("/hot/jit?n=0.5", Some(20)), load("/block/sleep", Some(20))];
    thread::sleep(Duration::from_secs(1));
    let worker = gw.worker().to_string();
    let run = |tool: &'static str, name: &'static str| {
        let worker = worker.clone();
        thread::spawn(move || {
            let mut args: Vec<String> = [tool, "--pid", &worker, "--duration", "5s"].map(String::from).to_vec();
            args.extend(out_args(name));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ljprobe_then(&args, |_| ())
        })
    };
    let (cpu, off) = (run("cpu", "fault-two-cpu"), run("offcpu", "fault-two-offcpu"));
    let (cpu, off) = (cpu.join().unwrap(), off.join().unwrap());
    for l in &mut loads {
        let _ = l.kill();
        let _ = l.wait();
    }
    assert!(cpu.status.success(), "cpu: {}", stderr(&cpu));
    assert!(off.status.success(), "offcpu: {}", stderr(&off));
    let hot_label = format!("{} {}", hot.function, hot.location());
    let on = read_folded(&out_dir().join("fault-two-cpu.folded"));
    let on_total = weight(&on, |_| true);
    assert!(weight(&on, |s| s.contains(&hot_label)) * 2 > on_total, "cpu lost {hot_label}: {on:#?}");
    let sleep_label = format!("{} {}", sleep.function, sleep.location());
    let blocked = read_folded(&out_dir().join("fault-two-offcpu.folded"));
    // Blocked in a system call; time waiting for a CPU (the hot route's
    // neighbour, a CPU quota) is shown apart and is not the sleep's.
    let blocked_total = weight(&blocked, |s| !s.contains("[runnable: waiting for a CPU]"));
    assert!(blocked_total > 0 && weight(&blocked, |s| s.contains(&sleep_label)) * 10 >= blocked_total * 8, "offcpu lost {sleep_label}: {blocked:#?}");
}

/// Burns CPU in `heavy` for `arg[1]` seconds, then replaces itself with `sleep 30`.
const EXECS: &str = r#"
local ffi = require("ffi")
ffi.cdef("int execv(const char *path, char *const argv[]);")
local function heavy(n)
  local x = 0
  for i = 1, n do x = (x + i * 3) % 1000003 end
  return x
end
local deadline = os.clock() + tonumber(arg[1])
local sink = 0
while os.clock() < deadline do sink = sink + heavy(100000) end
io.stdout:write(sink, "\n")
io.stdout:flush()
local argv = ffi.new("char *[3]", { ffi.cast("char *", "sleep"), ffi.cast("char *", "30"), nil })
ffi.C.execv("/bin/sleep", argv)
"#;

#[test]
fn a_target_that_execs_mid_run_is_reported_and_its_samples_written() {
    require_root();
    let mut child = luajit::stock_build().script("execs", EXECS).1.arg("2").spawn().unwrap();
    thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    let name = "fault-exec";
    let mut args: Vec<String> = ["cpu", "--pid", &pid.to_string(), "--duration", "20s"].map(String::from).to_vec();
    args.extend(out_args(name));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ljprobe_then(&args, |_| ());
    let exe_now = fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exe_now.ends_with("/sleep"), "the script did not exec: {exe_now}");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("replaced its program"), "exec not reported: {}", stderr(&out));
    let s = summary(name);
    assert_eq!(s["stopped_by"], "target-exec", "{s}");
    assert!(s["duration_secs"].as_f64().unwrap() < 15.0, "ljprobe went on after the exec: {s}");
    let ev = &s["events"][0];
    assert!(ev["what"] == "exec" && ev["exe"].as_str().is_some_and(|e| e.ends_with("/sleep")), "{s}");
    let stacks = read_folded(&out_dir().join(format!("{name}.folded")));
    assert!(weight(&stacks, |s| s.contains("heavy ")) > 0, "the samples before the exec are lost: {stacks:#?}");
}
