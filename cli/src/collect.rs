//! Draining a kernel ring buffer for a sampling run: until the duration ends,
//! Ctrl-C, or every target process has exited. Whatever arrived is kept.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

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
}

pub async fn run(
    ring: RingBuf<MapData>,
    processes: &[Process],
    duration: Duration,
    lost: impl Fn() -> u64,
    mut on_record: impl FnMut(&[u8]),
) -> Result<Collected> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives, and
    // nothing else closes it.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("cannot watch the ring buffer: {e}"))?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + duration);
    let live = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut records = 0u64;
    let stopped_by = loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                while let Some(item) = guard.get_inner_mut().next() {
                    on_record(&item);
                    records += 1;
                }
                guard.clear_ready();
            }
            _ = tokio::time::sleep_until(deadline) => break StopReason::Duration,
            _ = &mut ctrl_c => break StopReason::Interrupted,
            _ = tick.tick() => {
                if live {
                    eprint!("\r  {:>6.1}s  samples {records:<9} lost {:<6}", start.elapsed().as_secs_f64(), lost());
                    let _ = std::io::stderr().flush();
                }
                if processes.iter().all(|p| !p.alive()) {
                    break StopReason::TargetExited;
                }
            }
        }
    };
    let ring = fd.get_mut();
    while let Some(item) = ring.next() {
        on_record(&item);
        records += 1;
    }
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
    Ok(Collected { elapsed_secs: start.elapsed().as_secs_f64(), records, lost: lost(), stopped_by })
}
