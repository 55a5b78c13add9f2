//! `ljprobe heap` against real processes: a script that builds known objects
//! and reports its own `collectgarbage("count")` (debug and stock build),
//! the gateway's planted leak found by name and growing between two
//! snapshots by what the requests added, and bad targets refused in one
//! sentence. Every target must run on afterwards.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use ljprobe_tests::{
    assert_one_sentence, gateway_with_workers, ljprobe,
    luajit::{self, Luajit},
    out_dir, require_root, stderr, stdout,
};
use serde_json::Value;
use xtask::{gateway::{http_get, LuaJitBuild}, load::Load};

/// Known objects held from one global: 100000 tables of 8 array slots,
/// 50000 distinct strings of 40 bytes, 20000 closures each with one upvalue
/// holding its own empty table. Prints its own heap size after a full
/// collection, waits in `read` for a line, then checks its objects are all
/// still there and says so.
const PLANTED: &str = r#"
local N_T, N_S, N_F = 100000, 50000, 20000
holder = { tabs = {}, strs = {}, fns = {} }
for i = 1, N_T do holder.tabs[i] = { i, 2, 3, 4, 5, 6, 7, 8 } end
for i = 1, N_S do holder.strs[i] = string.format("%040d", i) end
for i = 1, N_F do local x = {}; holder.fns[i] = function() return x end end
collectgarbage(); collectgarbage()
io.write(string.format("%.0f\n", collectgarbage("count") * 1024)); io.flush()
io.read("*l")
local ok = #holder.tabs == N_T and holder.tabs[N_T][1] == N_T and #holder.strs[N_S] == 40 and type(holder.fns[N_F]()) == "table"
io.write(ok and "intact\n" or "damaged\n"); io.flush()
"#;

fn json_at(path: &std::path::Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn type_row<'a>(p: &'a Value, ty: &str) -> &'a Value {
    p["types"].as_array().unwrap().iter().find(|t| t["type"] == ty).unwrap_or_else(|| panic!("no {ty} row: {p}"))
}

fn within(got: u64, want: u64, share: f64) -> bool {
    got >= want && (got as f64) <= want as f64 * (1.0 + share)
}

fn counts_a_planted_heap(lj: Luajit) {
    require_root();
    let name = lj.name;
    let (_, mut cmd) = lj.script(&format!("heap-planted-{name}"), PLANTED);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("luajit runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let own: u64 = lines.next().expect("the script reports its heap").unwrap().trim().parse().unwrap();
    let dir = out_dir();
    let (json, svg) = (dir.join(format!("heap-planted-{name}.json")), dir.join(format!("heap-planted-{name}.svg")));
    let out = ljprobe(&["heap", "--pid", &child.id().to_string(), "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()]);
    // The target runs on, its objects untouched.
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let verdict = lines.next().expect("the script answers").unwrap();
    let _ = child.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(verdict, "intact", "{name}: the script's objects changed under the snapshot");
    let s = json_at(&json);
    let p = &s["processes"][0];
    let report = stdout(&out);
    // Stopped while it waited for its line, in one consistent copy.
    assert!(p["snapshot"]["stopped_while"].as_str().unwrap().contains("read"), "{name}: {}", p["snapshot"]);
    assert_eq!(p["snapshot"]["consistent"], true, "{name}: {report}");
    assert_eq!(u(&p["walked"]["broken_lists"]), 0, "{name}: {report}");
    // Each planted type within 1% (the VM's own few objects on top).
    assert!(within(u(&type_row(p, "table")["count"]), 100_000 + 20_000 + 4, 0.01), "{name} tables: {report}");
    assert!(within(u(&type_row(p, "lua-function")["count"]), 20_000, 0.01), "{name} functions: {report}");
    assert!(within(u(&type_row(p, "upvalue")["count"]), 20_000, 0.01), "{name} upvalues: {report}");
    let forty = p["strings_by_length"].as_array().unwrap().iter().find(|l| u(&l["min_len"]) <= 40 && u(&l["max_len"]) >= 40).unwrap();
    assert!(within(u(&forty["count"]), 50_000, 0.01), "{name} strings of 40 bytes: {report}");
    assert_eq!(u(&type_row(p, "string")["count"]), u(&p["vm"]["strings"]), "{name}: strings found and counted by the VM differ");
    // The bytes walked, against the script's own count (which includes the
    // VM's buffers the walk does not see as objects).
    let walked = u(&p["walked"]["bytes"]);
    assert!((walked as f64 - own as f64).abs() <= own as f64 * 0.05, "{name}: walked {walked} bytes, the script counts {own}: {report}");
    // The biggest holder is named by its global; the table of tables under it.
    let biggest = p["biggest"].as_array().unwrap();
    assert_eq!(biggest[0]["path"], "_G.holder", "{name}: {report}");
    let tabs = biggest.iter().find(|b| b["path"] == "_G.holder.tabs").unwrap_or_else(|| panic!("{name}: no _G.holder.tabs: {report}"));
    assert!(u(&tabs["objects"]) > 100_000, "{name}: {tabs}");
    let svg = fs::read_to_string(&svg).unwrap();
    assert!(svg.contains(".holder") && svg.contains(".tabs"), "{name}: the flame graph lacks the path");
}

#[test]
fn counts_a_planted_heap_on_the_debug_build() {
    counts_a_planted_heap(luajit::debug_build());
}

#[test]
fn counts_a_planted_heap_on_the_stock_build() {
    counts_a_planted_heap(luajit::stock_build());
}

/// The holder whose path names the leak's `retained` table.
fn retained_holder(p: &Value) -> Value {
    p["biggest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["path"].as_str().unwrap().contains("<upvalue retained of ") && b["path"].as_str().unwrap().contains("app/services/leak.lua"))
        .cloned()
        .unwrap_or_else(|| panic!("no holder names the leak's retained table: {p}"))
}

/// How many entries `retained` has after `n` more requests to `/leak`: the
/// route answers with the count (`retained`), one worker so one table.
fn leak_requests(port: u16, n: usize, bytes: u64) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let resp = http_get(port, &format!("/leak?bytes={bytes}")).expect("/leak answers");
        let at = resp.find("\"retained\":").unwrap_or_else(|| panic!("/leak answered {resp}")) + "\"retained\":".len();
        last = resp[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a count");
    }
    last
}

#[test]
fn gateway_leak_is_named_and_grows_between_snapshots() {
    let gw = gateway_with_workers("heap-leak", LuaJitBuild::Stock, 1);
    let port = gw.config.port;
    // Churn beside the leak: garbage, not held.
    let churn = Load { url: gw.config.url(), route: "/alloc/churn".into(), duration: Duration::from_secs(2), connections: 2, rate: None };
    churn.run().expect("wrk runs");
    const BLOB: u64 = 2000;
    let first_n = leak_requests(port, 300, BLOB);
    let snap = |tag: &str| {
        let json = out_dir().join(format!("heap-leak-{tag}.json"));
        let out = ljprobe(&["heap", "--pid", &gw.master().to_string(), "--json", json.to_str().unwrap(), "--svg", out_dir().join(format!("heap-leak-{tag}.svg")).to_str().unwrap()]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        json_at(&json)["processes"][0].clone()
    };
    let one = snap("1");
    let second_n = leak_requests(port, 400, BLOB);
    let two = snap("2");
    assert_eq!(two["snapshot"]["stopped_while"], "waiting in epoll_wait", "{}", two["snapshot"]);
    let (r1, r2) = (retained_holder(&one), retained_holder(&two));
    // Each entry is a table and a unique string of more than BLOB bytes.
    for (r, n) in [(&r1, first_n), (&r2, second_n)] {
        assert!(u(&r["retained_bytes"]) >= n * BLOB, "{n} entries of {BLOB}+ bytes, retained {r}");
        assert!(u(&r["objects"]) > 2 * n, "{n} entries, {r}");
        assert_eq!(r["type"], "table");
    }
    let grew = u(&r2["retained_bytes"]) - u(&r1["retained_bytes"]);
    let added = second_n - first_n;
    assert!(grew >= added * BLOB && grew <= added * (BLOB + 1024), "{added} entries added, retained grew {grew} bytes");
    // It is the biggest holder in the worker.
    assert_eq!(two["biggest"][0]["path"], r2["path"], "{two}");
    assert!(http_get(port, "/health").is_ok(), "the worker answers after two snapshots");
}

#[test]
fn bad_targets_get_one_sentence() {
    require_root();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = ljprobe(&["heap", "--pid", &sleeper.id().to_string()]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_one_sentence(&out, "has no LuaJIT mapped");
    let out = ljprobe(&["heap", "--pid", "4194304"]);
    assert_one_sentence(&out, "4194304");
}

/// Never waits in a system call and changes its heap all the time.
const CHURNING: &str = r#"
local t = {}
while true do
  for i = 1, 1000 do t[i] = { i, tostring(i) } end
  t = {}
end
"#;

#[test]
fn a_heap_that_changes_under_the_copy_is_walked_and_flagged() {
    require_root();
    let lj = luajit::stock_build();
    let (_, mut cmd) = lj.script("heap-churning", CHURNING);
    let mut child = cmd.spawn().expect("luajit runs");
    std::thread::sleep(Duration::from_millis(300));
    let json = out_dir().join("heap-churning.json");
    // A pause of a microsecond: the copy is made with the target running.
    let out = ljprobe(&["heap", "--pid", &child.id().to_string(), "--max-pause", "1us", "--json", json.to_str().unwrap(), "--svg", out_dir().join("heap-churning.svg").to_str().unwrap()]);
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(alive, "the target died");
    let p = &json_at(&json)["processes"][0];
    assert_eq!(p["snapshot"]["consistent"], false, "{}", p["snapshot"]);
    assert!(p["snapshot"]["stopped_while"].as_str().unwrap().starts_with("running"), "{}", p["snapshot"]);
    assert!(stdout(&out).contains("not one consistent moment"), "{}", stdout(&out));
    // What the walk could follow is reported as such, with the VM's own total beside it.
    assert!(u(&p["vm"]["gc_total"]) > 0 && p["walked"]["covered"].as_f64().is_some(), "{p}");
}
