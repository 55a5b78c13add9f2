//! Attaching loaded programs: sampling and uprobes, the two ways tools look at Lua.

use std::path::Path;

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

/// One software `cpu-clock` event per online CPU at `hz`: the only sampling clock
/// on machines without a hardware PMU; the program filters to the target itself so
/// that threads the target starts later are sampled too.
pub fn cpu_clock(ebpf: &mut Ebpf, program: &str, hz: u64) -> Result<()> {
    let prog: &mut PerfEvent = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from its object"))?
        .try_into()?;
    prog.load().map_err(|e| program_error(&format!("loading {program}"), e))?;
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
    Ok(())
}

/// Loads a uprobe program once and attaches it to each `function` of `object` in
/// process `pid`; returns how many attached (a function may be absent in a build).
pub fn uprobes(ebpf: &mut Ebpf, program: &str, object: &Path, functions: &[&str], pid: u32) -> Result<usize> {
    let prog: &mut UProbe = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from its object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| program_error(&format!("loading {program}"), e))?;
    }
    let mut attached = 0;
    for f in functions {
        match prog.attach(Some(f), 0, object, Some(pid as i32)) {
            Ok(_) => attached += 1,
            Err(e) => log::debug!("uprobe {f} in {} (pid {pid}): {e}", object.display()),
        }
    }
    Ok(attached)
}
