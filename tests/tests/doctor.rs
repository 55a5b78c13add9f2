//! `ljprobe doctor` against real targets: the gateway's workers on both LuaJIT
//! builds, standalone luajit processes, and the bad inputs a user will try.

use std::{
    fs,
    process::{Child, Command, Output, Stdio},
    thread,
    time::Duration,
};

use ljprobe_tests::{assert_one_sentence, gateway, ljprobe, require_root, stderr, stdout};
use serde_json::Value;
use xtask::{gateway::LuaJitBuild, load::Load, paths};

/// A child process killed when the test ends, pass or fail.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kid {
    fn spawn(program: &str, args: &[&str]) -> Kid {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Kid(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

/// Spins in one Lua loop forever: after start-up it calls no LuaJIT API at all.
const SPIN: &str = "local x = 0 while true do for i = 1, 1e7 do x = (x + i) % 7 end end";

fn debug_luajit() -> String {
    paths::luajit_debug().join("bin/luajit").to_string_lossy().into_owned()
}

fn doctor_json(name: &str, pid: &str, extra: &[&str]) -> (Output, Value) {
    let dir = paths::target().join("test-out");
    fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("doctor-{name}.json"));
    let _ = fs::remove_file(&json);
    let mut args = vec!["doctor", "--pid", pid, "--json", json.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = ljprobe(&args);
    let value = fs::read_to_string(&json).map(|t| serde_json::from_str(&t).unwrap()).unwrap_or(Value::Null);
    (out, value)
}

fn worker_of(report: &Value, pid: u32) -> &Value {
    report["target"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["process"]["pid"] == pid)
        .unwrap_or_else(|| panic!("worker {pid} missing from {report}"))
}

fn gateway_under_load(name: &str, build: LuaJitBuild) -> (Output, Value, u32) {
    let gw = gateway(name, build);
    let load = Load {
        url: gw.config.url(),
        route: "/hot/jit".into(),
        // Killed once doctor is done: however long that takes here.
        duration: ljprobe_tests::UNTIL_STOPPED,
        connections: 2,
        rate: None,
    };
    let wrk = Kid(load.spawn().unwrap());
    thread::sleep(Duration::from_millis(500));
    let (out, report) = doctor_json(name, &gw.master().to_string(), &[]);
    drop(wrk);
    (out, report, gw.worker())
}

#[test]
fn finds_the_vm_of_gateway_workers_on_the_debug_luajit() {
    let (out, report, worker) = gateway_under_load("doctor-debug", LuaJitBuild::Debug);
    assert!(out.status.success(), "doctor failed:\n{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("global_State at 0x"), "{}", stdout(&out));
    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1, "one worker, one VM: {vms:?}");
    assert_eq!(vms[0]["pid"], worker);
    assert_eq!(vms[0]["found"], true);
    let lj = &worker_of(&report, worker)["luajit"];
    assert!(lj["path"].as_str().unwrap().contains("target/luajit-debug/lib/libluajit"), "{lj}");
    assert_eq!(lj["symbols"]["kind"], "symtab");
    assert!(lj["symbols"]["count"].as_u64().unwrap() > 100);
    assert_eq!(lj["layout"]["source"]["kind"], "dwarf");
    assert_eq!(lj["layout"]["name"], "openresty-2.1-gc64-x86_64");
    assert_eq!(lj["layout"]["gc64"], true);
    assert_eq!(lj["openresty_fork"], true);
}

#[test]
fn finds_the_vm_of_gateway_workers_on_the_stock_stripped_luajit() {
    let (out, report, worker) = gateway_under_load("doctor-stock", LuaJitBuild::Stock);
    assert!(out.status.success(), "doctor failed:\n{}\n{}", stdout(&out), stderr(&out));
    let lj = &worker_of(&report, worker)["luajit"];
    assert!(lj["path"].as_str().unwrap().starts_with("/usr/lib/"), "{lj}");
    assert_eq!(lj["symbols"]["kind"], "missing");
    assert_eq!(lj["layout"]["source"]["kind"], "builtin");
    assert_eq!(lj["layout"]["name"], "openresty-2.1-gc64-x86_64");
    assert_eq!(lj["version"], "2.1.0-beta3");
    assert_eq!(report["vms"][0]["found"], true);
}

#[test]
fn finds_a_vm_that_calls_no_api_after_attach_from_the_dispatch_register() {
    require_root();
    for luajit in ["/usr/bin/luajit".to_string(), debug_luajit()] {
        let spin = Kid::spawn(&luajit, &["-e", SPIN]);
        thread::sleep(Duration::from_millis(300));
        let (out, report) = doctor_json("spin", &spin.pid(), &["-v"]);
        assert!(out.status.success(), "{luajit}: {}\n{}", stdout(&out), stderr(&out));
        let found_by = report["vms"][0]["found_by"].as_str().unwrap_or_default();
        assert!(found_by.contains("dispatch register"), "{luajit}: found by {found_by}");
        // -v forwards the kernel program's own aya-log message.
        assert!(stderr(&out).contains("global_State at"), "{luajit}: {}", stderr(&out));
    }
}

#[test]
fn says_so_when_no_lua_runs_instead_of_hanging() {
    require_root();
    // Blocked in system(3): the VM exists but runs no Lua while we watch.
    let idle = Kid::spawn("/usr/bin/luajit", &["-e", "os.execute('sleep 30')"]);
    thread::sleep(Duration::from_millis(300));
    let out = ljprobe(&["doctor", "--pid", &idle.pid(), "--wait", "1s"]);
    assert_one_sentence(&out, "no Lua VM seen in PID");
}

#[test]
fn reports_a_target_that_exits_during_the_check() {
    require_root();
    let short = Kid::spawn("/usr/bin/luajit", &["-e", "os.execute('sleep 1')"]);
    thread::sleep(Duration::from_millis(200));
    let pid = short.pid();
    let out = ljprobe(&["doctor", "--pid", &pid, "--wait", "10s"]);
    assert_one_sentence(&out, &format!("process {pid} exited"));
}

#[test]
fn bad_inputs_get_one_sentence_and_a_failing_exit() {
    require_root();
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    assert_one_sentence(&ljprobe(&["doctor", "--pid", &gone.id().to_string()]), "no process with PID");

    let not_lua = Kid::spawn("sleep", &["30"]);
    assert_one_sentence(&ljprobe(&["doctor", "--pid", &not_lua.pid()]), "has no LuaJIT mapped");

    let lua = Kid::spawn("/usr/bin/luajit", &["-e", SPIN]);
    let bin = ljprobe_tests::ljprobe_bin();
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["doctor", "--pid", &lua.pid()])
        .output()
        .unwrap();
    assert_one_sentence(&as_nobody, "needs root");

    // Usage errors come from clap: its own one-line `error:` and exit status 2.
    let usage = ljprobe(&["doctor", "--pid", &lua.pid(), "--wait", "soon"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).lines().next().unwrap().contains("is not a duration"), "{}", stderr(&usage));
}

#[test]
fn without_a_pid_checks_the_kernel_and_loads_a_program() {
    require_root();
    let out = ljprobe(&["doctor"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for check in ["privileges", "BTF", "uprobes", "tracepoints", "perf events", "eBPF load"] {
        let line = text.lines().find(|l| l.contains(check)).unwrap_or_else(|| panic!("no {check} line:\n{text}"));
        assert!(line.trim_start().starts_with("ok"), "{line}");
    }
    // Whether the watchpoint line warns of a virtual machine follows the CPU
    // flags, read here on their own.
    let watch = text.lines().find(|l| l.contains("watchpoints")).unwrap_or_else(|| panic!("no watchpoints line:\n{text}"));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
    let vm = cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    assert_eq!(watch.contains("virtual machine"), vm, "hypervisor flag {vm}: {watch}");
    assert!(watch.contains("write watchpoint opens"), "{watch}");
}
