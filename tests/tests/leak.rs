//! `ljprobe leak` against real processes: a script that keeps a known number
//! of strings made by one function (and drops as many made by another) is
//! told exactly, on the debug and the stock build; on the gateway, under
//! `/leak` mixed with `/alloc/churn`, the planted leak holds the live bytes
//! and its `retained` table is named, while the churn, which allocates far
//! more, holds next to nothing.

use std::{
    fs,
    io::Write,
    process::Stdio,
    thread,
    time::Duration,
};

use ljprobe_tests::{
    gateway_with_workers, ljprobe, ljprobe_then,
    luajit::{self, Luajit},
    load_until_stopped, out_dir, require_root, stderr, stdout,
};
use serde_json::Value;
use xtask::{gateway::{http_get, LuaJitBuild}, load::Load};

/// Waits for a line, then 200 times: `keep_one` keeps a 1000-byte string in
/// `_G.keep`, `drop_one` makes one and lets it go; 10 ms apart. Interpreted:
/// a trace would inline both into the loop, and frames inlined by traces
/// are the stack tools' matter (tests/tests/lines.rs), not this test's.
const KEEPS: &str = r#"
jit.off()
local ffi = require("ffi")
ffi.cdef("int usleep(unsigned int usec);")
keep = {}
local function keep_one(i)
  keep[i] = string.rep("k", 1000) .. i
end
local function drop_one(i)
  local s = string.rep("d", 1000) .. i
  return #s
end
io.read("*l")
for i = 1, 200 do
  keep_one(i)
  drop_one(i)
  ffi.C.usleep(10000)
end
collectgarbage()
io.read("*l")
"#;

fn json_at(path: &std::path::Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn tells_kept_from_dropped(lj: Luajit) {
    require_root();
    let name = lj.name;
    let (_, mut cmd) = lj.script(&format!("leak-keeps-{name}"), KEEPS);
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("luajit runs");
    let mut go = child.stdin.take().unwrap();
    let dir = out_dir();
    let (json, svg) = (dir.join(format!("leak-keeps-{name}.json")), dir.join(format!("leak-keeps-{name}.svg")));
    // Long enough for the 2 s of allocations on a machine twice as slow.
    let out = ljprobe_then(
        &["leak", "--pid", &child.id().to_string(), "--duration", "6s", "--all", "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()],
        |_| {
            let _ = writeln!(go, "go");
        },
    );
    let _ = writeln!(go, "done");
    drop(go);
    let _ = child.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let s = json_at(&json);
    let report = stdout(&out);
    // Each kept string: the header, 1000 + digits characters, padded.
    let kept: f64 = (1..=200).map(|i: u32| (24 + ((1000 + i.to_string().len() + 4) & !3)) as f64).sum();
    let top = &s["functions"][0];
    assert!(top["function"].as_str().unwrap().starts_with("keep_one "), "{name}: {report}");
    assert!(top["function"].as_str().unwrap().contains("leak-keeps"), "{name}: {report}");
    assert!((f(&top["bytes"]) - kept).abs() <= kept * 0.01, "{name}: keep_one left {} live bytes, the script kept {kept}: {report}", top["bytes"]);
    assert_eq!(top["holders"][0][0], "_G.keep", "{name}: {report}");
    let dropped: f64 = s["functions"].as_array().unwrap().iter().filter(|m| m["function"].as_str().unwrap().starts_with("drop_one")).map(|m| f(&m["bytes"])).sum();
    assert_eq!(dropped, 0.0, "{name}: drop_one's strings are not live: {report}");
    let grown = &s["paths_grown"][0];
    assert_eq!(grown["path"], "_G.keep[#]", "{name}: {report}");
    assert_eq!(grown["objects"], 200, "{name}: {report}");
}

#[test]
fn tells_kept_from_dropped_on_the_debug_build() {
    tells_kept_from_dropped(luajit::debug_build());
}

#[test]
fn tells_kept_from_dropped_on_the_stock_build() {
    tells_kept_from_dropped(luajit::stock_build());
}

#[test]
fn gateway_leak_holds_the_live_bytes_and_churn_does_not() {
    let gw = gateway_with_workers("leak", LuaJitBuild::Stock, 1);
    let load = |route: &str, connections| Load { url: gw.config.url(), route: route.into(), duration: Duration::ZERO, connections, rate: None };
    let _leak = load_until_stopped(load("/leak?bytes=2000", 1));
    let _churn = load_until_stopped(load("/alloc/churn", 2));
    thread::sleep(Duration::from_secs(1));
    let dir = out_dir();
    let (json, folded) = (dir.join("leak-gateway.json"), dir.join("leak-gateway.folded"));
    // The default: the heap watched for the run, every allocation recorded in its last seconds.
    let out = ljprobe(&["leak", "--pid", &gw.master().to_string(), "--duration", "5s", "--record", "3s", "--json", json.to_str().unwrap(), "--folded", folded.to_str().unwrap(), "--svg", dir.join("leak-gateway.svg").to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let s = json_at(&json);
    let report = stdout(&out);
    let live = f(&s["live_bytes"]);
    assert!(live > 0.0, "nothing live: {report}");
    let share = |prefix: &str| -> f64 {
        s["functions"].as_array().unwrap().iter().filter(|m| m["function"].as_str().unwrap().starts_with(prefix)).map(|m| f(&m["bytes"])).sum::<f64>() / live
    };
    let top = &s["functions"][0];
    assert!(top["function"].as_str().unwrap().starts_with("leak_grow ") && top["function"].as_str().unwrap().contains("app/services/leak.lua:10"), "{report}");
    assert!(share("leak_grow ") >= 0.8, "leak_grow holds {:.2} of live bytes: {report}", share("leak_grow "));
    assert!(share("alloc_churn_work ") <= 0.05, "alloc_churn_work holds {:.2}: {report}", share("alloc_churn_work "));
    assert!(top["holders"][0][0].as_str().unwrap().contains("<upvalue retained of "), "{report}");
    let grown = &s["paths_grown"][0];
    assert!(grown["path"].as_str().unwrap().contains("<upvalue retained of ") && grown["objects"].as_i64().unwrap() > 0, "{report}");
    assert!(http_get(gw.config.port, "/health").is_ok(), "the worker answers afterwards");
}

#[test]
fn a_process_without_luajit_gets_one_sentence() {
    require_root();
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let out = ljprobe(&["leak", "--pid", &sleeper.id().to_string(), "--duration", "1s"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    ljprobe_tests::assert_one_sentence(&out, "has no LuaJIT mapped");
}

#[test]
fn ctrl_c_before_the_recording_still_writes_the_snapshots() {
    require_root();
    let lj = luajit::stock_build();
    let (_, mut cmd) = lj.script("leak-ctrl-c", "keep = {}\nfor i = 1, 1000 do keep[i] = tostring(i) end\nio.read('*l')\n");
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("luajit runs");
    std::thread::sleep(Duration::from_millis(300));
    let json = out_dir().join("leak-ctrl-c.json");
    let out = ljprobe_tests::ljprobe_interrupted(
        &["leak", "--pid", &child.id().to_string(), "--duration", "60s", "--json", json.to_str().unwrap(), "--svg", out_dir().join("leak-ctrl-c.svg").to_str().unwrap()],
        Duration::from_secs(2),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let s = json_at(&json);
    assert!(f(&s["run_secs"]) < 30.0, "{s}");
    assert!(stdout(&out).contains("stopped with Ctrl-C before the recording began"), "{}", stdout(&out));
}
