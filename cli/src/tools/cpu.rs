//! `ljprobe cpu`: on-CPU flame graphs of a live LuaJIT process (the `sample-bt` +
//! `lj-lua-stacks` job). Kernel side: `probes-ebpf/src/cpu.rs`.

use std::{process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray};
use ljprobe_common::VmLayout;

use crate::{
    bpf::{self, attach, objects},
    collect::{self, Collected},
    report::{self, Outputs},
    stacks::StackBuilder,
    target::Target,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// Lua functions (and VM states), as `lj-lua-stacks` showed them.
    Lua,
}

#[derive(clap::Args)]
pub struct Args {
    /// An nginx master (all its workers are sampled, merged), a worker, or any LuaJIT process.
    #[arg(long)]
    pid: u32,
    /// How long to sample; Ctrl-C stops early and still writes everything.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    duration: Duration,
    /// Samples per second per CPU.
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    freq: u64,
    #[arg(long, value_enum, default_value = "lua")]
    stack: StackKind,
    #[command(flatten)]
    outputs: Outputs,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let target = Target::open(args.pid)?;
    let lua = target.lua_processes();
    if lua.is_empty() {
        let root = &target.processes[0].process;
        bail!(
            "process {} ({}) has no LuaJIT mapped, so it has no Lua stacks to sample: check the PID",
            root.pid,
            root.comm
        );
    }
    let layout: VmLayout = lua[0].luajit.as_ref().map(|l| l.layout.offsets).context("no LuaJIT")?;
    let processes: Vec<_> = lua.iter().map(|p| p.process.clone()).collect();

    let mut ebpf = bpf::load(objects::CPU, "cpu")?;
    Array::try_from(ebpf.map_mut("LAYOUT").context("LAYOUT map missing")?)?.set(0, layout, 0)?;
    {
        let mut targets: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(ebpf.map_mut("TARGETS").context("TARGETS map missing")?)?;
        for p in &processes {
            targets.insert(p.pid, 1, 0)?;
        }
    }
    attach::cpu_clock(&mut ebpf, "cpu_sample", args.freq)?;

    let mut builder = StackBuilder::new(&processes)?;
    let ring = aya::maps::RingBuf::try_from(ebpf.take_map("SAMPLES").context("SAMPLES map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let lost = move || lost_map.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
    let collected: Collected = collect::run(ring, &processes, args.duration, lost, |bytes| builder.add(bytes)).await?;
    drop(ebpf);

    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let title = format!("ljprobe cpu: PID {} ({}), {}-level", args.pid, target.processes[0].process.comm, "Lua");
    report::write(&args.outputs, &report::Profile {
        tool: "cpu",
        title,
        pids,
        frequency: Some(args.freq),
        unit: "samples",
        folded: builder.folded,
        by_vm_state: builder.by_vm_state,
        collected,
        default_svg: format!("ljprobe-cpu-{}.svg", args.pid),
    })?;
    Ok(ExitCode::SUCCESS)
}
