//! The leak tool's outputs: the flame graph of live bytes by the stack that
//! allocated them (the holder on top), one sentence per allocating function,
//! the reference paths that grew between the snapshots, and the JSON.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use super::{
    live::{End, Maker, Paired},
    Args,
};
use crate::{
    collect::Collected,
    lua::Memory,
    report::{self, Profile},
    target::Process,
    tools::{alloc::sampler::Sampling, heap::analysis::HeapReport},
};

pub struct Run<'a, M: Memory> {
    pub args: &'a Args,
    pub aim_root: &'a Process,
    pub default_svg: String,
    pub collected: Collected,
    pub sampling: Sampling,
    pub paired: Paired,
    pub starts: &'a HashMap<u32, HeapReport>,
    pub ends: &'a HashMap<u32, End<'a, M>>,
    pub notes: Vec<String>,
    pub lost: u64,
    /// The whole run, snapshot to snapshot; `collected` covers the recording.
    pub run_secs: f64,
}

/// A reference path whose objects grew between the two snapshots.
#[derive(Serialize)]
pub struct Grown {
    pub pid: u32,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub bytes: i64,
    pub objects: i64,
}

fn human(b: f64) -> String {
    crate::tools::heap::report_bytes(b.max(0.0) as u64)
}

/// Paths by (bytes, objects) growth, biggest first: what the end snapshot
/// holds under each folded path less what the start one held there.
fn grown<'e>(starts: &HashMap<u32, HeapReport>, ends: impl Iterator<Item = (u32, &'e HeapReport)>, top: usize) -> Vec<Grown> {
    let mut out = Vec::new();
    for (pid, end) in ends {
        let Some(start) = starts.get(&pid) else { continue };
        let key = |p: &[String]| p[..p.len() - 1].join(";");
        let mut before: HashMap<(String, &str), (u64, u64)> = HashMap::new();
        for (p, b, n) in &start.folded {
            before.insert((key(p), p.last().map_or("", String::as_str)), (*b, *n));
        }
        for (p, b, n) in &end.folded {
            // Garbage, and what requests in flight hold on their coroutines' stacks.
            if p.first().is_some_and(|r| r == crate::lua::heap::UNREACHED) || p.iter().any(|s| s == "<stack>") {
                continue;
            }
            let kind = p.last().map_or("", String::as_str);
            let (b0, n0) = before.get(&(key(p), kind)).copied().unwrap_or_default();
            let (db, dn) = (*b as i64 - b0 as i64, *n as i64 - n0 as i64);
            if db > 0 {
                out.push(Grown { pid, path: path_text(p), kind: kind.trim_matches(['(', ')']).to_string(), bytes: db, objects: dn });
            }
        }
    }
    out.sort_by_key(|g| std::cmp::Reverse(g.bytes));
    out.truncate(top);
    out
}

/// A folded path as one name: `_G.cache[#]`, steps joined as they read.
fn path_text(p: &[String]) -> String {
    p[..p.len().saturating_sub(1)].concat()
}

pub fn write<M: Memory>(r: Run<'_, M>) -> anyhow::Result<()> {
    let secs = r.collected.elapsed_secs.max(1e-9);
    let p = &r.paired;
    let per_min = p.live_bytes * 60.0 / secs;
    let grown = grown(r.starts, r.ends.iter().map(|(pid, e)| (*pid, &e.report)), r.args.top);
    let heap0 = r.starts.values().map(|h| h.vm.gc_total).sum::<u64>();
    let heap1 = r.ends.values().map(|e| e.report.vm.gc_total).sum::<u64>();
    let mut notes = Vec::new();
    if let Some(m) = p.makers.first() {
        notes.push(answer(m, p.live_bytes, secs));
    }
    notes.push(format!(
        "live at the end, allocated in the last {secs:.1} s: {} in {:.0} objects, {}/min; over the run the heap went from {} to {} (gc.total)",
        human(p.live_bytes),
        p.live_objects,
        human(per_min),
        human(heap0 as f64),
        human(heap1 as f64)
    ));
    if p.on_stacks_bytes > 0.0 {
        notes.push(format!("also live but held only by coroutine stacks (requests in flight, not counted above): {}", human(p.on_stacks_bytes)));
    }
    for m in p.makers.iter().take(r.args.top) {
        let share = m.bytes * 100.0 / p.live_bytes.max(1e-9);
        let held = m.holders.first().map(|(h, b)| format!("; {:.0}% held by {h}", b * 100.0 / m.bytes.max(1e-9))).unwrap_or_default();
        notes.push(format!("  {:>9} {share:>5.1}%  {}{held}", human(m.bytes), m.function));
    }
    if !grown.is_empty() {
        notes.push("reference paths that grew between the snapshots:".into());
        for g in &grown {
            notes.push(format!("  {:>+9} {:>+8} {:<10} {}", signed(g.bytes), g.objects, g.kind, g.path));
        }
    }
    let s = &r.sampling;
    notes.push(format!(
        "every allocation's address recorded for the last {secs:.1} s of the {:.1} s run ({} addresses, {} of them still live at the end)",
        r.run_secs,
        p.recorded,
        p.found_live
    ));
    for (pid, e) in r.ends {
        let (a, b) = (r.starts.get(pid).map(|h| &h.snapshot), &e.report.snapshot);
        notes.push(format!(
            "process {pid}: snapshots stopped it {} and {:.1} ms{}",
            a.map_or("-".into(), |a| format!("{:.1}", a.paused_ms)),
            b.paused_ms,
            if b.consistent && a.is_none_or(|a| a.consistent) { String::new() } else { " (not all of the copy at one moment)".into() }
        ));
    }
    if r.lost > 0 {
        notes.push(format!("{} records had no room in the kernel's buffers or ljprobe's", r.lost));
    }
    notes.extend(r.notes.iter().cloned());
    let extra = json!({
        "live_bytes": p.live_bytes.round(),
        "live_objects": p.live_objects.round(),
        "on_stacks_bytes": p.on_stacks_bytes.round(),
        "growth_bytes_per_min": per_min.round(),
        "heap_start_bytes": heap0,
        "heap_end_bytes": heap1,
        "functions": p.makers.iter().take(r.args.top).collect::<Vec<&Maker>>(),
        "paths_grown": grown,
        "addresses": p.recorded,
        "addresses_live": p.found_live,
        "recorded_secs": secs,
        "run_secs": r.run_secs,
        "sampling": s,
        "lost_events": r.lost,
        "snapshots": r.ends.iter().map(|(pid, e)| json!({ "pid": pid, "start": r.starts.get(pid).map(|h| &h.snapshot), "end": &e.report.snapshot })).collect::<Vec<_>>(),
    });
    let serde_json::Value::Object(extra) = extra else { unreachable!("a JSON object") };
    let title = format!(
        "ljprobe leak: PID {} ({}), bytes allocated in the recorded seconds and live at the end, by {} stack and holder",
        r.args.pid,
        r.aim_root.comm,
        r.args.stacks.stack.title()
    );
    report::write(&r.args.outputs, &Profile {
        tool: "leak",
        title,
        pids: r.collected.pids_seen.clone(),
        frequency: None,
        unit: "bytes",
        folded: p.by_bytes.clone(),
        by_vm_state: Default::default(),
        collected: r.collected,
        default_svg: r.default_svg,
        extra,
        notes,
        pprof: report::PprofKind::Inuse { by_bytes: p.by_bytes.clone(), by_count: p.by_count.clone() },
    })
}

/// The sentence the run comes down to for its biggest allocator.
fn answer(m: &Maker, total: f64, secs: f64) -> String {
    let held = match m.holders.first() {
        Some((h, b)) if *b >= m.bytes * 0.995 => format!(", all reachable from {h}"),
        Some((h, b)) => format!(", {:.0}% reachable from {h}", b * 100.0 / m.bytes.max(1e-9)),
        None => String::new(),
    };
    format!(
        "{} left {} live in the last {secs:.1} s ({:.0}% of what those seconds left live){held}, growing {}/min",
        m.function,
        human(m.bytes),
        m.bytes * 100.0 / total.max(1e-9),
        human(m.bytes * 60.0 / secs)
    )
}

fn signed(b: i64) -> String {
    let s = human(b.unsigned_abs() as f64);
    if b < 0 { format!("-{s}") } else { format!("+{s}") }
}
