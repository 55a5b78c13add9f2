//! `ljprobe alloc` against a script that counts what it allocates itself:
//! with the collector stopped around each call, the heap's growth
//! (`collectgarbage("count")`) is exactly what the call allocated.

use ljprobe_tests::{assert_one_sentence, ljprobe, ljprobe_then, luajit, out_dir, require_root, stderr, Background};
use serde_json::Value;

const SCRIPT: &str = r#"
local ffi = require("ffi")
ffi.cdef("int usleep(unsigned int);")
local go, N, M, rounds = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
-- "steady": measure one round, then allocate round after round with the
-- collector running as usual (what sampling sees in a real program).
local steady = arg[5] == "steady"
while true do
    local f = io.open(go, "r")
    if f then f:close() break end
    ffi.C.usleep(2000)
end
-- Strings stay interned while alive: warm ones keep the string table big
-- enough that the counted ones never resize it (a resize frees the old table).
local function make_warm(n)
    local warm = {}
    for i = 1, n do warm[i] = "warm-" .. i end
    return warm
end
local warm = make_warm(5 * M)

local function make_tables(n)
    local t = false
    for i = 1, n do
        t = { t, 1, 2, 3 }
    end
    return t
end

local function make_strings(m, round)
    local last
    for i = 1, m do
        -- Fixed width: every round's strings are as long as the first's.
        last = "s" .. (round + 100000) .. "-" .. (i + 100000)
    end
    return last
end

local tb, sb, per_t, per_s = 0, 0, 0, 0
for r = 1, rounds do
    if r == 1 or not steady then
        collectgarbage("collect")
        collectgarbage("stop")
        local c0 = collectgarbage("count")
        make_tables(N)
        local c1 = collectgarbage("count")
        make_strings(M, r)
        local c2 = collectgarbage("count")
        collectgarbage("restart")
        per_t, per_s = (c1 - c0) * 1024, (c2 - c1) * 1024
    else
        make_tables(N)
        make_strings(M, r)
    end
    tb, sb = tb + per_t, sb + per_s
end
io.stdout:write(string.format("%d %.0f %d %.0f\n", N * rounds, tb, M * rounds, sb))
"#;

struct Truth {
    tables: f64,
    table_bytes: f64,
    strings: f64,
    string_bytes: f64,
}

/// Runs the script under `ljprobe alloc EXTRA` from before its first
/// allocation to its exit; returns the script's own counts and the summary.
fn run(build: &luajit::Luajit, name: &str, rounds: u32, steady: bool, extra: &[&str]) -> (Truth, Value) {
    let dir = out_dir();
    let go = dir.join(format!("{name}.go"));
    let _ = std::fs::remove_file(&go);
    let (_, mut cmd) = build.script(name, SCRIPT);
    cmd.args([go.to_str().unwrap(), "4000", "2000", &rounds.to_string(), if steady { "steady" } else { "counted" }]).stdout(std::process::Stdio::piped());
    let target = Background(cmd.spawn().expect("luajit runs"));
    let json = dir.join(format!("{name}.json"));
    let svg = dir.join(format!("{name}.svg"));
    let pid = target.id().to_string();
    let mut args = vec!["alloc", "--pid", &pid, "--duration", "120s", "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = ljprobe_then(&args, |_| std::fs::write(&go, "").expect("go file"));
    assert!(out.status.success(), "ljprobe failed: {}", stderr(&out));
    let mut target = target;
    let mut text = String::new();
    std::io::Read::read_to_string(target.0.stdout.as_mut().unwrap(), &mut text).unwrap();
    let f: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(f.len(), 4, "the script's own count: {text:?}");
    let summary: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"], "target-exited", "ljprobe saw the script to its end");
    (Truth { tables: f[0], table_bytes: f[1], strings: f[2], string_bytes: f[3] }, summary)
}

/// (self weight, label) of the Lua function named `name` in a top list.
fn top(summary: &Value, list: &str, name: &str) -> f64 {
    summary[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["frame"].as_str().unwrap().starts_with(&format!("{name} ")))
        .map(|t| t["self"].as_f64().unwrap())
        .unwrap_or_else(|| panic!("{name} not in {list}: {}", summary[list]))
}

fn within(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!((got - want).abs() <= tolerance * want, "{what}: ljprobe {got}, the script {want} (tolerance {tolerance})");
}

fn every_allocation_counted(build: luajit::Luajit) {
    require_root();
    // ~40k allocations and as many frees: a few seconds even with every one trapping.
    let (truth, s) = run(&build, &format!("alloc-all-{}", build.name), 6, false, &["--all"]);
    assert_eq!(s["sampling"]["mode"], "all");
    within(top(&s, "top_by_bytes", "make_tables"), truth.table_bytes, 0.05, "bytes of make_tables");
    within(top(&s, "top_by_count", "make_tables"), truth.tables, 0.05, "allocations of make_tables");
    within(top(&s, "top_by_bytes", "make_strings"), truth.string_bytes, 0.05, "bytes of make_strings");
    within(top(&s, "top_by_count", "make_strings"), truth.strings, 0.05, "allocations of make_strings");
}

#[test]
fn all_mode_counts_what_the_script_counts_on_the_debug_build() {
    every_allocation_counted(luajit::debug_build());
}

#[test]
fn all_mode_counts_what_the_script_counts_on_the_stripped_stock_build() {
    every_allocation_counted(luajit::stock_build());
}

#[test]
fn sampled_mode_ranks_the_allocators_as_the_script_does() {
    require_root();
    let build = luajit::debug_build();
    // Tens of windows: a few seconds of rounds here, which the windows
    // barely slow, at a budget that opens about eight windows a second.
    let (truth, s) = run(&build, "alloc-sampled", 10000, true, &["--overhead", "5"]);
    assert_eq!(s["sampling"]["mode"], "windows");
    assert!(s["sampling"]["windows"].as_u64().unwrap() >= 10, "{}", s["sampling"]);
    // Shares do not depend on how many events one recorded event stands for.
    let (t, st) = (top(&s, "top_by_bytes", "make_tables"), top(&s, "top_by_bytes", "make_strings"));
    let want = truth.table_bytes / (truth.table_bytes + truth.string_bytes);
    let got = t / (t + st);
    assert!((got - want).abs() < 0.10, "make_tables' share of the two: ljprobe {got:.3}, the script {want:.3}");
}

#[test]
fn a_process_without_luajit_is_refused_in_one_sentence() {
    require_root();
    let sleeper = Background(std::process::Command::new("sleep").arg("30").spawn().unwrap());
    let out = ljprobe(&["alloc", "--pid", &sleeper.id().to_string(), "--duration", "1s"]);
    assert_one_sentence(&out, "has no LuaJIT");
}
