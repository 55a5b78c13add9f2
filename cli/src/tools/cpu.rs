//! `ljprobe cpu`: on-CPU flame graphs of a live LuaJIT process (the `sample-bt` +
//! `lj-lua-stacks` job). Kernel side: `probes-ebpf/src/cpu.rs`.

use std::{process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, PerCpuArray};
use ljprobe_common::{CpuConfig, VmLayout};

use crate::{
    bpf::{self, attach, objects},
    collect::{self, Collected},
    report::{self, Outputs},
    stacks::StackBuilder,
    target::{layout::OPENRESTY_21_GC64_X86_64, Target},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// Lua functions (and VM states), as `lj-lua-stacks` showed them.
    Lua,
    /// Native frames (nginx, LuaJIT, libc), unwound with CFI, as `sample-bt` showed them.
    C,
    /// Native frames with the Lua frames spliced in where C entered the VM.
    Mixed,
}

impl StackKind {
    fn title(self) -> &'static str {
        match self {
            StackKind::Lua => "Lua-level",
            StackKind::C => "C-level",
            StackKind::Mixed => "mixed Lua and C",
        }
    }
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
    /// Add kernel frames on top of each stack.
    #[arg(long)]
    kernel: bool,
    /// With an nginx master: one tower per worker instead of merging them.
    #[arg(long)]
    per_worker: bool,
    #[command(flatten)]
    outputs: Outputs,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let target = Target::open(args.pid)?;
    let lua = target.lua_processes();
    let root = &target.processes[0].process;
    let (processes, layout, luajit_path): (Vec<_>, VmLayout, Option<String>) = match lua.first() {
        Some(first) => {
            let lj = first.luajit.as_ref().context("no LuaJIT")?;
            (lua.iter().map(|p| p.process.clone()).collect(), lj.layout.offsets, Some(lj.path.clone()))
        }
        None if args.stack == StackKind::Lua => bail!(
            "process {} ({}) has no LuaJIT mapped, so it has no Lua stacks to sample: check the PID, or use --stack c",
            root.pid,
            root.comm
        ),
        None => {
            eprintln!("ljprobe: note: process {} ({}) has no Lua VM; the graph shows C only", root.pid, root.comm);
            (target.processes.iter().map(|p| p.process.clone()).collect(), OPENRESTY_21_GC64_X86_64, None)
        }
    };

    let mut ebpf = bpf::load(objects::CPU, "cpu")?;
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    bpf::aim(&mut ebpf, &pids, layout)?;
    let config = CpuConfig { native: u32::from(args.stack != StackKind::Lua), kernel: u32::from(args.kernel) };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    attach::cpu_clock(&mut ebpf, "cpu_sample", args.freq)?;

    let mut builder = StackBuilder::new(args.stack, args.kernel, args.per_worker, &processes, luajit_path.as_deref())?;
    let ring = aya::maps::RingBuf::try_from(ebpf.take_map("SAMPLES").context("SAMPLES map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let lost = move || lost_map.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
    let collected: Collected = collect::run(ring, &processes, args.duration, lost, |bytes| builder.add(bytes)).await?;
    drop(ebpf);

    let title = format!("ljprobe cpu: PID {} ({}), {}", args.pid, root.comm, args.stack.title());
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
