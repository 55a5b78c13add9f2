//! Running a tool until the duration ends, Ctrl-C, or every target process has
//! exited: draining a kernel ring buffer (`run`), or ticking a tool that reads
//! what it needs itself (`watch`, e.g. `gc`). Whatever arrived is kept. The
//! target set is followed meanwhile: new nginx workers join the run, processes
//! that exit or exec leave it.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use serde::Serialize;

use ljprobe_host::steal::Steal;

use crate::{
    bpf,
    target::{
        aim::Aim,
        follow::{Change, Event, Follow},
        Process,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    Duration,
    Interrupted,
    TargetExited,
    /// Every target replaced its program (exec) or exited, at least one by exec.
    TargetExec,
}

#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub elapsed_secs: f64,
    pub records: u64,
    pub lost: u64,
    pub stopped_by: StopReason,
    /// Percent of the machine's CPU time the hypervisor took meanwhile.
    pub steal_pct: Option<f64>,
    /// Every process looked at during the run, including workers that joined.
    pub pids_seen: Vec<u32>,
    /// Workers that joined, processes that exited or exec'd, in order.
    pub events: Vec<Event>,
}

/// What a tool does with what the kernel sends, and with a process that joins.
pub trait Sink {
    fn record(&mut self, bytes: &[u8]);
    /// A new nginx worker: read its symbols and VM like the first ones'.
    fn joined(&mut self, p: &Process) -> Result<()>;
}

/// What a run takes in at each tick: a ring buffer's records (`run`), or
/// readings a tool makes itself (`watch`).
pub trait Source {
    /// Takes in what arrived since the last tick; returns how many records.
    fn tick(&mut self) -> Result<u64>;
    /// The live line after the elapsed time, given the records so far.
    fn status(&self, records: u64) -> String;
    /// Records the kernel could not deliver, so far.
    fn lost(&self) -> u64;
    /// A new nginx worker, with its `global_State` if the scan found it.
    fn joined(&mut self, p: &Process, g: Option<u64>) -> Result<()>;
    /// A target exited or exec'd.
    fn left(&mut self, _pid: u32) {}
}

/// The loaded tool and what it is aimed at; the run adds and removes targets.
pub struct Run<'a> {
    pub ebpf: &'a mut Ebpf,
    pub aim: &'a Aim,
    pub duration: Duration,
    /// Names the records on a ring-buffer tool's progress line ("samples", "stacks").
    pub what: &'static str,
}

/// The ring-buffer tools' tick: kernel programs submit without waking us, and
/// their ring buffers hold seconds of samples.
const RING_TICK: Duration = Duration::from_millis(100);
/// How often exits are looked for (so a run ends promptly), the live line is
/// redrawn, and the target set is compared with /proc (listing /proc costs
/// more; a new worker is looked at within half a second of starting).
const EXIT_EVERY: Duration = Duration::from_millis(100);
const STATUS_EVERY: Duration = Duration::from_millis(400);
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

struct Ring<'r, L, S> {
    ring: &'r mut RingBuf<MapData>,
    lost: L,
    sink: &'r mut S,
    what: &'static str,
}

impl<L: Fn() -> u64, S: Sink> Source for Ring<'_, L, S> {
    fn tick(&mut self) -> Result<u64> {
        Ok(drain(self.ring, &mut |b: &[u8]| self.sink.record(b)))
    }

    fn status(&self, records: u64) -> String {
        format!("{} {records:<9} lost {:<6}", self.what, (self.lost)())
    }

    fn lost(&self) -> u64 {
        (self.lost)()
    }

    fn joined(&mut self, p: &Process, _g: Option<u64>) -> Result<()> {
        self.sink.joined(p)
    }
}

pub async fn run(
    run: Run<'_>,
    ring: &mut RingBuf<MapData>,
    lost: impl Fn() -> u64,
    sink: &mut impl Sink,
) -> Result<Collected> {
    let what = run.what;
    watch(run, RING_TICK, &mut Ring { ring, lost, sink, what }).await
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// No live line: several runs share the terminal (`report`).
pub fn quiet_live_line() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Ticks `source` every `period` until the duration ends, Ctrl-C, or every
/// target process has exited, following the target set meanwhile.
pub async fn watch(run: Run<'_>, period: Duration, source: &mut impl Source) -> Result<Collected> {
    let Run { ebpf, aim, duration, what: _ } = run;
    let start = Instant::now();
    let mut follow = Follow::new(&aim.root, &aim.processes, aim.luajit_path());
    let steal = Steal::start();
    // Said once everything is attached: from here on, what happens is seen.
    let pids: Vec<String> = aim.processes.iter().map(|p| p.pid.to_string()).collect();
    eprintln!(
        "ljprobe: tracing PID {} for {:.1}s, Ctrl-C to stop early",
        pids.join(", "),
        duration.as_secs_f64()
    );
    let deadline = tokio::time::Instant::from_std(start + duration);
    let live = std::io::stderr().is_terminal() && !QUIET.load(std::sync::atomic::Ordering::Relaxed);
    let every = |d: Duration| (d.as_nanos() / period.as_nanos().max(1)).max(1) as u64;
    let (exit_every, status_every, follow_every) = (every(EXIT_EVERY), every(STATUS_EVERY), every(FOLLOW_EVERY));
    let mut tick = tokio::time::interval(period);
    let mut ticks = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut records = 0u64;
    let stopped_by = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break StopReason::Duration,
            _ = &mut ctrl_c => break StopReason::Interrupted,
            _ = tick.tick() => {
                records += source.tick()?;
                ticks += 1;
                if live && ticks.is_multiple_of(status_every) {
                    eprint!("\r  {:>6.1}s  {}", start.elapsed().as_secs_f64(), source.status(records));
                    let _ = std::io::stderr().flush();
                }
                if !ticks.is_multiple_of(exit_every) {
                    continue;
                }
                if ticks.is_multiple_of(follow_every) || follow.live().iter().any(|p| !p.alive()) {
                    if live {
                        eprint!("\r");
                    }
                    for change in follow.poll() {
                        match change {
                            Change::Joined(p) => {
                                let g = bpf::follow(ebpf, &p, aim)?;
                                source.joined(&p, g)?;
                            }
                            Change::Left(pid) => {
                                bpf::forget(ebpf, pid);
                                source.left(pid);
                            }
                        }
                    }
                }
                if follow.all_gone() {
                    break if follow.any_exec() { StopReason::TargetExec } else { StopReason::TargetExited };
                }
            }
        }
    };
    records += source.tick()?;
    if live {
        eprintln!();
    }
    match stopped_by {
        StopReason::Interrupted => eprintln!("ljprobe: interrupted; writing what was collected"),
        StopReason::TargetExited | StopReason::TargetExec => eprintln!(
            "ljprobe: no target is left after {:.1}s ({}); writing what was collected",
            start.elapsed().as_secs_f64(),
            if stopped_by == StopReason::TargetExec { "replaced its program" } else { "exited" }
        ),
        StopReason::Duration => {}
    }
    Ok(Collected {
        elapsed_secs: start.elapsed().as_secs_f64(),
        records,
        lost: source.lost(),
        stopped_by,
        steal_pct: steal.pct(),
        pids_seen: follow.seen().to_vec(),
        events: follow.events,
    })
}

/// Hands every record waiting in the ring buffer to `on_record`; returns how many.
pub fn drain(ring: &mut RingBuf<MapData>, on_record: &mut impl FnMut(&[u8])) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        on_record(&item);
        n += 1;
    }
    n
}
