//! `ljprobe cpu`: on-CPU flame graphs of a live LuaJIT process (the `sample-bt` +
//! `lj-lua-stacks` job). Kernel side: `probes-ebpf/src/cpu.rs`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use aya::maps::{Array, PerCpuArray};
use ljprobe_common::CpuConfig;

use super::run_args::{RunArgs, StackArgs};
use crate::{
    bpf::{self, attach, objects},
    collect::{self, Collected},
    report::{self, Outputs},
    stacks::StackBuilder,
    target::Process,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Samples per second per CPU.
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    freq: u64,
    #[command(flatten)]
    stacks: StackArgs,
    #[command(flatten)]
    outputs: Outputs,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let default_svg = format!("ljprobe-cpu-{}.svg", args.run.pid);
    args.outputs.check(&default_svg)?;
    let aim = args.stacks.aim(args.run.pid)?;
    let mut ebpf = bpf::load(objects::CPU, "cpu")?;
    bpf::aim_seeded(&mut ebpf, &aim)?;
    let config = CpuConfig { native: u32::from(args.stacks.native()), kernel: u32::from(args.stacks.kernel) };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    // Symbols and unwind tables are read before attaching: the samples counted
    // start with the run.
    let mut builder = StackBuilder::new(args.stacks.stack, args.stacks.kernel, args.stacks.per_worker, &aim)?
        .with_lines(args.stacks.lines);
    attach::cpu_clock(&mut ebpf, "cpu_sample", args.freq, Some(&aim.pids))?;
    let mut ring = aya::maps::RingBuf::try_from(ebpf.take_map("SAMPLES").context("SAMPLES map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let lost = move || bpf::per_cpu_total(&lost_map, 0);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "samples" };
    let collected: Collected = collect::run(run, &mut ring, lost, &mut builder).await?;
    drop(ebpf);

    let inlined = builder.inlined_summary();
    let title = format!("ljprobe cpu: PID {} ({}), {}", args.run.pid, aim.root.comm, args.stacks.stack.title());
    report::write(&args.outputs, &report::Profile {
        tool: "cpu",
        title,
        pids: collected.pids_seen.clone(),
        frequency: Some(args.freq),
        unit: "samples",
        folded: builder.folded,
        by_vm_state: builder.by_vm_state,
        collected,
        default_svg,
        extra: [("inlined".to_string(), inlined)].into_iter().collect(),
        notes: vec![],
        pprof: report::PprofKind::Cpu { freq: args.freq },
    })?;
    Ok(ExitCode::SUCCESS)
}

impl collect::Sink for StackBuilder {
    fn record(&mut self, bytes: &[u8]) {
        self.add(bytes);
    }

    fn joined(&mut self, p: &Process) -> Result<()> {
        self.add_process(p)
    }
}
