//! The sentences at the top of the report: what each tool's output says that
//! matters most, each with the numbers behind it. They are read from the files
//! the tools wrote (JSON summaries, folded stacks), the same ones a user has.

use ljprobe_flamegraph::diff::Stacks;
use serde_json::Value;

use super::page::{Finding, Severity};

/// What one tool left in the report's directory.
#[derive(Default)]
pub struct Output {
    pub json: Option<Value>,
    pub stacks: Option<Stacks>,
}

/// A frame label is a Lua function's when it ends in `:LINE` (`name file:12`,
/// `file:12`, `content_by_lua(nginx.conf:40):0`), with `--lines`' ` @N` dropped.
pub fn is_lua(label: &str) -> bool {
    let label = match label.rsplit_once(" @") {
        Some((f, at)) if at.bytes().all(|b| b.is_ascii_digit()) => f,
        _ => label,
    };
    label.rsplit_once(':').is_some_and(|(_, line)| !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()))
}

/// `hot_work /srv/app/hot.lua:23` -> "`hot_work` (hot.lua:23)"; an anonymous
/// `/srv/app/hot.lua:30` -> "the function at hot.lua:30".
pub fn display(label: &str) -> String {
    let short = |loc: &str| loc.rsplit('/').next().unwrap_or(loc).to_string();
    match label.split_once(' ') {
        Some((name, loc)) if is_lua(label) => format!("`{name}` ({})", short(loc)),
        _ if is_lua(label) => format!("the function at {}", short(label)),
        _ => format!("`{label}`"),
    }
}

/// A Lua function where time is spent, not passed through: most of its
/// weight is not in any one Lua function it calls.
pub struct HotSpot {
    pub label: String,
    pub weight: u64,
    /// Of `weight`, in stacks with a compiled trace at or above it.
    pub compiled: u64,
    /// The C function (or builtin) most of its non-Lua time is in, if any.
    pub c_callee: Option<(String, u64)>,
}

/// Hot spots holding at least `min_share` of `stacks`, widest first.
pub fn hot_spots(stacks: &Stacks, min_share: f64) -> Vec<HotSpot> {
    use std::collections::HashMap;
    #[derive(Default)]
    struct Acc {
        weight: u64,
        compiled: u64,
        lua_children: HashMap<String, u64>,
        c_children: HashMap<String, u64>,
    }
    let mut acc: HashMap<&str, Acc> = HashMap::new();
    for (stack, w) in &stacks.stacks {
        let lua: Vec<usize> = (0..stack.len()).filter(|&i| is_lua(&stack[i])).collect();
        let mut seen = std::collections::HashSet::new();
        for (k, &i) in lua.iter().enumerate() {
            // Recursion counts once per stack.
            if !seen.insert(stack[i].as_str()) {
                continue;
            }
            let a = acc.entry(stack[i].as_str()).or_default();
            a.weight += w;
            let above = &stack[i + 1..];
            if above.iter().any(|f| f.starts_with("trace#")) {
                a.compiled += w;
            }
            match lua.get(k + 1) {
                Some(&j) => *a.lua_children.entry(stack[j].clone()).or_default() += w,
                None => {
                    if let Some(c) = above.iter().find(|f| !f.starts_with("trace#") && !f.starts_with('[')) {
                        *a.c_children.entry(c.clone()).or_default() += w;
                    }
                }
            }
        }
    }
    let total = stacks.total.max(1) as f64;
    let mut out: Vec<HotSpot> = acc
        .into_iter()
        .filter(|(_, a)| a.weight as f64 / total >= min_share)
        .filter(|(_, a)| a.lua_children.values().all(|&c| (c as f64) < 0.5 * a.weight as f64))
        .map(|(label, a)| HotSpot {
            label: label.to_string(),
            weight: a.weight,
            compiled: a.compiled,
            c_callee: a.c_children.into_iter().max_by_key(|(_, w)| *w).filter(|(_, w)| *w as f64 >= 0.2 * a.weight as f64),
        })
        .collect();
    out.sort_by(|x, y| y.weight.cmp(&x.weight).then_with(|| x.label.cmp(&y.label)));
    out
}

fn pct(x: f64) -> String {
    if x >= 0.1 { format!("{:.0}%", x * 100.0) } else { format!("{:.1}%", x * 100.0) }
}

/// The number at `path` in a summary, if there is one.
pub(super) fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn severity(share: f64, high: f64, medium: f64) -> Severity {
    if share >= high {
        Severity::High
    } else if share >= medium {
        Severity::Medium
    } else {
        Severity::Info
    }
}

/// On-CPU hot spots: where the CPU goes, and whether it runs compiled.
pub fn cpu(out: &Output) -> Vec<Finding> {
    let Some(stacks) = &out.stacks else { return vec![] };
    let unit = out.json.as_ref().and_then(|j| j.get("frequency")).and_then(Value::as_u64).map(|f| format!(" at {f} Hz")).unwrap_or_default();
    let total = stacks.total.max(1) as f64;
    hot_spots(stacks, 0.10)
        .into_iter()
        .take(3)
        .map(|h| {
            let share = h.weight as f64 / total;
            let compiled = h.compiled as f64 / h.weight.max(1) as f64;
            let how = if compiled < 0.3 {
                format!("runs interpreted ({} of its samples in compiled traces)", pct(compiled))
            } else {
                format!("runs {} compiled", pct(compiled))
            };
            let callee = h.c_callee.as_ref().map(|(c, w)| format!("; {} of it in `{c}`", pct(*w as f64 / h.weight as f64))).unwrap_or_default();
            Finding {
                severity: severity(share, 0.25, 0.10),
                text: format!("{} takes {} of CPU and {how}{callee}.", display(&h.label), pct(share)),
                evidence: format!("cpu: {} of {} samples{unit}", h.weight, stacks.total),
                section: "cpu".into(),
            }
        })
        .collect()
}

/// The collector's share of CPU and what feeds it.
pub fn gc(out: &Output) -> Vec<Finding> {
    let Some(j) = &out.json else { return vec![] };
    let (Some(share), Some(rate)) = (num(j, &["gc_share"]), num(j, &["alloc_bytes_per_sec"])) else { return vec![] };
    let cycles = num(j, &["cycles"]).unwrap_or(0.0);
    let secs = num(j, &["duration_secs"]).unwrap_or(0.0);
    vec![Finding {
        severity: severity(share, 0.15, 0.05),
        // Without --exact, gc sees only the cycles its readings caught: a floor.
        text: format!(
            "The garbage collector takes {} of the Lua VM's CPU, fed by {}{:.1} MB/s of allocation.",
            pct(share),
            if j["exact"].as_bool() == Some(true) { "" } else { "at least " },
            rate / 1e6
        ),
        evidence: format!(
            "gc: {} of {} CPU samples in the GC; {cycles:.0} cycles in {secs:.1} s; heap {:.1} -> {:.1} MB",
            num(j, &["gc_samples"]).unwrap_or(0.0),
            num(j, &["samples"]).unwrap_or(0.0),
            num(j, &["heap_start_bytes"]).unwrap_or(0.0) / 1e6,
            num(j, &["heap_end_bytes"]).unwrap_or(0.0) / 1e6
        ),
        section: "gc".into(),
    }]
}

/// Who allocates most of the Lua heap's bytes: every function with a fifth
/// of them or more (up to three), the largest first.
pub fn alloc(out: &Output) -> Vec<Finding> {
    let Some(j) = &out.json else { return vec![] };
    let Some(top) = j.get("top_by_bytes").and_then(Value::as_array) else { return vec![] };
    let big: Vec<(&str, f64)> = top
        .iter()
        .filter_map(|t| Some((t["frame"].as_str()?, t["self_share"].as_f64()?)))
        .filter(|(_, share)| *share >= 0.2)
        .take(3)
        .collect();
    let Some(&(_, first)) = big.first() else { return vec![] };
    let rate = num(j, &["rate_per_sec", "bytes"]).unwrap_or(0.0);
    let resize = num(j, &["table_resizes", "bytes"]).unwrap_or(0.0) / num(j, &["bytes"]).unwrap_or(f64::INFINITY).max(1.0);
    let who: Vec<String> = big.iter().map(|(f, share)| format!("{} {}", display(f), pct(*share))).collect();
    let (verb, sum) = if big.len() == 1 { ("allocates", first) } else { ("allocate", big.iter().map(|b| b.1).sum()) };
    vec![Finding {
        severity: severity(first * (rate / 50e6).min(1.0), 0.5, 0.1),
        text: format!(
            "{} {verb} {} of the bytes the Lua heap takes in ({:.0} MB/s in all).",
            who.join(" and "),
            pct(sum),
            rate / 1e6
        ),
        evidence: format!(
            "alloc: {} of the bytes were tables growing; {}",
            pct(resize),
            j["sampling"]["estimated_by"].as_str().map(|e| format!("totals from {e}")).unwrap_or_default()
        ),
        section: "alloc".into(),
    }]
}

/// Where the worker blocks: time off the CPU outside the event loop's wait.
/// Time spent runnable, preempted and waiting for a CPU, is not the code's
/// doing: it is said apart.
pub fn offcpu(out: &Output) -> Vec<Finding> {
    let (Some(j), Some(stacks)) = (&out.json, &out.stacks) else { return vec![] };
    let secs = num(j, &["duration_secs"]).unwrap_or(0.0);
    let wall = secs * 1e6 * j["pids"].as_array().map_or(1, Vec::len).max(1) as f64;
    let waiting = |s: &Vec<String>| s.last().is_some_and(|f| f.starts_with("[runnable"));
    let blocked = Stacks {
        stacks: stacks.stacks.iter().filter(|(s, _)| !waiting(s)).cloned().collect(),
        total: stacks.stacks.iter().filter(|(s, _)| !waiting(s)).map(|(_, w)| w).sum(),
    };
    let runnable = stacks.total - blocked.total;
    let mut out: Vec<Finding> = hot_spots(&blocked, 0.10)
        .into_iter()
        .take(2)
        .map(|h| {
            let of_wall = h.weight as f64 / wall.max(1.0);
            let inside = h.c_callee.as_ref().map(|(c, _)| format!(", in `{c}`")).unwrap_or_default();
            Finding {
                severity: severity(of_wall, 0.10, 0.01),
                text: format!("{} blocks the worker {} of the time{inside}: no other request runs meanwhile.", display(&h.label), pct(of_wall)),
                evidence: format!(
                    "offcpu: {:.2} s blocked under it, {} of the time blocked in system calls, in {secs:.1} s",
                    h.weight as f64 / 1e6,
                    pct(h.weight as f64 / blocked.total.max(1) as f64),
                ),
                section: "offcpu".into(),
            }
        })
        .collect();
    let of_wall = runnable as f64 / wall.max(1.0);
    if of_wall >= 0.05 {
        out.push(Finding {
            severity: severity(of_wall, 1.0, 0.10),
            text: format!("The worker waited {} of the time for a CPU while it could run: the machine has more work than CPUs.", pct(of_wall)),
            evidence: format!("offcpu: {:.2} s runnable after preemption in {secs:.1} s", runnable as f64 / 1e6),
            section: "offcpu".into(),
        });
    }
    out
}

/// Long event-loop iterations and the code that held them.
pub fn epoll_loop(out: &Output) -> Vec<Finding> {
    let Some(j) = &out.json else { return vec![] };
    let (Some(long), Some(all)) = (num(j, &["long_iterations"]), num(j, &["iterations"])) else { return vec![] };
    if long == 0.0 {
        return vec![];
    }
    let threshold_ms = num(j, &["threshold_us"]).unwrap_or(0.0) / 1e3;
    let culprit = j["culprits"].as_array().and_then(|c| c.first());
    let who = culprit
        .and_then(|c| Some(format!("; {} ran in {} of them", display(c["frame"].as_str()?), pct(c["share"].as_f64()?))))
        .unwrap_or_default();
    let max = culprit.and_then(|c| c["max_ms"].as_f64()).map(|m| format!(", the longest {m:.0} ms")).unwrap_or_default();
    vec![Finding {
        severity: severity(long / all.max(1.0), 0.10, 0.01),
        text: format!("{long:.0} of {all:.0} event-loop iterations took over {threshold_ms:.0} ms{who}."),
        evidence: format!("epoll-loop: every request on the worker waits behind such an iteration{max}"),
        section: "epoll-loop".into(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_labels_and_display() {
        assert!(is_lua("hot /a/b.lua:23") && is_lua("/a/b.lua:30") && is_lua("content_by_lua(nginx.conf:40):0"));
        assert!(is_lua("hot /a/b.lua:23 @25"));
        assert!(!is_lua("gsub [builtin]") && !is_lua("trace#3") && !is_lua("lj_vm_modi"));
        assert_eq!(display("hot /srv/app/hot.lua:23"), "`hot` (hot.lua:23)");
        assert_eq!(display("/srv/app/hot.lua:30"), "the function at hot.lua:30");
        assert_eq!(display("gsub [builtin]"), "`gsub [builtin]`");
    }

    #[test]
    fn hot_spots_skip_wrappers_and_see_compiled_code() {
        let s = Stacks::parse(
            "handler h.lua:1;work w.lua:5;gsub [builtin] 30\n\
             handler h.lua:1;work w.lua:5;w.lua:9 20\n\
             handler h.lua:1;work w.lua:5 10\n\
             handler h.lua:1;jit w.lua:20;trace#4 40\n",
        )
        .unwrap();
        let spots = hot_spots(&s, 0.1);
        let labels: Vec<&str> = spots.iter().map(|h| h.label.as_str()).collect();
        // `handler` passes its time on; `work` keeps it (its callback holds a third).
        assert_eq!(labels, vec!["work w.lua:5", "jit w.lua:20", "w.lua:9"]);
        assert_eq!(spots[0].compiled, 0);
        assert_eq!(spots[0].c_callee, Some(("gsub [builtin]".into(), 30)));
        assert_eq!(spots[1].compiled, 40);
        let f = cpu(&Output { json: None, stacks: Some(s) });
        let j: Value = serde_json::json!({"top_by_bytes": [
            {"frame": "a /x/a.lua:3", "self_share": 0.7}, {"frame": "b /x/b.lua:9", "self_share": 0.25}, {"frame": "c /x/c.lua:1", "self_share": 0.05}],
            "rate_per_sec": {"bytes": 4e8}, "bytes": 1e9, "table_resizes": {"bytes": 1e8}});
        let a = alloc(&Output { json: Some(j), stacks: None });
        assert_eq!(a[0].text, "`a` (a.lua:3) 70% and `b` (b.lua:9) 25% allocate 95% of the bytes the Lua heap takes in (400 MB/s in all).");
        assert!(f[0].text.starts_with("`work` (w.lua:5) takes 60% of CPU and runs interpreted"), "{}", f[0].text);
        assert!(f[1].text.contains("runs 100% compiled"), "{}", f[1].text);
    }
}
