//! `--sample PERCENT`: every probe on a request path costs a trap into the
//! kernel per call, whatever its program does, so at tens of thousands of
//! requests a second following every request costs the worker more than the
//! requests themselves (docs/latency.md#cost). Sampled, the probe that sees
//! requests begin opens only PERCENT of the time, in short windows; the probes
//! that follow a request open with it and stay open until every request that
//! began in the window has ended, then close until the next window. Which
//! requests are followed depends only on when they began, not on how long they
//! took, so the percentiles are those of all requests. The tracepoints and
//! timer samples that split a request's time open and close with the probes
//! that follow it: each of their events costs whatever process it fires in
//! (every context switch and every system call on the machine pays the
//! dispatch), and between windows they have no request to charge.

use std::{
    os::fd::RawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{channel, Receiver, Sender},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfMap, MapData};
use ljprobe_common::latency::{LatReq, LatThread};

use crate::bpf::perf_link::{Link, Site};

/// One window per period. Opening and closing a uprobe is not free for the
/// target: measured here on /health at 60-70k requests a second, with the
/// probes on a function no request calls, opening and closing one probe once
/// a second cost the worker about 3% of its throughput, all seven about 30%,
/// whatever the window's length (the traps while open come on top). Closing
/// also waits out an RCU grace period (~0.1 s) holding a lock that opening
/// the same uprobe again waits for. So windows are rare: one every 10 s, and
/// sampled runs are meant to be long (a minute or more).
pub const PERIOD: Duration = Duration::from_secs(10);
/// A request still going this long after its window closed is given up (a
/// long poll, a websocket), so that the probes can close.
const LINGER: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(1);

/// A probe to open in each process: a program on a function of an object.
#[derive(Clone)]
pub struct Probe {
    pub object: PathBuf,
    pub offset: u64,
    pub prog_fd: RawFd,
    /// The probe that sees requests begin (opens only in windows).
    pub starts: bool,
}

/// What opens and closes with the probes that follow requests.
pub struct Companions {
    /// (tracepoint id, program) of the event loop's and the scheduler's tracepoints.
    pub tracepoints: Vec<(u64, RawFd)>,
    /// (Hz, program): timer samples of each target thread (None: `--freq 0`).
    pub sampler: Option<(u64, RawFd)>,
    /// The kernel's state of each worker thread and of each connection's
    /// newest request: cleared before a window, it would be ten seconds old.
    pub threads: BpfMap<MapData, u32, LatThread>,
    pub created: BpfMap<MapData, u64, u64>,
}

impl Companions {
    fn open(&mut self, pids: &[u32]) -> Vec<Link> {
        clear(&mut self.threads);
        clear(&mut self.created);
        let mut links = Vec::new();
        for &(id, prog) in &self.tracepoints {
            match Link::tracepoint(id, prog) {
                Ok(l) => links.push(l),
                Err(e) => log::debug!("{e:#}"),
            }
        }
        if let Some((hz, prog)) = self.sampler {
            for tid in pids.iter().flat_map(|&pid| ljprobe_host::proc::threads(pid)) {
                match Link::cpu_clock(tid, hz, prog) {
                    Ok(l) => links.push(l),
                    Err(e) => log::debug!("{e:#}"),
                }
            }
        }
        links
    }
}

/// Empties a kernel map; how many entries it held.
fn clear<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(map: &mut BpfMap<MapData, K, V>) -> u64 {
    let keys: Vec<_> = map.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = map.remove(k);
    }
    keys.len() as u64
}

#[derive(Default, Clone, Copy, Debug)]
pub struct Stats {
    pub windows: u64,
    /// How long the starting probe was open, in all.
    pub open: Duration,
    /// Requests still going when their probes had to close: left out.
    pub abandoned: u64,
}

pub struct Windows {
    stop: Arc<AtomicBool>,
    joined: Sender<u32>,
    thread: JoinHandle<Stats>,
}

impl Windows {
    /// Starts the windows on processes `pids`; `reqs` is the kernel's map of
    /// followed requests in flight.
    pub fn start(
        pmu: u32,
        probes: Vec<Probe>,
        companions: Companions,
        pids: &[u32],
        share: f64,
        reqs: BpfMap<MapData, u64, LatReq>,
    ) -> std::io::Result<Windows> {
        let stop = Arc::new(AtomicBool::new(false));
        let (joined, inbox) = channel();
        let (s, pids) = (stop.clone(), pids.to_vec());
        let thread = std::thread::Builder::new()
            .name("latency-windows".into())
            .spawn(move || serve(pmu, &probes, companions, pids, share, reqs, &s, &inbox))?;
        Ok(Windows { stop, joined, thread })
    }

    /// A process that joined the run (a new nginx worker).
    pub fn joined(&self) -> Sender<u32> {
        self.joined.clone()
    }

    pub fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        self.thread.join().unwrap_or_default()
    }
}

fn open(pmu: u32, probes: &[Probe], pids: &[u32], starts: bool) -> Vec<Link> {
    let mut links = Vec::new();
    for &pid in pids {
        for p in probes.iter().filter(|p| p.starts == starts) {
            let link = Site::new(pid, &p.object, p.offset).and_then(|site| Link::uprobe(pmu, &site, p.prog_fd));
            match link {
                Ok(l) => links.push(l),
                Err(e) => log::debug!("{e:#}"),
            }
        }
    }
    links
}

/// Closing a uprobe waits out an RCU grace period (~0.1 s here): off this
/// thread, so the next window opens on time, and each in its own, so that
/// they wait together.
fn close(links: Vec<Link>, closing: &mut Vec<JoinHandle<()>>) {
    closing.retain(|c| !c.is_finished());
    closing.extend(links.into_iter().map(|l| std::thread::spawn(move || drop(l))));
}

#[allow(clippy::too_many_arguments)]
fn serve(
    pmu: u32,
    probes: &[Probe],
    mut companions: Companions,
    mut pids: Vec<u32>,
    share: f64,
    mut reqs: BpfMap<MapData, u64, LatReq>,
    stop: &AtomicBool,
    inbox: &Receiver<u32>,
) -> Stats {
    let mut stats = Stats::default();
    let mut closing: Vec<JoinHandle<()>> = Vec::new();
    let window = PERIOD.mul_f64(share);
    // One wake-up per nap: a thread waking every millisecond on a busy
    // machine took the worker's CPU often enough to halve its throughput.
    let nap = |until: Instant| {
        let left = until.saturating_duration_since(Instant::now());
        if !left.is_zero() && !stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(left);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        pids.extend(inbox.try_iter());
        // The last window's probes are gone first: a program attached twice
        // to a tracepoint would see each event twice.
        for c in closing.drain(..) {
            let _ = c.join();
        }
        let mut follow = companions.open(&pids);
        follow.extend(open(pmu, probes, &pids, false));
        let start = open(pmu, probes, &pids, true);
        let opened = Instant::now();
        nap(opened + window);
        close(start, &mut closing);
        stats.open += opened.elapsed();
        stats.windows += 1;
        // The requests that began in the window end with their probes open.
        let lingering = Instant::now();
        while reqs.keys().next().is_some() && lingering.elapsed() < LINGER && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
        }
        let left = clear(&mut reqs);
        stats.abandoned += left;
        close(follow, &mut closing);
        log::debug!(
            "window: opened in {:?}, open {:?}, lingered {:?}, {} left",
            opened - began,
            window,
            lingering.elapsed(),
            left
        );
        nap(began + PERIOD);
    }
    for c in closing {
        let _ = c.join();
    }
    stats
}
