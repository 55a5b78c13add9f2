//! Attaching loaded programs: sampling and uprobes, the two ways tools look at Lua.

use std::{path::Path, sync::Mutex};

use anyhow::{Context, Result};
use aya::{
    programs::{
        perf_event::{perf_sw_ids, PerfEventScope, PerfTypeId, SamplePolicy},
        PerfEvent, UProbe,
    },
    util::online_cpus,
    Ebpf,
};

use super::program_error;

/// Sampling programs attached per task, and their rates: a process that joins
/// the targets later (a new nginx worker) gets the same events (`follow`).
static PER_TASK: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Software `cpu-clock` events at `hz` (the only sampling clock on machines
/// without a hardware PMU) running `program`.
///
/// With `targets`, one event per thread of each target, inherited by the
/// threads it starts later, as `perf record -p` does: it fires only while a
/// target runs. One event per CPU instead (`targets` None, for checks of the
/// kernel) costs a busy target far more at high request rates, measured
/// here: +50% CPU a request at 999 Hz against +10% per task
/// (docs/bench.md#high-rate), with the same program, which ran for
/// microseconds a sample either way.
pub fn cpu_clock(ebpf: &mut Ebpf, program: &'static str, hz: u64, targets: Option<&[u32]>) -> Result<()> {
    let prog: &mut PerfEvent = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from its object"))?
        .try_into()?;
    prog.load().map_err(|e| program_error(&format!("loading {program}"), e))?;
    let Some(targets) = targets else {
        let cpus = online_cpus().map_err(|(what, e)| anyhow::anyhow!("cannot list online CPUs ({what}): {e}"))?;
        for cpu in cpus {
            prog.attach(
                PerfTypeId::Software,
                perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK as u64,
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )
            .map_err(|e| program_error(&format!("opening a cpu-clock event on CPU {cpu}"), e))?;
        }
        return Ok(());
    };
    for &pid in targets {
        per_task(prog, program, hz, pid)?;
    }
    PER_TASK.lock().unwrap_or_else(|e| e.into_inner()).push((program, hz));
    Ok(())
}

/// The per-task sampling events of `cpu_clock`, for a process that became a
/// target during the run; nothing if the tool samples per CPU.
pub fn sample_joined(ebpf: &mut Ebpf, pid: u32) -> Result<()> {
    let programs = PER_TASK.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (program, hz) in programs {
        // Several tools may run in one process (`report`): only this one's program.
        let Some(prog) = ebpf.program_mut(program) else { continue };
        let prog: &mut PerfEvent = prog.try_into()?;
        per_task(prog, program, hz, pid)?;
    }
    Ok(())
}

fn per_task(prog: &mut PerfEvent, program: &str, hz: u64, pid: u32) -> Result<()> {
    let threads = ljprobe_host::proc::threads(pid);
    // A thread may exit between listing and opening; the process must not.
    let mut opened = 0;
    let mut last = None;
    for tid in threads {
        let scope = PerfEventScope::OneProcessAnyCpu { pid: tid };
        match prog.attach(PerfTypeId::Software, perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK as u64, scope, SamplePolicy::Frequency(hz), true) {
            Ok(_) => opened += 1,
            Err(e) => last = Some(e),
        }
    }
    match (opened, last) {
        (0, Some(e)) => Err(program_error(&format!("opening a cpu-clock event for {program} on process {pid}"), e)),
        (0, None) => anyhow::bail!("process {pid} has no threads left to sample"),
        _ => Ok(()),
    }
}

/// Loads a uprobe program once and attaches it to each `function` of `object` in
/// process `pid`; returns how many attached (a function may be absent in a build).
pub fn uprobes(ebpf: &mut Ebpf, program: &str, object: &Path, functions: &[&str], pid: u32) -> Result<usize> {
    let places: Vec<(&str, Option<u64>)> = functions.iter().map(|&f| (f, None)).collect();
    uprobes_at(ebpf, program, object, &places, pid)
}

/// `uprobes` on places given as (function, file offset): at the offset when
/// there is one (a function's cheapest probe point, `uprobe_entry`), else at
/// the function aya finds by name.
fn uprobes_at(ebpf: &mut Ebpf, program: &str, object: &Path, places: &[(&str, Option<u64>)], pid: u32) -> Result<usize> {
    let prog: &mut UProbe = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from its object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| program_error(&format!("loading {program}"), e))?;
    }
    let mut attached = 0;
    for &(f, offset) in places {
        let at = match offset {
            Some(off) => prog.attach(None, off, object, Some(pid as i32)),
            None => prog.attach(Some(f), 0, object, Some(pid as i32)),
        };
        match at {
            Ok(_) => attached += 1,
            Err(e) => log::debug!("uprobe {f} in {} (pid {pid}): {e}", object.display()),
        }
    }
    Ok(attached)
}

/// Uprobes attached per target process, for a process that joins later.
type Followed = (String, std::path::PathBuf, Vec<(String, Option<u64>)>);
static PER_PROCESS: Mutex<Vec<Followed>> = Mutex::new(Vec::new());

/// `uprobes_at` on each target, and on each process that joins the run
/// (`joined`). Fails if a place attaches to none of them: the tool's
/// picture would silently miss what it stands for.
pub fn uprobes_followed(
    ebpf: &mut Ebpf,
    program: &str,
    object: &Path,
    places: &[(&str, Option<u64>)],
    pids: &[u32],
) -> Result<()> {
    for &place in places {
        let attached: usize =
            pids.iter().map(|&pid| uprobes_at(ebpf, program, object, &[place], pid)).sum::<Result<usize>>()?;
        if attached == 0 {
            anyhow::bail!("cannot put a uprobe on {} in {} (run with -vv for the kernel's reason)", place.0, object.display());
        }
    }
    let places = places.iter().map(|&(f, off)| (f.to_string(), off)).collect();
    PER_PROCESS.lock().unwrap_or_else(|e| e.into_inner()).push((program.to_string(), object.to_path_buf(), places));
    Ok(())
}

/// The per-process uprobes of `uprobes_followed`, on a process that became a
/// target during the run.
pub fn uprobes_joined(ebpf: &mut Ebpf, pid: u32) -> Result<()> {
    let followed = PER_PROCESS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (program, object, places) in followed {
        // Several tools may run in one process (`report`): only this one's program.
        if ebpf.program(&program).is_none() {
            continue;
        }
        let places: Vec<(&str, Option<u64>)> = places.iter().map(|(f, off)| (f.as_str(), *off)).collect();
        uprobes_at(ebpf, &program, &object, &places, pid)?;
    }
    Ok(())
}
