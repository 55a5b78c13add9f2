//! The report page's content: one section per tool, built from the files it
//! wrote, and the findings first.

use std::{path::Path, time::Duration};

use serde_json::Value;

use super::{
    findings,
    page::{Graph, Page, Section, Table},
    Ran, Tool,
};

pub fn page(pid: u32, duration: Duration, dir: &Path, ran: &[Ran]) -> Page {
    let mut findings = Vec::new();
    let mut sections = Vec::new();
    for r in ran {
        let out = &r.output;
        findings.extend(match r.tool {
            Tool::Cpu => findings::cpu(out),
            Tool::Offcpu => findings::offcpu(out),
            Tool::EpollLoop => findings::epoll_loop(out),
            Tool::Gc => findings::gc(out),
            Tool::Alloc => findings::alloc(out),
        });
        sections.push(section(dir, r));
    }
    // Most severe first; within a severity, the order the tools ran in.
    findings.sort_by_key(|f| f.severity);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| format!(" ({})", c.trim())).unwrap_or_default();
    Page {
        title: format!("ljprobe report: PID {pid}{comm}"),
        subtitle: format!(
            "{} run together for {:.0} s; each tool's files are beside this page",
            ran.iter().map(|r| r.tool.name()).collect::<Vec<_>>().join(", "),
            duration.as_secs_f64()
        ),
        findings,
        sections,
    }
}

fn title(tool: Tool) -> &'static str {
    match tool {
        Tool::Cpu => "On-CPU: where the CPU goes (ljprobe cpu)",
        Tool::Offcpu => "Off-CPU: where the worker blocks (ljprobe offcpu)",
        Tool::EpollLoop => "Event loop: iterations that hold up every request (ljprobe epoll-loop)",
        Tool::Gc => "The Lua heap and its collector (ljprobe gc)",
        Tool::Alloc => "Who allocates (ljprobe alloc)",
    }
}

fn section(dir: &Path, r: &Ran) -> Section {
    let name = r.tool.name();
    let mut s = Section { id: name.to_string(), title: title(r.tool).to_string(), ..Default::default() };
    if let Some(e) = &r.error {
        s.lines.push(format!("Did not run: {e}"));
        return s;
    }
    for ext in ["svg", "folded", "json"] {
        let file = format!("{name}.{ext}");
        if dir.join(&file).exists() {
            s.files.push((file.clone(), file));
        }
    }
    if let Ok(svg) = std::fs::read_to_string(dir.join(format!("{name}.svg"))) {
        s.graphs.push(Graph { title: s.title.clone(), svg });
    }
    let Some(j) = &r.output.json else {
        s.lines.push("The tool wrote no summary.".into());
        return s;
    };
    let secs = f(j, &["duration_secs"]);
    match r.tool {
        Tool::Cpu => {
            s.lines.push(format!("{} samples at {} Hz in {secs:.1} s, {} lost.", u(j, "samples"), u(j, "frequency"), u(j, "lost_samples")));
            s.lines.push(vm_states(j));
            s.tables.push(top_table("Functions by self share (Lua or C, innermost)", j.get("top_frames"), "samples", 1.0));
        }
        Tool::Offcpu => {
            s.lines.push(format!("{:.2} s blocked in {} blocks over {secs:.1} s (blocks shorter than {} us left out).", f(j, &["blocked_us"]) / 1e6, u(j, "blocks"), u(j, "min_block_us")));
            s.tables.push(top_table("Where the blocked time is (innermost function)", j.get("top_frames"), "ms", 1e-3));
        }
        Tool::EpollLoop => {
            s.lines.push(format!(
                "{} iterations, {} of them at least {:.0} ms; long iterations: {:.0} ms on CPU, {:.0} ms blocked, {:.0} ms waiting for a CPU.",
                u(j, "iterations"),
                u(j, "long_iterations"),
                f(j, &["threshold_us"]) / 1e3,
                f(j, &["long_iteration_time", "on_cpu_ms"]),
                f(j, &["long_iteration_time", "blocked_ms"]),
                f(j, &["long_iteration_time", "runnable_ms"])
            ));
            let rows = j["culprits"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(|c| {
                vec![
                    c["frame"].as_str().unwrap_or("?").to_string(),
                    c["iterations"].to_string(),
                    format!("{:.0}%", f(c, &["share"]) * 100.0),
                    format!("{:.1}", f(c, &["max_ms"])),
                ]
            });
            s.tables.push(Table {
                caption: "Lua functions running in long iterations".into(),
                headers: ["function", "iterations", "share", "longest ms"].map(String::from).to_vec(),
                rows: rows.collect(),
            });
        }
        Tool::Gc => {
            s.lines.push(format!(
                "Heap {:.1} MB -> {:.1} MB (min {:.1}, max {:.1}); {} cycles{}; {:.1} MB/s allocated; the collector took {:.0}% of the VM's CPU samples.",
                f(j, &["heap_start_bytes"]) / 1e6,
                f(j, &["heap_end_bytes"]) / 1e6,
                f(j, &["heap_min_bytes"]) / 1e6,
                f(j, &["heap_max_bytes"]) / 1e6,
                u(j, "cycles"),
                if j["exact"].as_bool() == Some(true) { "" } else { " at least" },
                f(j, &["alloc_bytes_per_sec"]) / 1e6,
                f(j, &["gc_share"]) * 100.0
            ));
        }
        Tool::Alloc => {
            s.lines.push(format!(
                "{:.1} MB/s in {:.0} calls/s; {:.1} MB/s of it tables growing; totals estimated by {}.",
                f(j, &["rate_per_sec", "bytes"]) / 1e6,
                f(j, &["rate_per_sec", "calls"]),
                f(j, &["table_resizes", "bytes"]) / secs.max(1e-9) / 1e6,
                j["sampling"]["estimated_by"].as_str().unwrap_or("counting every call")
            ));
            s.tables.push(top_table("Lua functions by bytes allocated", j.get("top_by_bytes"), "MB", 1e-6));
        }
    }
    s
}

/// A summary's number at `path`, 0 where it has none (a line still reads).
fn f(j: &Value, path: &[&str]) -> f64 {
    findings::num(j, path).unwrap_or(0.0)
}

fn u(j: &Value, k: &str) -> String {
    j.get(k).map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

/// "In compiled traces 28%, ..." from a summary's VM-state counts.
fn vm_states(j: &Value) -> String {
    let Some(m) = j["by_vm_state"].as_object() else { return String::new() };
    let total: f64 = m.values().filter_map(Value::as_f64).sum();
    let mut v: Vec<(&String, f64)> = m.iter().map(|(k, v)| (k, v.as_f64().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = v.iter().map(|(k, n)| format!("{k} {:.0}%", n / total.max(1.0) * 100.0)).collect();
    format!("VM states: {}.", parts.join(", "))
}

fn top_table(caption: &str, frames: Option<&Value>, unit: &str, scale: f64) -> Table {
    let rows = frames.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default().iter().take(10).map(|t| {
        vec![
            t["frame"].as_str().unwrap_or("?").to_string(),
            format!("{:.1}%", f(t, &["self_share"]) * 100.0),
            format!("{:.1}%", f(t, &["total_share"]) * 100.0),
            // Counts are whole; milliseconds and megabytes keep a decimal.
            format!("{:.*}", if scale == 1.0 { 0 } else { 1 }, f(t, &["self"]) * scale),
        ]
    });
    Table {
        caption: caption.into(),
        headers: vec!["function".into(), "self".into(), "total".into(), format!("self ({unit})")],
        rows: rows.collect(),
    }
}
