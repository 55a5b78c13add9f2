//! From what the run collected to the report: aborts grouped by place and
//! reason, blacklisted bytecode in the code that ran, the traces alive, exits
//! by trace and snapshot, VM states overall and per hot function.

use std::collections::{BTreeMap, HashMap, HashSet};

use ljprobe_flamegraph::Frame;
use ljprobe_common::jit::JitAbort;
use serde::Serialize;

use super::{
    decode::{self, Reason, Where},
    watch::Vm,
};
use crate::lua::{
    jit_names::{LINK_TYPES, NYI_BYTECODE},
    jit_state, Op, ProcMem, Resolver,
};

/// Aborts with the same start, place and reason.
#[derive(Debug, Clone, Serialize)]
pub struct AbortGroup {
    pub start: Option<Where>,
    pub at: Option<Where>,
    #[serde(flatten)]
    pub reason: Reason,
    pub count: u64,
    /// Side traces: the parent trace and exit they started from.
    pub side_of: Option<(u32, u32)>,
    pub pids: Vec<u32>,
}

/// One abort, placed while its process lives.
#[derive(Debug, Clone)]
pub struct AbortEvent {
    pub pid: u32,
    pub start: Option<Where>,
    pub at: Option<Where>,
    pub reason: Reason,
    pub side_of: Option<(u32, u32)>,
    /// Protos to look at for blacklisting: where it started and where it stopped.
    pub protos: [u64; 2],
}

pub fn abort_event(r: &mut Resolver<ProcMem>, a: &JitAbort) -> AbortEvent {
    let start = decode::place(r, a.startpt, a.startpc);
    let at = if a.pt != 0 {
        decode::place(r, a.pt, a.pc)
    } else if a.frame_link & 3 == 0 && a.frame_link >= 4 {
        // A Lua frame's link is the return address: the call is before it.
        decode::place(r, 0, a.frame_link - 4)
    } else {
        None
    };
    AbortEvent {
        pid: a.tgid,
        start,
        at,
        reason: decode::reason(r, a.error, a.errinfo),
        side_of: (a.parent != 0).then_some((a.parent, a.exitno)),
        protos: [a.startpt, a.pt],
    }
}

pub fn group_aborts(events: &[AbortEvent]) -> Vec<AbortGroup> {
    type Key = (Option<Where>, Option<Where>, Reason, Option<(u32, u32)>);
    let mut groups: BTreeMap<Key, (u64, HashSet<u32>)> = BTreeMap::new();
    for e in events {
        let g = groups.entry((e.start.clone(), e.at.clone(), e.reason.clone(), e.side_of)).or_default();
        g.0 += 1;
        g.1.insert(e.pid);
    }
    let mut out: Vec<AbortGroup> = groups
        .into_iter()
        .map(|((start, at, reason, side_of), (count, pids))| {
            let mut pids: Vec<u32> = pids.into_iter().collect();
            pids.sort_unstable();
            AbortGroup { start, at, reason, count, side_of, pids }
        })
        .collect();
    out.sort_by_key(|a| std::cmp::Reverse(a.count));
    out
}

/// Bytecode the JIT no longer tries, in the functions that ran.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Blacklisted {
    pub at: Where,
    /// "loop" or "function".
    pub kind: &'static str,
    pub bytecode: String,
    /// `jit.off(f)` for this function rather than blacklisting.
    pub jit_off: bool,
    /// The last abort reason the penalty cache still holds for it.
    pub last_reason: Option<String>,
}

/// A penalty-cache slot: a trace start that aborted (before or during the run).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Penalized {
    pub start: Where,
    pub reason: String,
    /// Iterations the VM waits before trying here again (doubles per abort).
    pub backoff: u16,
    pub pid: u32,
    /// For "NYI: bytecode", which the cache keeps without the bytecode: the
    /// instructions of the function the recorder cannot compile (`FNEW`,
    /// `UCLO`), with their lines: the likely culprits.
    pub nyi_in_function: Vec<String>,
}

/// What one VM's memory said at the last look: kept, so that a process
/// that exits before the end still has its part in the report.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub blacklisted: Vec<Blacklisted>,
    pub penalized: Vec<Penalized>,
    pub traces: Vec<TraceRow>,
    pub alive_at_start: usize,
    pub gone: usize,
}

/// Reads one VM: its traces, its penalty cache, and the interpreter-only
/// bytecode of every proto that ran (`funcs`, sampled GCfuncs), aborted
/// (`protos`) or is in the penalty cache.
pub fn findings(
    vm: &Vm,
    r: &mut Resolver<ProcMem>,
    funcs: Option<&HashSet<u64>>,
    protos: &HashSet<u64>,
) -> Option<Findings> {
    let (l, jl) = (&vm.build.obj, &vm.build.jit);
    let now = jit_state::traces(&vm.mem, l, jl, vm.g);
    // A VM whose trace array cannot be read at all is gone (exited).
    jit_state::enabled(&vm.mem, l, jl, vm.g)?;
    let key = |t: &jit_state::TraceInfo| (t.traceno, t.startpc);
    let now_keys: HashSet<_> = now.iter().map(key).collect();
    let mut f = Findings {
        alive_at_start: vm.traces_at_start.len(),
        gone: vm.traces_at_start.iter().filter(|t| !now_keys.contains(&key(t))).count(),
        ..Findings::default()
    };
    for t in now {
        f.traces.push(TraceRow {
            pid: vm.pid,
            trace: t.traceno,
            root: t.root,
            link: t.link,
            link_type: LINK_TYPES.get(usize::from(t.linktype)).map_or_else(|| t.linktype.to_string(), |s| s.to_string()),
            start: decode::place(r, t.startpt, t.startpc),
            end: t.endpc.and_then(|pc| decode::place(r, 0, pc)),
            ir_instructions: t.ir_ins,
            ir_constants: t.ir_consts,
            mcode_bytes: t.mcode_bytes,
        });
    }
    let penalties = jit_state::penalties(&vm.mem, l, jl, vm.g);
    let reasons: HashMap<u64, u16> = penalties.iter().map(|p| (p.pc, p.reason)).collect();
    let mut all: HashSet<u64> = funcs.into_iter().flatten().filter_map(|&func| r.func_proto(func)).collect();
    all.extend(protos.iter().copied().filter(|&p| p != 0));
    let mut penalized = HashSet::new();
    for p in &penalties {
        if let Some(proto) = jit_state::proto_of_pc(&vm.mem, l, p.pc) {
            all.insert(proto);
            if let Some(start) = decode::place(r, proto, p.pc) {
                let nyi_in_function =
                    if usize::from(p.reason) == NYI_BYTECODE { nyi_bytecodes(r, proto) } else { Vec::new() };
                penalized.insert(Penalized {
                    start,
                    reason: decode::reason_name(p.reason),
                    backoff: p.val,
                    pid: vm.pid,
                    nyi_in_function,
                });
            }
        }
    }
    let mut black = HashSet::new();
    for proto in all {
        let Some(found) = jit_state::interpreter_only_in(&vm.mem, l, proto) else { continue };
        let jit_off = jit_state::proto_flags(&vm.mem, jl, proto).is_some_and(|fl| fl & jl.proto_nojit != 0);
        for (pos, op) in found {
            let pc = proto + l.proto_size + u64::from(pos) * l.bcins_size;
            let Some(at) = decode::place(r, proto, pc) else { continue };
            black.insert(Blacklisted {
                at,
                kind: if matches!(op, Op::Ifuncf | Op::Ifuncv) { "function" } else { "loop" },
                bytecode: format!("{op:?}").to_uppercase(),
                jit_off,
                last_reason: reasons.get(&pc).map(|&c| decode::reason_name(c)),
            });
        }
    }
    f.blacklisted = black.into_iter().collect();
    f.blacklisted.sort();
    // A start can sit in two slots (one was reused before the other aged
    // out): keep the one with the longer back-off, the later.
    let mut by_place: BTreeMap<(Where, String), Penalized> = BTreeMap::new();
    for p in penalized {
        let key = (p.start.clone(), p.reason.clone());
        if by_place.get(&key).is_none_or(|q| q.backoff < p.backoff) {
            by_place.insert(key, p);
        }
    }
    f.penalized = by_place.into_values().collect();
    f.penalized.sort_by(|a, b| b.backoff.cmp(&a.backoff).then(a.cmp(b)));
    Some(f)
}

/// The `FNEW` and `UCLO` instructions of a proto (the bytecodes LuaJIT 2.1's
/// recorder raises "NYI: bytecode" for), as `FNEW at line N`.
fn nyi_bytecodes(r: &mut Resolver<ProcMem>, proto: u64) -> Vec<String> {
    let l = &r.layout().clone();
    let Some(bc) = r.bytecode(proto) else { return Vec::new() };
    let mut out = Vec::new();
    for (pos, &ins) in bc.iter().enumerate() {
        let Some(op @ (Op::Fnew | Op::Uclo)) = l.op(ins) else {
            continue;
        };
        let pc = proto + l.proto_size + pos as u64 * l.bcins_size;
        if let Some(w) = decode::place(r, proto, pc) {
            let s = format!("{} at line {}", format!("{op:?}").to_uppercase(), w.line);
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceRow {
    pub pid: u32,
    pub trace: u32,
    /// 0 for a root trace.
    pub root: u32,
    pub link: u32,
    pub link_type: String,
    pub start: Option<Where>,
    pub end: Option<Where>,
    pub ir_instructions: u32,
    pub ir_constants: u32,
    pub mcode_bytes: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Traces {
    pub alive: usize,
    pub alive_at_start: usize,
    /// Traces alive at the start that were gone or replaced by the end: a
    /// flush (`jit.flush()`, or the machine-code area full) or their
    /// function collected.
    pub gone: usize,
    pub list: Vec<TraceRow>,
}

pub fn merge_traces(all: &[&Findings]) -> Traces {
    let list: Vec<TraceRow> = all.iter().flat_map(|f| f.traces.iter().cloned()).collect();
    Traces {
        alive: list.len(),
        alive_at_start: all.iter().map(|f| f.alive_at_start).sum(),
        gone: all.iter().map(|f| f.gone).sum(),
        list,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExitRow {
    pub pid: u32,
    pub trace: u32,
    pub exit: u32,
    pub count: u64,
    pub per_sec: f64,
    /// Where the interpreter resumes after this exit.
    pub at: Option<Where>,
    /// Where the trace starts.
    pub trace_start: Option<Where>,
}

/// Where exit `exitno` of trace `traceno` resumes, and where that trace
/// starts. None for the stack check's exit number (`nsnap`): the handler
/// counts that exit again under the real one it then finds.
pub fn exit_place(vm: &Vm, r: &mut Resolver<ProcMem>, traceno: u32, exitno: u32) -> Option<ExitPlace> {
    // A trace gone since (flushed) leaves its exits without places.
    let Some((t, pc)) = jit_state::trace_exit(&vm.mem, &vm.build.obj, &vm.build.jit, vm.g, traceno, exitno) else {
        return Some(ExitPlace::default());
    };
    if u64::from(exitno) >= t.snapshots {
        return None;
    }
    Some(ExitPlace { at: pc.and_then(|pc| decode::place(r, 0, pc)), trace_start: decode::place(r, t.startpt, t.startpc) })
}

#[derive(Debug, Clone, Default)]
pub struct ExitPlace {
    pub at: Option<Where>,
    pub trace_start: Option<Where>,
}

/// Exit counts by `exit_key` from the kernel's map, placed; keys known to
/// be the stack check's (`places` holds None) are left out.
/// Rates are per second of the process's watched time (`watched`).
pub fn exits(counts: &[(u64, u64)], places: &HashMap<u64, Option<ExitPlace>>, watched: &HashMap<u32, f64>) -> Vec<ExitRow> {
    let mut out: Vec<ExitRow> = counts
        .iter()
        .filter_map(|&(key, count)| {
            let place = match places.get(&key) {
                Some(None) => return None,
                Some(Some(p)) => p.clone(),
                None => ExitPlace::default(),
            };
            let pid = (key >> 32) as u32;
            let secs = watched.get(&pid).copied().unwrap_or(0.0);
            Some(ExitRow {
                pid,
                trace: ((key >> 16) & 0xffff) as u32,
                exit: (key & 0xffff) as u32,
                count,
                per_sec: count as f64 / secs.max(1e-3),
                at: place.at,
                trace_start: place.trace_start,
            })
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.trace.cmp(&b.trace)).then(a.exit.cmp(&b.exit)));
    out
}

/// Samples of one Lua function (its innermost frame) by VM state.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStates {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub samples: u64,
    /// Of all the run's samples.
    pub share: f64,
    pub states: BTreeMap<String, u64>,
    pub compiled_share: f64,
    pub interpreted_share: f64,
    /// Hot (at least `HOT_SHARE` of the samples), less than half of its
    /// time in traces, and more in the interpreter than in traces: the C
    /// functions it calls then run for interpreted code too.
    pub not_compiled: bool,
    /// The one line that says why.
    pub verdict: String,
}

/// VM states as a function's verdict names them.
const STATE_WORDS: &[(&str, &str)] = &[
    ("interpreter", "interpreted"),
    ("trace", "compiled"),
    ("trace-exit", "in trace exits"),
    ("c", "in C functions"),
    ("gc", "in the GC"),
    ("jit-compiler", "in the JIT compiler"),
];

/// `LJ_TRERR_BLACKL`.
const BLACKLISTED: u32 = 5;

/// A function is hot from this share of the samples on.
pub const HOT_SHARE: f64 = 0.05;

pub fn functions(by_function: &HashMap<Frame, BTreeMap<String, u64>>, total: u64, top: usize) -> Vec<FunctionStates> {
    let mut rows: Vec<FunctionStates> = by_function
        .iter()
        .filter_map(|(f, states)| {
            let Frame::Lua { name, file, line, .. } = f else {
                return None;
            };
            let samples: u64 = states.values().sum();
            let share_of = |k: &str| states.get(k).copied().unwrap_or(0) as f64 / samples.max(1) as f64;
            let interpreted_share = share_of("interpreter");
            let share = samples as f64 / total.max(1) as f64;
            Some(FunctionStates {
                function: name.clone().unwrap_or_else(|| format!("function <{file}:{line}>")),
                file: file.clone(),
                line: *line,
                samples,
                share,
                states: states.clone(),
                compiled_share: share_of("trace"),
                interpreted_share,
                not_compiled: share >= HOT_SHARE && share_of("trace") < 0.5 && interpreted_share > share_of("trace"),
                verdict: String::new(),
            })
        })
        .collect();
    rows.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.function.cmp(&b.function)));
    rows.truncate(top);
    rows
}

/// One line per hot function: how much of it ran compiled, and what the
/// compiler said about it (aborts during the run, penalties before it,
/// blacklisting, its busiest exit).
pub fn verdicts(rows: &mut [FunctionStates], aborts: &[AbortGroup], blacklisted: &[Blacklisted], penalized: &[Penalized], exits: &[ExitRow]) {
    for row in rows.iter_mut() {
        let mine = |w: &Where| w.file == row.file && w.func_line == row.line;
        let mut shares: Vec<(f64, &str)> = STATE_WORDS
            .iter()
            .map(|(k, word)| (row.states.get(*k).copied().unwrap_or(0) as f64 / row.samples.max(1) as f64, *word))
            .filter(|(s, _)| *s >= 0.05)
            .collect();
        shares.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut parts = vec![shares.iter().map(|(s, w)| format!("{:.0}% {w}", s * 100.0)).collect::<Vec<_>>().join(", ")];
        // "blacklisted" is what the recorder says when it meets code already
        // given up on: the cause is an earlier abort, so others go first.
        let mut own: Vec<&AbortGroup> =
            aborts.iter().filter(|a| a.start.as_ref().is_some_and(mine) || a.at.as_ref().is_some_and(mine)).collect();
        own.sort_by_key(|a| (a.reason.code == Some(BLACKLISTED), std::cmp::Reverse(a.count)));
        let earlier = penalized.iter().filter(|p| mine(&p.start)).min_by_key(|p| p.reason == "blacklisted");
        match own.first() {
            Some(a) if a.reason.code != Some(BLACKLISTED) || earlier.is_none() => {
                let n: u64 = own.iter().map(|a| a.count).sum();
                let place = a.at.as_ref().or(a.start.as_ref()).map(ToString::to_string).unwrap_or_else(|| "?".into());
                parts.push(format!("traces abort at {place}, {} ({n} abort{} in the run)", a.reason.reason, if n == 1 { "" } else { "s" }));
            }
            _ => {
                if let Some(p) = earlier {
                    let hint = if p.nyi_in_function.is_empty() { String::new() } else { format!(" ({})", p.nyi_in_function.join(", ")) };
                    parts.push(format!("traces starting at {} aborted: {}{hint}", p.start, p.reason));
                }
            }
        }
        let black: Vec<String> = blacklisted.iter().filter(|b| mine(&b.at)).map(|b| b.at.line.to_string()).collect();
        if !black.is_empty() {
            parts.push(format!("blacklisted (line{} {})", if black.len() == 1 { "" } else { "s" }, black.join(", ")));
        }
        if let Some(e) = exits.iter().find(|e| e.at.as_ref().is_some_and(mine) && e.per_sec >= 1.0) {
            parts.push(format!("trace {} exit {} taken {:.0}/s", e.trace, e.exit, e.per_sec));
        }
        let flag = if row.not_compiled { "[not compiled] " } else { "" };
        row.verdict = format!("{flag}{} ({}:{}): {}", row.function, row.file, row.line, parts.join("; "));
    }
}
