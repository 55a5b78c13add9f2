//! `ljprobe offcpu`: off-CPU flame graphs, where target threads wait (the
//! `sample-bt-off-cpu` job). Kernel side: `probes-ebpf/src/offcpu.rs`.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use ljprobe_common::{
    BlockedTotal, CpuSample, OffcpuConfig, OffcpuHead, OffcpuSample, OffcpuSampleNative, OFFCPU_IDLE_COUNT,
    OFFCPU_IDLE_NS, OFFCPU_RUNNABLE, OFFCPU_SHORT_COUNT, OFFCPU_SHORT_NS,
};
use ljprobe_flamegraph::Frame;
use serde_json::json;

use super::run_args::{RunArgs, StackArgs};
use crate::{
    bpf::{self, objects, tracepoint},
    collect,
    report::{self, Outputs},
    stacks::{wait_frame, StackBuilder},
    target::Process,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Blocks shorter than this are counted in the summary but not drawn (0 keeps all).
    #[arg(long, default_value = "1ms", value_parser = ljprobe_host::duration::parse_or_zero)]
    min_block: Duration,
    /// Keep the idle wait of an event loop in epoll_wait (left out by default, so
    /// that real blocking stands out).
    #[arg(long)]
    include_idle: bool,
    #[command(flatten)]
    stacks: StackArgs,
    #[command(flatten)]
    outputs: Outputs,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let default_svg = format!("ljprobe-offcpu-{}.svg", args.run.pid);
    args.outputs.check(&default_svg)?;
    let aim = args.stacks.aim(args.run.pid)?;
    let sched = tracepoint::sched_switch_format()?;
    let native = args.stacks.native();
    let min_block_ns = args.min_block.as_nanos() as u64;

    let unused = if native { "PENDING" } else { "PENDING_NATIVE" };
    let mut ebpf = bpf::load_sized(objects::OFFCPU, "offcpu", &[(unused, 1)])?;
    bpf::aim_seeded(&mut ebpf, &aim)?;
    let config = OffcpuConfig {
        native: u32::from(native),
        kernel: u32::from(args.stacks.kernel),
        include_idle: u32::from(args.include_idle),
        _pad: 0,
        min_block_ns,
        sched,
    };
    Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map missing")?)?.set(0, config, 0)?;
    let mut ring = RingBuf::try_from(ebpf.take_map("SAMPLES").context("SAMPLES map missing")?)?;
    let lost_map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("LOST").context("LOST map missing")?)?;
    let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.take_map("COUNTS").context("COUNTS map missing")?)?;
    let blocked: PerCpuHashMap<_, u64, BlockedTotal> =
        PerCpuHashMap::try_from(ebpf.take_map("BLOCKED").context("BLOCKED map missing")?)?;
    let pending: BpfHashMap<_, u32, OffcpuSample> =
        BpfHashMap::try_from(ebpf.take_map("PENDING").context("PENDING map missing")?)?;
    let pending_native: BpfHashMap<_, u32, OffcpuSampleNative> =
        BpfHashMap::try_from(ebpf.take_map("PENDING_NATIVE").context("PENDING_NATIVE map missing")?)?;
    // Symbols and unwind tables are read before attaching: the time counted
    // starts with the run.
    let builder = StackBuilder::new(args.stacks.stack, args.stacks.kernel, args.stacks.per_worker, &aim)?
        .with_lines(args.stacks.lines);
    tracepoint::attach(&mut ebpf, "offcpu_switch", "sched", "sched_switch")?;
    let mut blocks = Blocks { builder, by_key: HashMap::new(), count: 0 };
    let lost = || bpf::per_cpu_total(&lost_map, 0);
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: args.run.duration, what: "stacks" };
    let mut collected = collect::run(run, &mut ring, lost, &mut blocks).await?;
    // Detach first, so that no stack is sent after the last drain.
    drop(ebpf);
    collected.records += collect::drain(&mut ring, &mut |bytes: &[u8]| blocks.record(bytes));
    let stack_lost = blocks.add_kernel_totals(&blocked);
    let still_blocked = blocks.add_still_blocked(&pending, &pending_native, min_block_ns, args.include_idle);
    collected.lost = lost() + stack_lost;

    let sum = |i: u32| bpf::per_cpu_total(&counts, i);
    let (short_ns, short_count, idle_ns, idle_count) =
        (sum(OFFCPU_SHORT_NS), sum(OFFCPU_SHORT_COUNT), sum(OFFCPU_IDLE_NS), sum(OFFCPU_IDLE_COUNT));
    let shown_us = blocks.builder.folded.total();
    let mut notes = vec![format!(
        "{:.1} ms blocked in {} blocks of at least {} shown",
        shown_us as f64 / 1000.0,
        blocks.count,
        human(args.min_block)
    )];
    if short_count > 0 {
        notes.push(format!("{:.1} ms in {short_count} shorter blocks not shown (--min-block)", short_ns as f64 / 1e6));
    }
    if idle_count > 0 {
        notes.push(format!(
            "{:.1} ms idle in epoll_wait ({idle_count} waits) not shown (--include-idle)",
            idle_ns as f64 / 1e6
        ));
    }
    if still_blocked > 0 {
        notes.push(format!("{still_blocked} threads were still blocked at the end: counted up to then"));
    }
    let extra = json!({
        "blocked_us": shown_us,
        "blocks": blocks.count,
        "min_block_us": args.min_block.as_micros() as u64,
        "short_blocks": { "count": short_count, "us": short_ns / 1000 },
        "idle": { "included": args.include_idle, "count": idle_count, "us": idle_ns / 1000 },
        "still_blocked_at_end": still_blocked,
        "inlined": blocks.builder.inlined_summary(),
    });

    let title = format!("ljprobe offcpu: PID {} ({}), {}, blocked time in microseconds", args.run.pid, aim.root.comm, args.stacks.stack.title());
    report::write(&args.outputs, &report::Profile {
        tool: "offcpu",
        title,
        pids: collected.pids_seen.clone(),
        frequency: None,
        unit: "us",
        folded: blocks.builder.folded,
        by_vm_state: blocks.builder.by_vm_state,
        collected,
        default_svg,
        extra: extra.as_object().cloned().unwrap_or_default(),
        notes,
        pprof: report::PprofKind::OffCpu,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn human(d: Duration) -> String {
    match d.as_micros() {
        us if us < 1000 => format!("{us}us"),
        us => format!("{}ms", us as f64 / 1000.0),
    }
}

struct Blocks {
    builder: StackBuilder,
    /// Lua stacks the kernel sums by key: the stack, and the sample it came from.
    by_key: HashMap<u64, (Vec<Frame>, CpuSample)>,
    count: u64,
}

impl collect::Sink for Blocks {
    fn record(&mut self, bytes: &[u8]) {
        Blocks::record(self, bytes);
    }

    fn joined(&mut self, p: &Process) -> Result<()> {
        self.builder.add_process(p)
    }
}

impl Blocks {
    fn record(&mut self, bytes: &[u8]) {
        if bytes.len() >= std::mem::size_of::<OffcpuSampleNative>() {
            // SAFETY: the kernel wrote a whole record of this type; read_unaligned
            // copes with the ring buffer's alignment.
            let r: OffcpuSampleNative = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
            self.add(&r.sample, Some(&r.native));
        } else if bytes.len() >= std::mem::size_of::<OffcpuSample>() {
            // SAFETY: as above.
            let r: OffcpuSample = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
            if r.head.key == 0 {
                self.add(&r, None);
            } else {
                // Named now, while the target's memory still holds its prototypes;
                // the time comes from the kernel's totals at the end.
                let stack = self.builder.build(&r.lua, None, Some(wait(&r.head)));
                self.by_key.insert(r.head.key, (stack, r.lua));
            }
        }
    }

    fn add(&mut self, s: &OffcpuSample, native: Option<&ljprobe_common::NativeStack>) {
        let stack = self.builder.build(&s.lua, native, Some(wait(&s.head)));
        self.builder.add_weighted(&s.lua, &stack, us(s.head.blocked_ns));
        self.count += 1;
    }

    /// Folds in the kernel's per-stack totals; returns how many had no stack
    /// (its record was lost).
    fn add_kernel_totals(&mut self, blocked: &PerCpuHashMap<MapData, u64, BlockedTotal>) -> u64 {
        let mut lost = 0;
        for item in blocked.iter() {
            let Ok((key, per_cpu)) = item else { continue };
            let (ns, count) = per_cpu.iter().fold((0, 0), |(n, c), t| (n + t.ns, c + t.count));
            self.count += count;
            match self.by_key.get(&key) {
                Some((stack, sample)) => self.builder.add_weighted(sample, stack, us(ns)),
                None => {
                    lost += 1;
                    self.builder.folded.add(&[Frame::Vm("[stack lost: ring buffer full]".into())], us(ns));
                }
            }
        }
        lost
    }

    /// Threads still off the CPU when tracing stopped: their time so far counts,
    /// if they still exist (a thread that exited will never come back).
    fn add_still_blocked(
        &mut self,
        pending: &BpfHashMap<MapData, u32, OffcpuSample>,
        pending_native: &BpfHashMap<MapData, u32, OffcpuSampleNative>,
        min_block_ns: u64,
        include_idle: bool,
    ) -> u64 {
        let now = crate::clock::monotonic_ns();
        let lua = pending.iter().filter_map(|i| i.ok()).map(|(tid, s)| (tid, s, None));
        let native = pending_native.iter().filter_map(|i| i.ok()).map(|(tid, r)| (tid, r.sample, Some(r.native)));
        let mut n = 0;
        for (tid, mut s, native) in lua.chain(native) {
            let alive = std::path::Path::new(&format!("/proc/{}/task/{tid}", s.lua.tgid)).exists();
            let blocked = now.saturating_sub(s.head.switched_out_ns);
            if !alive || blocked < min_block_ns || (!include_idle && is_idle(&s.head)) {
                continue;
            }
            s.head.blocked_ns = blocked;
            self.add(&s, native.as_ref());
            n += 1;
        }
        n
    }
}

fn wait(head: &OffcpuHead) -> Frame {
    wait_frame(head.syscall, head.flags & OFFCPU_RUNNABLE != 0)
}

fn is_idle(head: &OffcpuHead) -> bool {
    ljprobe_common::EPOLL_SYSCALLS.contains(&head.syscall)
}

fn us(ns: u64) -> u64 {
    (ns + 500) / 1000
}

