//! Loading ljprobe's embedded kernel programs and attaching them to a target.
//! Shared by every tool: one kernel program per tool, one way to load it.

pub mod attach;
pub mod objects;
pub mod tracepoint;
pub mod perf_link;
pub mod uprobe_entry;
pub mod gc_cycles;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf, EbpfError, EbpfLoader,
};
use ljprobe_common::VmLayout;

use crate::target::{aim::Aim, Process};

/// Loads one tool's object and forwards its aya-log messages to our logger (`-v`).
pub fn load(object: &[u8], tool: &str) -> Result<Ebpf> {
    load_sized(object, tool, &[])
}

/// `load`, with some maps given another number of entries (a map a mode does
/// not use shrunk to one, so its memory is not reserved).
pub fn load_sized(object: &[u8], tool: &str, entries: &[(&str, u32)]) -> Result<Ebpf> {
    crate::system::require_privileges()?;
    let mut loader = EbpfLoader::new();
    for &(map, n) in entries {
        loader.set_max_entries(map, n);
    }
    let mut ebpf = loader.load(object).map_err(|e| explain(e, tool))?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
        log::debug!("no kernel log forwarding for {tool}: {e}");
    }
    Ok(ebpf)
}

fn explain(e: EbpfError, tool: &str) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        return anyhow!("the kernel refused to load the {tool} program: {}", crate::system::NEED_PRIVILEGES);
    }
    anyhow!("the kernel refused to load the {tool} program ({text}); `ljprobe doctor` shows which kernel feature is missing")
}

/// Turns an aya program error into one sentence, keeping the verifier log for -vv.
pub fn program_error(what: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
        log::debug!("verifier log for {what}:\n{verifier_log}");
    }
    anyhow!("{what} failed: {e}")
}

/// Program `name` loaded (once, `what` naming it in the error), for links
/// opened by hand (`perf_link`): its descriptor, owned by `ebpf`. For the
/// kinds this project opens so, which load without arguments.
pub fn loaded_fd(ebpf: &mut Ebpf, name: &str, what: &str) -> Result<std::os::fd::RawFd> {
    use aya::programs::Program;
    use std::os::fd::{AsFd, AsRawFd};
    let prog = ebpf.program_mut(name).with_context(|| format!("program {name} missing from its object"))?;
    if prog.fd().is_err() {
        let loaded = match prog {
            Program::UProbe(p) => p.load(),
            Program::TracePoint(p) => p.load(),
            Program::PerfEvent(p) => p.load(),
            _ => anyhow::bail!("program {name} is not a uprobe, tracepoint or perf-event program"),
        };
        loaded.map_err(|e| program_error(what, e))?;
    }
    Ok(prog.fd()?.as_fd().as_raw_fd())
}

/// Every tool's program reads the same two maps: which processes to look at
/// (`TARGETS`) and where LuaJIT keeps what it reads (`LAYOUT`).
pub fn aim(ebpf: &mut Ebpf, pids: &[u32], layout: VmLayout) -> Result<()> {
    Array::try_from(ebpf.map_mut("LAYOUT").context("LAYOUT map missing")?)?.set(0, layout, 0)?;
    let mut targets: HashMap<_, u32, u8> = HashMap::try_from(ebpf.map_mut("TARGETS").context("TARGETS map missing")?)?;
    for &pid in pids {
        targets.insert(pid, 1, 0)?;
    }
    Ok(())
}

/// `aim` for a stack-recording tool, and tells its program's `VMS` cache each
/// target's `global_State`, found by a scan of its memory, so that stacks
/// taken where the dispatch register does not hold it (inside C, in a system
/// call) have a VM from the first event. A process whose VM is not found is
/// left to the kernel's own discovery. Returns each target's VM as seeded.
pub fn aim_seeded(ebpf: &mut Ebpf, aim: &Aim) -> Result<Vec<(u32, Option<u64>)>> {
    self::aim(ebpf, &aim.pids, aim.layout)?;
    aim.processes.iter().map(|p| Ok((p.pid, seed(ebpf, p, aim)?))).collect()
}

/// Adds a process that joined the run (a new nginx worker) to a loaded tool;
/// returns its VM as seeded.
pub fn follow(ebpf: &mut Ebpf, p: &Process, aim: &Aim) -> Result<Option<u64>> {
    let mut targets: HashMap<_, u32, u8> = HashMap::try_from(ebpf.map_mut("TARGETS").context("TARGETS map missing")?)?;
    targets.insert(p.pid, 1, 0)?;
    attach::sample_joined(ebpf, p.pid)?;
    attach::uprobes_joined(ebpf, p.pid)?;
    seed(ebpf, p, aim)
}

/// Stops looking at a process that exited or exec'd: a later process that
/// reuses its PID is not a target.
pub fn forget(ebpf: &mut Ebpf, pid: u32) {
    if let Some(Ok(mut targets)) = ebpf.map_mut("TARGETS").map(HashMap::<_, u32, u8>::try_from) {
        let _ = targets.remove(&pid);
    }
    if let Some(Ok(mut vms)) = ebpf.map_mut("VMS").map(HashMap::<_, u32, u64>::try_from) {
        let _ = vms.remove(&pid);
    }
}

/// The `global_State` put in the program's `VMS` map, if it has one and the
/// scan found it.
fn seed(ebpf: &mut Ebpf, p: &Process, aim: &Aim) -> Result<Option<u64>> {
    let Some(vms) = ebpf.map_mut("VMS") else { return Ok(None) };
    let mut vms: HashMap<_, u32, u64> = HashMap::try_from(vms)?;
    let g = aim.global_state(p);
    if let Some(g) = g {
        vms.insert(p.pid, g, 0)?;
    }
    Ok(g)
}

/// Slot `index` of a per-CPU counter array, summed over the CPUs (0 if unreadable).
pub fn per_cpu_total(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}
