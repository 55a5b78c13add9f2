//! `ljprobe heap`: every object of a live Lua heap, counted by type, and the
//! biggest holders named by their path from a root. `snapshot.rs` stops the
//! target for the length of a memory copy (no kernel program: reading memory
//! is all it takes), `crate::lua::heap` walks the copy, `analysis.rs` and
//! `report.rs` turn it into figures.

pub(crate) mod analysis;
mod report;
pub(crate) mod snapshot;

pub(crate) use report::bytes as report_bytes;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Result};

use crate::{
    lua::{heap::Vm, GcLayout, ProcMem},
    target::aim::Aim,
};

#[derive(clap::Args)]
pub struct Args {
    /// An nginx master (one report per worker), a worker, or any LuaJIT process.
    #[arg(long)]
    pub pid: u32,
    /// How many of the biggest holders to list.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Longest the target is stopped while its memory is copied; what is left
    /// is copied with the target running, and the report says so
    /// [default: 50ms per 100 MB of Lua heap, at least 50ms].
    #[arg(long, value_parser = ljprobe_host::duration::parse)]
    pub max_pause: Option<Duration>,
    /// Flame graph of the heap by path [default: ljprobe-heap-<pid>.svg in the current directory].
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// The same as folded stacks (bytes), for `ljprobe diff` between two snapshots.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Summary a script can read ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    report::check(&args)?;
    crate::system::may_stop(args.pid)?;
    let aim = Aim::open(args.pid, true, "", "")?;
    aim.needs_gc64("heap")?;
    let mut reports = Vec::new();
    for p in &aim.processes {
        crate::target::traceable(p)?;
        let Some(g) = aim.global_state(p) else {
            eprintln!("ljprobe: note: process {} ({}): its Lua VM was not found in its memory; no snapshot of it", p.pid, p.comm);
            continue;
        };
        let snap = snapshot::take(p, args.max_pause.unwrap_or_else(|| default_pause(p.pid, g, &aim.build.gc)))?;
        let vm = Vm::new(&snap.mem, aim.build, g);
        reports.push(analysis::analyse(&vm, p.pid, p.comm.clone(), snap.how.clone(), args.top));
    }
    if reports.is_empty() {
        bail!(
            "found no Lua VM in the memory of process {} ({}), so there is no heap to walk: is its Lua state created yet?",
            aim.root.pid,
            aim.root.comm
        );
    }
    report::write(&args, &reports)?;
    Ok(ExitCode::SUCCESS)
}

/// The pause the issue allows for the VM at `g` in `pid`: 50 ms per 100 MB of
/// its heap as `gc.total` says now (a copy runs at 2-4 GB/s here,
/// docs/bench.md#heap), never under 50 ms.
pub(crate) fn default_pause(pid: u32, g: u64, gc: &GcLayout) -> Duration {
    let heap = ProcMem::open(pid).ok().and_then(|m| gc.read(&m, g)).map_or(0, |r| r.total);
    Duration::from_millis(50).max(Duration::from_secs_f64(0.05 * heap as f64 / 100e6))
}
