//! Draining a kernel ring buffer for a sampling run: until the duration ends,
//! Ctrl-C, or every target process has exited. Whatever arrived is kept. The
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

/// The loaded tool and what it is aimed at; the run adds and removes targets.
pub struct Run<'a> {
    pub ebpf: &'a mut Ebpf,
    pub aim: &'a Aim,
    pub duration: Duration,
    /// Names the records on the progress line ("samples", "stacks").
    pub what: &'static str,
}

/// How often the target set is compared with /proc, in ticks of 100 ms: a new
/// worker is looked at within half a second of starting.
const FOLLOW_TICKS: u64 = 5;

pub async fn run(
    run: Run<'_>,
    ring: &mut RingBuf<MapData>,
    lost: impl Fn() -> u64,
    sink: &mut impl Sink,
) -> Result<Collected> {
    let Run { ebpf, aim, duration, what } = run;
    let start = Instant::now();
    let mut follow = Follow::new(&aim.root, &aim.processes, aim.luajit_path.as_deref());
    let steal = Steal::start();
    // Said once everything is attached: from here on, what happens is seen.
    let pids: Vec<String> = aim.processes.iter().map(|p| p.pid.to_string()).collect();
    eprintln!(
        "ljprobe: tracing PID {} for {:.1}s, Ctrl-C to stop early",
        pids.join(", "),
        duration.as_secs_f64()
    );
    let deadline = tokio::time::Instant::from_std(start + duration);
    let live = std::io::stderr().is_terminal();
    // Kernel programs submit without waking us: drain on this tick (their ring
    // buffers hold seconds of samples), and show progress at a quarter of it.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut records = 0u64;
    let stopped_by = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break StopReason::Duration,
            _ = &mut ctrl_c => break StopReason::Interrupted,
            _ = tick.tick() => {
                records += drain(ring, &mut |b: &[u8]| sink.record(b));
                ticks += 1;
                if live && ticks.is_multiple_of(4) {
                    eprint!("\r  {:>6.1}s  {what} {records:<9} lost {:<6}", start.elapsed().as_secs_f64(), lost());
                    let _ = std::io::stderr().flush();
                }
                // Exits are checked every tick so a run ends promptly; new
                // workers less often, as listing /proc costs more.
                if ticks.is_multiple_of(FOLLOW_TICKS) || follow.live().iter().any(|p| !p.alive()) {
                    if live {
                        eprint!("\r");
                    }
                    for change in follow.poll() {
                        match change {
                            Change::Joined(p) => {
                                bpf::follow(ebpf, &p, aim)?;
                                sink.joined(&p)?;
                            }
                            Change::Left(pid) => bpf::forget(ebpf, pid),
                        }
                    }
                }
                if follow.all_gone() {
                    break if follow.any_exec() { StopReason::TargetExec } else { StopReason::TargetExited };
                }
            }
        }
    };
    records += drain(ring, &mut |b: &[u8]| sink.record(b));
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
        lost: lost(),
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
