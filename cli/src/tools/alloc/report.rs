//! The alloc tool's outputs: the flame graph by bytes or count, and the
//! figures a script reads (totals per kind, rate, sizes, top functions, how
//! it sampled).

use aya::maps::{MapData, PerCpuArray};
use ljprobe_common::{AllocTotals, ALLOC_FREED_BYTES, ALLOC_FREES, ALLOC_HIST_BUCKETS};
use serde_json::json;

use super::{sampler::{Sampling, NOT_WATCHED}, tally::Tally, Args, Weight};
use crate::{
    bpf::per_cpu_total,
    collect::Collected,
    report::{self, top_lua_functions, Profile},
    target::Process,
};

pub struct Run<'a> {
    pub args: &'a Args,
    pub aim_root: &'a Process,
    pub default_svg: String,
    pub collected: Collected,
    pub sampling: Sampling,
    pub tally: &'a Tally,
    pub kernel_totals: &'a [(u64, AllocTotals)],
    pub counts: &'a PerCpuArray<MapData, u64>,
    pub hist: &'a PerCpuArray<MapData, u64>,
    pub lost: u64,
    pub resize_known: bool,
}

pub fn write(r: Run) -> anyhow::Result<()> {
    let scale = r.sampling.scale;
    let w = r.tally.weigh(r.kernel_totals, scale);
    let secs = r.collected.elapsed_secs.max(1e-9);
    let kind = |k: &str| w.by_kind.get(k).copied().unwrap_or_default();
    let (new, resize, grown) = (kind("new"), kind("table_resize"), kind("grown"));
    let bytes = new.bytes + resize.bytes + grown.bytes;
    let count = new.count + resize.count + grown.count;
    // Sampled: the bytes freed come from the VM's accounting (allocated less
    // the heap's growth), not from the windows, which see the collector's
    // sweeps in bursts; the count in the windows' proportion of bytes to frees.
    let counted_frees = per_cpu_total(r.counts, ALLOC_FREES) as f64;
    let counted_freed = per_cpu_total(r.counts, ALLOC_FREED_BYTES) as f64;
    let (frees, freed) = match r.sampling.vm_freed_bytes {
        Some(f) if r.sampling.mode != "all" && counted_freed > 0.0 => (counted_frees * f.max(0.0) / counted_freed, f.max(0.0)),
        _ => (counted_frees * scale, counted_freed * scale),
    };
    let hist: Vec<serde_json::Value> = (0..ALLOC_HIST_BUCKETS)
        .filter_map(|i| {
            let n = per_cpu_total(r.hist, i) as f64 * scale;
            (n > 0.0).then(|| json!({ "from": 1u64 << i, "to": 1u64 << (i + 1), "count": n.round() }))
        })
        .collect();
    let (folded, unit) = match r.args.weight {
        Weight::Bytes => (w.by_bytes.clone(), "bytes"),
        Weight::Count => (w.by_count.clone(), "allocations"),
    };
    let s = &r.sampling;
    let mut notes = vec![format!(
        "allocated {} in {:.0} calls ({}/s); grown tables {}; freed {}",
        human(bytes),
        count,
        human(bytes / secs),
        human(resize.bytes),
        human(freed)
    )];
    notes.push(match s.mode {
        "all" => format!("every allocator call recorded ({} events)", w.recorded),
        _ => format!(
            "sampled: probe counted {:.1}% of the time in {} windows ({} events); each stands for {:.1}, estimated by {}",
            s.duty * 100.0,
            s.windows,
            w.recorded,
            s.scale,
            s.estimated_by
        ),
    });
    if s.estimated_by == "time" && s.mode != "all" {
        let why = if s.accounting_missing.as_deref() == Some(NOT_WATCHED) { "was not read" } else { "could not be read" };
        notes.push(format!("the VM's own accounting {why}, so totals are scaled by time: low for a target that allocates flat out (shares hold; --all counts exactly)"));
    }
    if !r.resize_known {
        notes.push("this LuaJIT has no symbols naming lj_tab_resize: table growth shows as [block grown] (array parts) or new blocks (hash parts)".into());
    }
    if r.lost > 0 {
        notes.push(format!("{} events had no room in the kernel's buffers or stack map", r.lost));
    }
    let extra = json!({
        "weighed_by": unit,
        "sampling": s,
        "events": s.probe_hits,
        "recorded": w.recorded,
        "bytes": bytes.round(),
        "allocations": { "count": new.count.round(), "bytes": new.bytes.round() },
        "growths": { "count": (resize.count + grown.count).round(), "bytes": (resize.bytes + grown.bytes).round() },
        "table_resizes": { "count": resize.count.round(), "bytes": resize.bytes.round() },
        "frees": { "count": frees.round(), "bytes": freed.round() },
        "rate_per_sec": { "calls": count / secs, "bytes": bytes / secs },
        "size_histogram": hist,
        "top_by_bytes": top_lua_functions(&w.by_bytes),
        "top_by_count": top_lua_functions(&w.by_count),
        "lost_events": r.lost,
        "table_resize_named": r.resize_known,
    });
    let serde_json::Value::Object(extra) = extra else { unreachable!("a JSON object") };
    let title = format!(
        "ljprobe alloc: PID {} ({}), {} by {}",
        r.args.run.pid,
        r.aim_root.comm,
        r.args.stacks.stack.title(),
        unit
    );
    report::write(&r.args.outputs, &Profile {
        tool: "alloc",
        title,
        pids: r.collected.pids_seen.clone(),
        frequency: None,
        unit,
        folded,
        by_vm_state: w.by_state,
        collected: r.collected,
        default_svg: r.default_svg,
        extra,
        notes,
        pprof: report::PprofKind::Alloc { by_bytes: w.by_bytes, by_count: w.by_count },
    })
}

fn human(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}
