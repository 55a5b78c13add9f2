//! The jit report: printed for a person, JSON for a script, and the Lua
//! stacks with their VM state as a flame graph.

use std::{collections::BTreeMap, io::Write, path::Path};

use anyhow::{Context, Result};
use ljprobe_flamegraph::{svg, Folded};
use serde::Serialize;

use super::analysis::{AbortGroup, Blacklisted, ExitRow, FunctionStates, Penalized, Traces};
use crate::collect::Collected;

#[derive(Debug, Serialize)]
pub struct StateShare {
    pub samples: u64,
    pub share: f64,
}

#[derive(Debug, Serialize)]
pub struct RequestExits {
    pub requests: u64,
    /// `[lo, hi)` exits per request, and how many requests had that many.
    pub buckets: Vec<(u64, u64, u64)>,
    pub note: &'static str,
}

/// How long one process's exits were watched (`--max-exits`).
#[derive(Debug, Serialize)]
pub struct ExitWatch {
    pub pid: u32,
    pub watched_secs: f64,
    /// Seconds in which the budget ran out and the watch went off.
    pub capped_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub title: String,
    pub pids: Vec<u32>,
    pub frequency: u64,
    pub samples: u64,
    /// Processes whose JIT compiler was off (`jit.off()`) at the end.
    pub jit_off: Vec<u32>,
    pub vm_states: BTreeMap<String, StateShare>,
    pub functions: Vec<FunctionStates>,
    /// Writes of the compiler's state seen: trace attempts started, traces
    /// assembled, aborts.
    pub trace_attempts: u64,
    pub traces_assembled: u64,
    pub aborts_total: u64,
    pub aborts: Vec<AbortGroup>,
    pub blacklisted: Vec<Blacklisted>,
    pub penalty_cache: Vec<Penalized>,
    pub traces: Traces,
    pub exits_total: u64,
    /// Summed over processes, each over its watched time.
    pub exits_per_sec: f64,
    pub exits: Vec<ExitRow>,
    pub exits_per_request: Option<RequestExits>,
    pub exit_watch: Vec<ExitWatch>,
    pub summary: Vec<String>,
    pub lost: BTreeMap<&'static str, u64>,
    pub collected: Collected,
    pub notes: Vec<String>,
}

/// VM states in the order `ngx-lj-vm-states` printed them, with our names.
const STATES: &[(&str, &str)] = &[
    ("trace", "compiled (traces)"),
    ("interpreter", "interpreted"),
    ("c", "C functions"),
    ("gc", "garbage collector"),
    ("trace-exit", "trace exits"),
    ("jit-recorder", "JIT compiler: recording"),
    ("jit-optimizer", "JIT compiler: optimizing"),
    ("jit-assembler", "JIT compiler: assembling"),
    ("outside-lua", "outside Lua (host code)"),
    ("no-vm", "no VM found"),
    ("unknown", "unknown"),
];

pub fn print(r: &Report, top: usize, svg_path: Option<&Path>, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", r.title)?;
    writeln!(out, "  {} samples at {} Hz in {:.1}s ({} lost)", r.samples, r.frequency, r.collected.elapsed_secs, r.collected.lost)?;
    for pid in &r.jit_off {
        writeln!(out, "  process {pid}: the JIT compiler is off (jit.off()): everything runs in the interpreter")?;
    }
    writeln!(out, "VM states:")?;
    for (key, label) in STATES {
        if let Some(s) = r.vm_states.get(*key).filter(|s| s.samples > 0) {
            writeln!(out, "  {:>5.1}%  {label}", s.share * 100.0)?;
        }
    }
    if !r.summary.is_empty() {
        writeln!(out, "Hot functions:")?;
        for line in &r.summary {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out, 
        "Trace aborts: {} in the run ({} trace attempts, {} traces assembled)",
        r.aborts_total, r.trace_attempts, r.traces_assembled
    )?;
    for a in r.aborts.iter().take(top) {
        let side = a.side_of.map(|(t, e)| format!("({t}/{e}) ")).unwrap_or_default();
        let start = a.start.as_ref().map_or_else(|| "?".into(), ToString::to_string);
        let at = a.at.as_ref().filter(|w| Some(*w) != a.start.as_ref()).map(|w| format!(" at {w}")).unwrap_or_default();
        writeln!(out, "  {:>6}x  {side}{start} -- {}{at}", a.count, a.reason.reason)?;
    }
    if !r.blacklisted.is_empty() {
        writeln!(out, "Blacklisted (interpreted for good) in the code that ran:")?;
        for b in r.blacklisted.iter().take(top) {
            let why = if b.jit_off {
                " (jit.off for this function)".to_string()
            } else {
                b.last_reason.as_ref().map(|r| format!(" (last abort: {r})")).unwrap_or_default()
            };
            writeln!(out, "  {} {} {}{why}", b.at, b.kind, b.bytecode)?;
        }
    }
    if !r.penalty_cache.is_empty() {
        writeln!(out, "Recent abort places (the VM's penalty cache, before or during the run):")?;
        for p in r.penalty_cache.iter().take(top) {
            let hint = if p.nyi_in_function.is_empty() { String::new() } else { format!(" (in the function: {})", p.nyi_in_function.join(", ")) };
            writeln!(out, "  {}  {}{hint}  (next try after {} hits)", p.start, p.reason, p.backoff)?;
        }
    }
    let t = &r.traces;
    writeln!(out, "Traces: {} alive ({} at the start, {} of those gone since)", t.alive, t.alive_at_start, t.gone)?;
    let mut biggest: Vec<_> = t.list.iter().collect();
    biggest.sort_by_key(|t| std::cmp::Reverse(t.mcode_bytes));
    for row in biggest.iter().take(top) {
        let kind = if row.root == 0 { "root".to_string() } else { format!("side of {}", row.root) };
        let start = row.start.as_ref().map_or_else(|| "?".into(), ToString::to_string);
        let end = row.end.as_ref().map_or_else(|| "?".into(), ToString::to_string);
        let link = if row.link == 0 || row.link == row.trace {
            row.link_type.clone()
        } else {
            format!("{} to #{}", row.link_type, row.link)
        };
        writeln!(out, 
            "  #{:<4} {kind:<12} {start} .. {end}  {link}, {} IR, {} B code",
            row.trace, row.ir_instructions, row.mcode_bytes
        )?;
    }
    let watched: f64 = r.exit_watch.iter().map(|w| w.watched_secs).sum();
    let capped = r.exit_watch.iter().any(|w| w.capped_seconds > 0);
    writeln!(out, 
        "Trace exits: {} {}({:.0}/s)",
        r.exits_total,
        if capped { format!("in {watched:.1}s watched ") } else { String::new() },
        r.exits_per_sec
    )?;
    for e in r.exits.iter().take(top) {
        let at = e.at.as_ref().map_or_else(|| "?".into(), ToString::to_string);
        let start = e.trace_start.as_ref().map(|w| format!(" (trace from {w})")).unwrap_or_default();
        writeln!(out, "  {:>9} ({:.0}/s)  trace {} exit {} -> {at}{start}", e.count, e.per_sec, e.trace, e.exit)?;
    }
    if let Some(req) = &r.exits_per_request {
        writeln!(out, "Exits per request ({} requests):", req.requests)?;
        let max = req.buckets.iter().map(|b| b.2).max().unwrap_or(1).max(1);
        for (lo, hi, n) in &req.buckets {
            let bar = "@".repeat(((*n as f64 / max as f64) * 40.0).ceil() as usize);
            let range = if *hi == 1 { "0".to_string() } else { format!("{lo}..{}", hi - 1) };
            writeln!(out, "  {range:>13} | {bar:<40} {n}")?;
        }
    }
    for (what, n) in r.lost.iter().filter(|(_, &n)| n > 0) {
        writeln!(out, "  note: {n} {what} lost")?;
    }
    for note in r.notes.iter().cloned().chain(ljprobe_host::steal::note(r.collected.steal_pct)) {
        writeln!(out, "  note: {note}")?;
    }
    if let Some(p) = svg_path {
        writeln!(out, "  flame graph of Lua stacks by VM state: {}", p.display())?;
    }
    Ok(())
}

pub fn write_svg(path: &Path, folded: &Folded, title: &str, subtitle: String) -> Result<()> {
    let opts = svg::SvgOptions { title: title.to_string(), subtitle, count_name: "samples".into() };
    let mut buf = Vec::new();
    svg::render(folded, &opts, &mut buf).context("rendering the flame graph")?;
    crate::output::write(path, &buf)
}
