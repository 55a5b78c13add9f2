//! `ljprobe leak`: what the run allocated that is still live at its end, by
//! the Lua stack that allocated it and the holder that keeps it, and which
//! reference paths of the heap grew. The kernel side is `alloc`'s allocator
//! probe (`probes-ebpf/src/alloc.rs`) with its `addresses` switch on: a
//! uretprobe sends each new block's address. Two heap snapshots (`ljprobe
//! heap`'s) bracket the run: both tell which paths grew over the run; the
//! end one, taken while the probe records, tells which addresses recorded in
//! the run's last seconds (`--record`) still hold live objects. Recording
//! runs without a gap up to the end snapshot: with gaps, an address freed and
//! given out again unseen would charge a leak to an earlier owner of that
//! address. `live.rs` pairs, `report.rs` writes.

mod live;
mod report;

use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use ljprobe_common::{AllocAddr, AllocRecord};

use self::live::End;
use super::{
    alloc::{
        probe::AllocProbe,
        sampler::{Programs, Sampler},
        tally::Tally,
    },
    heap::{analysis, snapshot},
    run_args::StackArgs,
};
use crate::{
    bpf,
    collect::{self, Source},
    lua::heap::Vm,
    report::Outputs,
    target::{aim::Aim, known_builds::BuildLayout, Process},
};

#[derive(clap::Args)]
pub struct Args {
    /// An nginx master (all its workers), a worker, or any LuaJIT process.
    #[arg(long)]
    pub pid: u32,
    /// How long to watch; Ctrl-C stops early and still writes everything.
    #[arg(long, default_value = "60s", value_parser = ljprobe_host::duration::parse)]
    pub duration: Duration,
    #[command(flatten)]
    stacks: StackArgs,
    /// For how long, at the end of the run, every allocation's address is
    /// recorded (each one traps into the kernel twice, which slows an
    /// allocation-heavy target several times over meanwhile).
    #[arg(long, default_value = "2s", value_parser = ljprobe_host::duration::parse, conflicts_with = "all")]
    record: Duration,
    /// Record every allocation's address for the whole run.
    #[arg(long)]
    all: bool,
    /// Paths that grew, and allocating functions, listed.
    #[arg(long, default_value_t = 10)]
    top: usize,
    #[command(flatten)]
    outputs: Outputs,
}

/// Addresses kept at most: 40 bytes each.
const MAX_EVENTS: usize = 8 << 20;

pub async fn run(args: Args) -> Result<ExitCode> {
    let default_svg = format!("ljprobe-leak-{}.svg", args.pid);
    args.outputs.check(&default_svg)?;
    let aim = Aim::open(args.pid, true, "", "")?;
    aim.needs_gc64("leak")?;
    let probe = AllocProbe::load(&aim, &args.stacks, true)?;
    let probed = probe.probed();
    let AllocProbe { mut ebpf, allocators, resize: _, maps, programs, builder, native } = probe;
    // The heap as the run finds it.
    let mut starts = HashMap::new();
    for (p, a) in aim.processes.iter().zip(&allocators) {
        starts.insert(p.pid, snapshot_of(p, a.g, aim.build)?);
    }
    let run_started = std::time::Instant::now();
    // Until the recording: nothing attached, nothing paid.
    let record = if args.all { args.duration } else { args.record.min(args.duration) };
    let wait = args.duration.saturating_sub(record);
    let mut notes = Vec::new();
    let mut record = record;
    if !wait.is_zero() {
        let pids: Vec<String> = aim.pids.iter().map(u32::to_string).collect();
        eprintln!(
            "ljprobe: tracing PID {}: the heap now, every allocation from {:.1}s on for the last {:.1}s, Ctrl-C to stop early",
            pids.join(", "),
            wait.as_secs_f64(),
            record.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => {
                // Stopped before the recording: the end snapshot at once.
                record = Duration::from_millis(1);
                notes.push("stopped with Ctrl-C before the recording began: the paths' growth is all there is".to_string());
            }
        }
    }
    // Every call from here to the end snapshot: an address freed and given
    // out again is seen given out again, so the block there at the end is
    // charged to the stack that made it, never to an earlier owner.
    // The collector's accounting is alloc's business: nothing hooks the
    // atomic phase here.
    let programs = Programs { cycles: None, ..programs };
    let sampler = Sampler::start(probed, programs, maps, None)?;
    let mut ring: RingBuf<MapData> = RingBuf::try_from(ebpf.take_map("RECORDS").context("RECORDS map missing")?)?;
    let mut source = LeakSource { ring: &mut ring, tally: Tally::new(builder, native), events: Vec::new(), dropped: 0, sampler: &sampler, aim: &aim };
    let run = collect::Run { ebpf: &mut ebpf, aim: &aim, duration: record, what: "addresses" };
    let collected = collect::watch(run, Duration::from_millis(100), &mut source).await;
    // The heap as the run leaves it, taken while the probe still records.
    let mut snaps = Vec::new();
    for (p, a) in aim.processes.iter().zip(&allocators) {
        if !p.alive() {
            notes.push(format!("process {} exited during the run: nothing of it is live", p.pid));
            continue;
        }
        match snapshot::take(p, super::heap::default_pause(p.pid, a.g, &aim.build.gc)) {
            Ok(s) => snaps.push((p, a.g, s)),
            Err(e) => notes.push(format!("process {}: no end snapshot ({e:#})", p.pid)),
        }
    }
    let run_secs = run_started.elapsed().as_secs_f64();
    let _ = source.tick();
    let (mut tally, mut events, mut dropped) = (source.tally, source.events, source.dropped);
    let (sampling, _config, counts) = sampler.finish();
    // What arrived between the last drain and the probe's detaching.
    collect::drain(&mut ring, &mut |b: &[u8]| take_record(b, &mut tally, &mut events, &mut dropped));
    let collected = collected?;
    let lost = bpf::per_cpu_total(&counts, ljprobe_common::ALLOC_LOST);
    drop(ebpf);
    let mut ends = HashMap::new();
    for (p, g, s) in &snaps {
        let vm = Vm::new(&s.mem, aim.build, *g);
        let (report, walk) = analysis::analyse_walk(&vm, p.pid, p.comm.clone(), s.how.clone(), 20);
        ends.insert(p.pid, End::new(vm, walk, report));
    }
    let paired = live::pair(&events, &mut ends, &tally, sampling.scale);
    report::write(report::Run {
        args: &args,
        aim_root: &aim.root,
        default_svg,
        collected,
        sampling,
        paired,
        starts: &starts,
        ends: &ends,
        notes,
        lost: lost + dropped,
        run_secs,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One snapshot of `p`'s heap, analysed; the copy is let go.
fn snapshot_of(p: &Process, g: u64, build: &BuildLayout) -> Result<analysis::HeapReport> {
    let s = snapshot::take(p, super::heap::default_pause(p.pid, g, &build.gc))?;
    let vm = Vm::new(&s.mem, build, g);
    Ok(analysis::analyse(&vm, p.pid, p.comm.clone(), s.how.clone(), 0))
}

/// A record from the ring: an address (by its size) or a stack.
fn take_record(b: &[u8], tally: &mut Tally, events: &mut Vec<AllocAddr>, dropped: &mut u64) {
    if b.len() == std::mem::size_of::<AllocAddr>() && b.len() < std::mem::size_of::<AllocRecord>() {
        if events.len() < MAX_EVENTS {
            // SAFETY: the kernel wrote a whole AllocAddr; read_unaligned copes with the ring's alignment.
            events.push(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const AllocAddr) });
        } else {
            *dropped += 1;
        }
    } else {
        tally.record(b);
    }
}

struct LeakSource<'a> {
    ring: &'a mut RingBuf<MapData>,
    tally: Tally,
    events: Vec<AllocAddr>,
    dropped: u64,
    sampler: &'a Sampler,
    aim: &'a Aim,
}

impl Source for LeakSource<'_> {
    fn tick(&mut self) -> Result<u64> {
        let (tally, events, dropped) = (&mut self.tally, &mut self.events, &mut self.dropped);
        Ok(collect::drain(self.ring, &mut |b: &[u8]| take_record(b, tally, events, dropped)))
    }

    fn status(&self, records: u64) -> String {
        format!("records {records:<9}")
    }

    fn lost(&self) -> u64 {
        self.dropped
    }

    fn joined(&mut self, p: &Process, g: Option<u64>) -> Result<()> {
        super::alloc::probe::joined(self.sampler, &mut self.tally, p, g, self.aim)
    }
}

