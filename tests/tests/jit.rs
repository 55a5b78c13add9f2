//! `ljprobe jit` against LuaJIT's own account of the same run: a script run
//! under `luajit -jv` (which prints every trace abort with its reason and
//! places) while ljprobe watches it, on the debug and the stock build; the
//! side exits it counts against the script's own count of the branch taken;
//! on a fresh gateway, `/hot/nyi`'s planted closure aborts and its loops are
//! blacklisted while `/hot/jit` runs compiled; a VM with the JIT off and a
//! process without LuaJIT are told apart in one sentence.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::Duration,
};

use ljprobe_tests::{
    assert_one_sentence, gateway, ljprobe, ljprobe_then,
    luajit::{self, Luajit},
    out_dir, require_root, stderr, stdout,
};
use serde_json::Value;
use xtask::gateway::{http_get, LuaJitBuild};

/// Waits for a line on stdin (ljprobe is watching by then), runs three loops
/// whose fate in the JIT is known, prints how often the side branch was
/// taken, and waits for another line before it exits.
const TRUTH: &str = r#"
io.read("*l")
-- A closure made in a hot loop: FNEW is not compiled, so every trace
-- started at this loop aborts at the closure, until the loop is blacklisted.
local function aborts(m)
  local t = 0
  for i = 1, m do
    local f = function() return i end
    t = t + f()
  end
  return t
end
-- A loop that compiles.
local function compiles(m)
  local s = 0
  for i = 1, m do s = s + i % 7 end
  return s
end
-- A branch taken every 100th iteration: a side exit of the loop's trace.
-- hotexit is raised so that no side trace takes the branch over: each time
-- it is taken, the trace exits through the exit handler.
local function exits(m)
  local s, taken = 0, 0
  for i = 1, m do
    if i % 100 == 0 then
      taken = taken + 1
    else
      s = s + 1
    end
  end
  return s, taken
end
jit.opt.start("hotexit=65000")
local n = tonumber(arg[1])
aborts(n / 10)
compiles(n * 5)
local _, taken = exits(n)
io.write("taken ", taken, "\n")
io.flush()
io.read("*l")
"#;

fn summary(path: &std::path::Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// `file.lua:N` with the directory dropped: -jv and ljprobe name chunks alike
/// but a test should not depend on how the path was spelled.
fn base(place: &str) -> String {
    place.rsplit('/').next().unwrap_or(place).to_string()
}

fn place(v: &Value) -> String {
    format!("{}:{}", base(v["file"].as_str().unwrap_or("?")), v["line"])
}

/// `[TRACE --- start -- reason at place]` lines of -jv, counted.
fn jv_aborts(log: &str) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("[TRACE --- ").and_then(|r| r.strip_suffix(']')) else { continue };
        let (start, tail) = rest.split_once(" -- ").expect("-jv abort line");
        let (reason, at) = tail.rsplit_once(" at ").unwrap_or((tail, start));
        *out.entry((base(start), reason.to_string(), base(at))).or_default() += 1;
    }
    out
}

fn agrees_with_jv(lj: Luajit) {
    require_root();
    let name = format!("jit-truth-{}", lj.name);
    let (script, _) = lj.script(&name, TRUTH);
    let dir = out_dir();
    let (jv, json) = (dir.join(format!("{name}.jv")), dir.join(format!("{name}.json")));
    let mut cmd = std::process::Command::new(&lj.bin);
    cmd.arg(format!("-jv={}", jv.display())).arg(&script).arg("1000000");
    if let Some(p) = &lj.lua_path {
        cmd.env("LUA_PATH", p);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("luajit runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid = child.id().to_string();
    let mut taken = 0u64;
    let args = ["jit", "--pid", &pid, "--duration", "120s", "--max-exits", "0", "--json", json.to_str().unwrap()];
    let out = ljprobe_then(&args, |ljprobe| {
        writeln!(stdin, "go").unwrap();
        let line = lines.next().expect("the script reports").unwrap();
        taken = line.strip_prefix("taken ").and_then(|n| n.parse().ok()).expect("taken N");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(ljprobe as i32, libc::SIGINT) };
    });
    let _ = writeln!(stdin, "done");
    child.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&json);

    // Every abort -jv printed, with its start, reason and place, as often.
    let want = jv_aborts(&fs::read_to_string(&jv).unwrap());
    assert!(want.keys().any(|(_, r, _)| r == "NYI: bytecode 51"), "the planted FNEW abort is missing from -jv:\n{want:?}");
    let mut got = BTreeMap::new();
    for a in s["aborts"].as_array().unwrap() {
        let start = place(&a["start"]);
        let at = if a["at"].is_null() { start.clone() } else { place(&a["at"]) };
        *got.entry((start, a["luajit"].as_str().unwrap().to_string(), at)).or_default() += a["count"].as_u64().unwrap();
    }
    assert_eq!(got, want, "aborts differ from -jv's\n{}", stdout(&out));

    // The aborting loop blacklisted; the other two compiled as loops.
    // TRUTH starts with a newline: its text's line i is the script's line i + 1.
    let line = |text: &str| 1 + TRUTH.lines().position(|l| l.contains(text)).unwrap() as u64;
    let script_base = base(&script.display().to_string());
    let blacklisted: Vec<String> = s["blacklisted"].as_array().unwrap().iter().map(|b| place(&b["at"])).collect();
    let aborts_loop = format!("{script_base}:{}", line("local f = function") - 1);
    assert!(blacklisted.contains(&aborts_loop), "{aborts_loop} not blacklisted: {blacklisted:?}");
    let loops: Vec<String> = s["traces"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["link_type"] == "loop")
        .map(|t| place(&t["start"]))
        .collect();
    for want in [line("for i = 1, m do s = s + i % 7 end"), line("if i % 100 == 0 then") - 1] {
        let want = format!("{script_base}:{want}");
        assert!(loops.contains(&want), "no loop trace at {want}: {loops:?}");
    }

    // The side exit: once per branch taken, within 10%.
    let branch = format!("{script_base}:{}", line("taken = taken + 1"));
    let exits: u64 = s["exits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["at"].is_null() && place(&e["at"]) == branch)
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    let ratio = exits as f64 / taken as f64;
    assert!((0.9..=1.1).contains(&ratio), "{exits} exits to {branch} for {taken} branches taken\n{}", stdout(&out));
}

#[test]
fn aborts_and_exits_agree_with_luajit_jv_on_the_debug_build() {
    agrees_with_jv(luajit::debug_build());
}

#[test]
fn aborts_and_exits_agree_with_luajit_jv_on_the_stock_build() {
    agrees_with_jv(luajit::stock_build());
}

/// The line of the first line of `file` (1-based) that contains `text`.
fn line_of(file: &std::path::Path, text: &str) -> u64 {
    let src = fs::read_to_string(file).unwrap();
    1 + src.lines().position(|l| l.contains(text)).unwrap_or_else(|| panic!("{text} not in {}", file.display())) as u64
}

#[test]
fn gateway_hot_nyi_aborts_at_its_closure_and_is_blacklisted_while_hot_jit_runs_compiled() {
    require_root();
    // A fresh gateway: its traces are all still to come.
    let gw = gateway("jit", LuaJitBuild::Stock);
    let json = out_dir().join("jit-gateway.json");
    let port = gw.config.port;
    let out = ljprobe_then(
        &["jit", "--pid", &gw.master().to_string(), "--duration", "120s", "--per-request", "--json", json.to_str().unwrap()],
        |ljprobe| {
            // LuaJIT blacklists a loop after about ten aborts, each tried
            // after twice as many iterations as the last (up to 60000).
            for _ in 0..60 {
                http_get(port, "/hot/nyi?n=5").expect("/hot/nyi answers");
            }
            for _ in 0..60 {
                http_get(port, "/hot/jit").expect("/hot/jit answers");
            }
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: signalling our own child.
            unsafe { libc::kill(ljprobe as i32, libc::SIGINT) };
        },
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&json);
    let src = xtask::paths::gateway_src().join("lua/app/controllers");
    let (nyi, jit) = (src.join("hot_nyi.lua"), src.join("hot_jit.lua"));

    // LuaJIT places FNEW on the closure's last line.
    let closure_end = line_of(&nyi, "function(c)") + 2;
    let fnew = s["aborts"].as_array().unwrap().iter().find(|a| {
        a["luajit"] == "NYI: bytecode 51" && !a["at"].is_null() && place(&a["at"]) == format!("hot_nyi.lua:{closure_end}")
    });
    assert!(fnew.is_some(), "no FNEW abort at hot_nyi.lua:{closure_end}\n{}", stdout(&out));

    let blacklisted: Vec<String> = s["blacklisted"].as_array().unwrap().iter().map(|b| place(&b["at"])).collect();
    for text in ["for i = 1, n do", "for k, v in pairs(FIELDS) do"] {
        let want = format!("hot_nyi.lua:{}", line_of(&nyi, text));
        assert!(blacklisted.contains(&want), "{want} not blacklisted: {blacklisted:?}");
    }

    let row = s["functions"].as_array().unwrap().iter().find(|f| f["function"].as_str().unwrap().contains("hot_jit_work"));
    let row = row.unwrap_or_else(|| panic!("hot_jit_work not among the functions\n{}", stdout(&out)));
    assert!(row["compiled_share"].as_f64().unwrap() >= 0.9, "hot_jit_work not compiled: {row}");
    let work = line_of(&jit, "function M.hot_jit_work");
    // A root trace begun outside the loop (at the caller's hot call) meets it
    // and gives way, "inner loop in root trace", and the loop then gets a
    // trace of its own: LuaJIT's way in, which one CI run saw once. Any other
    // abort in hot_jit_work would be a path out of the JIT.
    let way_in = ["inner loop in root trace", "leaving loop in root trace"];
    let in_hot_loop = s["aborts"].as_array().unwrap().iter().any(|a| {
        !way_in.contains(&a["luajit"].as_str().unwrap_or_default())
            && [&a["start"], &a["at"]].iter().any(|w| !w.is_null() && base(w["file"].as_str().unwrap()) == "hot_jit.lua" && w["func_line"] == work)
    });
    assert!(!in_hot_loop, "an abort in hot_jit_work\n{}", stdout(&out));
    assert!(!blacklisted.iter().any(|b| b.starts_with("hot_jit.lua:")), "hot_jit.lua blacklisted: {blacklisted:?}");
    // Fresh traces exit until their side traces are built; every request
    // that ended after the first one is counted, none of them twice.
    assert!(s["exits_total"].as_u64().unwrap() > 0, "no trace exit in a fresh gateway\n{}", stdout(&out));
    let requests = s["exits_per_request"]["requests"].as_u64().unwrap_or(0);
    assert!((1..=120).contains(&requests), "{requests} requests counted of 120 sent: {}", s["exits_per_request"]);
    let verdict = s["summary"].as_array().unwrap().iter().find(|l| l.as_str().unwrap().contains("hot_nyi_work ("));
    assert!(verdict.is_some_and(|v| v.as_str().unwrap().contains("FNEW")), "{:?}", s["summary"]);
    let nyi_row = s["functions"].as_array().unwrap().iter().find(|f| f["function"].as_str().unwrap().contains("hot_nyi_work"));
    assert_eq!(nyi_row.map(|r| &r["not_compiled"]), Some(&Value::Bool(true)), "hot_nyi_work not flagged: {nyi_row:?}");
    assert_eq!(row["not_compiled"], Value::Bool(false), "{row}");
}

/// Turns the JIT off, then spins in Lua until stdin closes.
const JIT_OFF: &str = r#"
jit.off()
local ffi = require("ffi")
ffi.cdef("int usleep(unsigned int usec);")
local s = 0
while true do
  for i = 1, 100000 do s = s + i % 3 end
  ffi.C.usleep(1000)
end
"#;

#[test]
fn jit_turned_off_is_said_and_vm_states_still_come() {
    require_root();
    let (_, mut cmd) = luajit::stock_build().script("jit-off", JIT_OFF);
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let json = out_dir().join("jit-off.json");
    let out = ljprobe(&["jit", "--pid", &child.id().to_string(), "--duration", "2s", "--json", json.to_str().unwrap()]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().filter(|l| l.contains("JIT compiler is off")).count(), 1, "{err}");
    let s = summary(&json);
    assert_eq!(s["jit_off"][0].as_u64(), Some(u64::from(child.id())));
    assert!(s["vm_states"]["interpreter"]["samples"].as_u64().unwrap() > 0, "{}", s["vm_states"]);
    assert!(s["vm_states"].get("trace").is_none(), "{}", s["vm_states"]);
}

#[test]
fn a_process_without_luajit_gets_one_sentence() {
    require_root();
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let out = ljprobe(&["jit", "--pid", &sleeper.id().to_string(), "--duration", "1s"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_one_sentence(&out, "has no LuaJIT mapped");
}
