//! `ljprobe cpu --stack lua` against LuaJIT's own profiler (`-jp`) on the
//! same run: a script of three functions of known, different cost, under any
//! LuaJIT build (the cpu tests and the builds tests share it).

use std::{
    collections::HashMap,
    fs, thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cpu_time, ljprobe_then, luajit::{self as jp, Luajit}, out_dir, require_root, stderr, stdout,
};

/// Three functions of known, different cost in one steady loop.
pub const WORKLOAD: &str = r#"
local function heavy(n)
  local x = 0
  for i = 1, n do x = (x + i * 3) % 1000003 end
  return x
end

local function medium(n)
  local x = 0
  for i = 1, n do x = (x + i * 7) % 999983 end
  return x
end

local function light(n)
  local x = 0
  for i = 1, n do x = (x + i) % 97 end
  return x
end

local deadline = os.clock() + tonumber(arg[1])
local sink = 0
while os.clock() < deadline do
  sink = sink + heavy(600000) + medium(300000) + light(100000)
end
print(sink > 0)
"#;

/// Self share (percent) per Lua function name from our JSON summary, summed
/// over its labels: `-jp=f` names functions only, and a rare sample may place
/// one without its source ("heavy ?:0" beside "heavy fidelity.lua:2").
pub fn parse_ours(summary: &Value) -> HashMap<String, f64> {
    let mut shares = HashMap::new();
    for t in summary["top_frames"].as_array().unwrap() {
        let name = t["frame"].as_str().unwrap().split_whitespace().next().unwrap().to_string();
        *shares.entry(name).or_default() += t["self_share"].as_f64().unwrap() * 100.0;
    }
    shares
}

/// The share of one CPU a process got from `start` on, from its CPU time.
pub struct CpuShare {
    pid: u32,
    cpu: Duration,
    at: Instant,
}

impl CpuShare {
    pub fn start(pid: u32) -> CpuShare {
        CpuShare { pid, cpu: cpu_time(pid).expect("the target runs"), at: Instant::now() }
    }

    /// The CPU time it got since.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid).expect("the target is not reaped yet").saturating_sub(self.cpu)
    }

    pub fn share(&self) -> f64 {
        self.cpu().as_secs_f64() / self.at.elapsed().as_secs_f64()
    }
}

/// At least half the samples that sampling at `freq` for the run's duration
/// gives a target that had `share` of a CPU (a spinning target: its share
/// holds steady through the run).
pub fn assert_samples(summary: &Value, freq: f64, share: f64) {
    let expected = freq * summary["duration_secs"].as_f64().unwrap() * share;
    let samples = summary["samples"].as_u64().unwrap();
    assert!(samples as f64 >= 0.5 * expected, "{samples} samples, {expected:.0} expected at {freq} Hz with {share:.2} of a CPU: {summary}");
}

/// `root_c`: the C function the interpreter entered Lua from, when symbols say.
pub fn fidelity(lj: Luajit, root_c: Option<&str>) {
    require_root();
    let name = lj.name;
    let dir = out_dir();
    let script = dir.join("fidelity.lua");
    fs::write(&script, WORKLOAD).unwrap();
    // `i1`: a sample every 1 ms instead of 10, ~5000 in all. At 10 ms its ~500
    // samples alone spread a 35% share by ±2 points (one sigma), and the two
    // profilers differed by 5.1 points in one CI run.
    let child = lj.spawn_profiled("fi1", &script, &["5"]);
    let pid = child.id().to_string();
    thread::sleep(Duration::from_millis(500));
    let json = dir.join(format!("cpu-{name}.json"));
    let svg = dir.join(format!("cpu-{name}.svg"));
    let mut from = None;
    let out = ljprobe_then(
        &["cpu", "--pid", &pid, "--duration", "3s", "--freq", "499", "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()],
        |_| from = Some(CpuShare::start(child.id())),
    );
    // Read before the target is reaped (a zombie still has its CPU time).
    let share = from.expect("ljprobe started tracing").share();
    let jp = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let summary: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    // 499 a second of the CPU time the target got: 3 s of it if it had a CPU
    // to itself, less when it shares one (with other processes, under a CPU
    // quota) or the host takes it (steal).
    assert_samples(&summary, 499.0, share);
    let theirs = jp::shares(&String::from_utf8_lossy(&jp.stdout));
    let ours = parse_ours(&summary);
    for f in ["heavy", "medium", "light"] {
        let (t, o) = (theirs.get(f).copied().unwrap_or(0.0), ours.get(f).copied().unwrap_or(0.0));
        assert!(
            (t - o).abs() <= 5.0,
            "{name}: {f} got {o:.1}% from ljprobe, {t:.1}% from -jp=fi1\nours: {ours:?}\ntheirs: {theirs:?}"
        );
    }
    // The labels carry the chunk and the defining line.
    let svg_text = fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains(&format!("heavy {}:2", script.display())), "no `heavy FILE:2` frame in the SVG");
    if let Some(c) = root_c {
        assert!(svg_text.contains(&format!(">{c}<")), "the C function Lua runs under is not shown as {c}");
    }
}

