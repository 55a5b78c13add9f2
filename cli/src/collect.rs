//! Draining a kernel ring buffer for a sampling run: until the duration ends,
//! Ctrl-C, or every target process has exited. Whatever arrived is kept.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use serde::Serialize;

use ljprobe_host::steal::Steal;

use crate::target::Process;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    Duration,
    Interrupted,
    TargetExited,
}

#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub elapsed_secs: f64,
    pub records: u64,
    pub lost: u64,
    pub stopped_by: StopReason,
    /// Percent of the machine's CPU time the hypervisor took meanwhile.
    pub steal_pct: Option<f64>,
}

/// `what` names the records on the progress line ("samples", "stacks").
pub async fn run(
    ring: &mut RingBuf<MapData>,
    processes: &[Process],
    duration: Duration,
    what: &str,
    lost: impl Fn() -> u64,
    mut on_record: impl FnMut(&[u8]),
) -> Result<Collected> {
    let start = Instant::now();
    let steal = Steal::start();
    // Said once everything is attached: from here on, what happens is seen.
    let pids: Vec<String> = processes.iter().map(|p| p.pid.to_string()).collect();
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
                records += drain(ring, &mut on_record);
                ticks += 1;
                if live && ticks.is_multiple_of(4) {
                    eprint!("\r  {:>6.1}s  {what} {records:<9} lost {:<6}", start.elapsed().as_secs_f64(), lost());
                    let _ = std::io::stderr().flush();
                }
                if processes.iter().all(|p| !p.alive()) {
                    break StopReason::TargetExited;
                }
            }
        }
    };
    records += drain(ring, &mut on_record);
    if live {
        eprintln!();
    }
    match stopped_by {
        StopReason::Interrupted => eprintln!("ljprobe: interrupted; writing what was collected"),
        StopReason::TargetExited => eprintln!(
            "ljprobe: the target exited after {:.1}s; writing what was collected",
            start.elapsed().as_secs_f64()
        ),
        StopReason::Duration => {}
    }
    Ok(Collected {
        elapsed_secs: start.elapsed().as_secs_f64(),
        records,
        lost: lost(),
        stopped_by,
        steal_pct: steal.pct(),
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
