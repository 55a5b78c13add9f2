//! `ljprobe heap`'s output: a few tables on the terminal, the JSON summary,
//! the heap as a flame graph of paths (width: bytes) and its folded stacks,
//! which `ljprobe diff` compares between two snapshots.

use std::{io::Write, path::PathBuf};

use anyhow::Result;
use ljprobe_flamegraph::{folded::Folded, model::Frame, svg};
use serde::Serialize;

use super::{analysis::HeapReport, Args};

pub fn svg_path(args: &Args) -> PathBuf {
    args.svg.clone().unwrap_or_else(|| PathBuf::from(format!("ljprobe-heap-{}.svg", args.pid)))
}

pub fn check(args: &Args) -> Result<()> {
    crate::output::check_svg_json(&svg_path(args), args.json.as_deref())?;
    match &args.folded {
        Some(p) => crate::output::check(p),
        None => Ok(()),
    }
}

pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn print(r: &HeapReport, out: &mut impl Write) -> std::io::Result<()> {
    let s = &r.snapshot;
    writeln!(
        out,
        "ljprobe heap: PID {} ({}): stopped {:.1} ms while {}; copied {} of its private memory{}; walked in {:.0} ms",
        r.pid,
        r.comm,
        s.paused_ms,
        s.stopped_while,
        bytes(s.copied_bytes),
        if s.consistent {
            String::new()
        } else {
            format!(" ({} of it after --max-pause let it run again: not one consistent moment)", bytes(s.copied_live_bytes))
        },
        r.walk_ms
    )?;
    let w = &r.walked;
    writeln!(
        out,
        "  Lua heap: {} in {} objects; the VM counts {} (gc.total, collector in state {}): the objects, the string table ({}) and the VM's own state ({}) are {:.1}% of it",
        bytes(w.bytes),
        count(w.objects),
        bytes(r.vm.gc_total),
        r.vm.gc_state,
        bytes(r.vm.string_table_bytes),
        bytes(r.vm.vm_state_bytes),
        w.covered * 100.0
    )?;
    let strings = r.types.iter().find(|t| t.kind == crate::lua::heap::Kind::String).map_or(0, |t| t.count);
    if strings != u64::from(r.vm.strings) {
        writeln!(out, "  found {} strings where the VM counts {}: the copy did not catch one moment", count(strings), count(u64::from(r.vm.strings)))?;
    }
    if w.broken_lists > 0 {
        writeln!(out, "  {} object list(s) ended on something that is not an object: the figures miss what came after", w.broken_lists)?;
    }
    if r.unreached.objects > 0 {
        writeln!(
            out,
            "  not reached from a root: {} objects, {} (garbage the collector has not swept yet, or held only by compiled traces or C code)",
            count(r.unreached.objects),
            bytes(r.unreached.bytes)
        )?;
    }
    writeln!(out)?;
    writeln!(out, "  {:<14} {:>12} {:>11} {:>6}", "type", "objects", "bytes", "share")?;
    for t in r.types.iter().filter(|t| t.count > 0) {
        let share = if w.bytes > 0 { t.bytes as f64 * 100.0 / w.bytes as f64 } else { 0.0 };
        writeln!(out, "  {:<14} {:>12} {:>11} {:>5.1}%", t.kind_name(), count(t.count), bytes(t.bytes), share)?;
    }
    let lens: Vec<String> = r
        .strings_by_length
        .iter()
        .map(|l| format!("{}-{}: {} ({})", l.min_len, l.max_len, count(l.count), bytes(l.bytes)))
        .collect();
    writeln!(out, "  strings by length: {}", lens.join(" | "))?;
    writeln!(out)?;
    writeln!(out, "  biggest holders (retained: what a breadth-first walk from the roots reaches through them first)")?;
    writeln!(out, "  {:>11} {:>11} {:>10}  {:<12} path", "retained", "self", "objects", "type")?;
    for b in &r.biggest {
        let defined = b.defined.as_deref().map(|d| format!(" (function at {d})")).unwrap_or_default();
        writeln!(
            out,
            "  {:>11} {:>11} {:>10}  {:<12} {}{defined}",
            bytes(b.retained_bytes),
            bytes(b.self_bytes),
            count(b.objects),
            b.kind_name(),
            b.path
        )?;
    }
    let roots: Vec<String> = r.roots.iter().map(|x| format!("{} {}", x.name, bytes(x.retained_bytes))).collect();
    writeln!(out, "  roots: {}", roots.join(", "))?;
    Ok(())
}

#[derive(Serialize)]
struct Summary<'a> {
    tool: &'static str,
    processes: &'a [HeapReport],
    svg: String,
}

pub fn write(args: &Args, reports: &[HeapReport]) -> Result<()> {
    let to_stderr = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let mut text = Vec::new();
    for r in reports {
        print(r, &mut text)?;
        text.push(b'\n');
    }
    let mut folded = Folded::default();
    let several = reports.len() > 1;
    for r in reports {
        for (path, b, _) in &r.folded {
            let mut frames: Vec<Frame> = Vec::with_capacity(path.len() + 1);
            if several {
                frames.push(Frame::Vm(format!("worker {}", r.pid)));
            }
            let last = path.len().saturating_sub(1);
            frames.extend(
                path.iter().enumerate().map(|(i, p)| if i == last || i == 0 { Frame::Vm(p.clone()) } else { Frame::Native(p.clone()) }),
            );
            folded.add(&frames, *b);
        }
    }
    let svg_path = svg_path(args);
    let pids: Vec<String> = reports.iter().map(|r| r.pid.to_string()).collect();
    let opts = svg::SvgOptions {
        title: format!("ljprobe heap: PID {}, Lua heap by reference path", pids.join(", ")),
        subtitle: "width: bytes of the objects each path reaches first, nearest root at the bottom".into(),
        count_name: "bytes".into(),
    };
    let mut svg_bytes = Vec::new();
    svg::render_with_legend(&folded, &opts, Some("orange: a step of the path, grey: a root or the objects' type"), &mut svg_bytes)?;
    crate::output::write(&svg_path, &svg_bytes)?;
    writeln!(text, "  flame graph of the heap by path: {}", svg_path.display())?;
    if let Some(p) = &args.folded {
        let mut f = Vec::new();
        folded.write(&mut f)?;
        crate::output::write(p, &f)?;
        writeln!(text, "  folded paths (for ljprobe diff): {}", p.display())?;
    }
    if let Some(p) = &args.json {
        let summary = Summary { tool: "heap", processes: reports, svg: svg_path.display().to_string() };
        if crate::report::write_json(p, &summary)? {
            writeln!(text, "  summary: {}", p.display())?;
        }
    }
    if to_stderr {
        std::io::stderr().write_all(&text)?;
    } else {
        std::io::stdout().write_all(&text)?;
    }
    Ok(())
}

impl super::analysis::TypeRow {
    fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

impl super::analysis::Holder {
    fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
    }
}
