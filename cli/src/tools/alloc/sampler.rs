//! When the allocator probe is on, and what one recorded event stands for.
//!
//! A uprobe traps on every call whatever its program does, so the default
//! mode keeps it attached only in short windows at random times, sized so the
//! traps cost about `--overhead` percent of the target's time. The windows
//! give the split: which stacks allocate how much. The total comes from the
//! VM's own accounting, which the probe cannot distort (a target that
//! allocates flat out runs many times slower inside a window, so scaling the
//! windows by time would undercount it).
//!
//! That accounting (lj_gc.c): every allocation adds to `gc.total`; the
//! collector's atomic phase sets `gc.estimate = gc.total` (less userdata
//! awaiting finalizers) and each sweep takes what it frees off both. So
//! `gc.total - gc.estimate` is what was allocated since the last atomic phase,
//! less what was freed outside the collector. Read every millisecond, its
//! increase adds up the allocations; across an atomic phase the bytes between
//! the last reading and that phase are estimated from the recent rate (half
//! an interval's worth, on average). The readings speed up to every 100 us
//! while cycles come that fast (a small heap allocated flat out), so the
//! estimated part stays small. The
//! frees outside the collector are measured in the windows, as a share of the
//! bytes allocated there, and added back.
//!
//! With `--all` the probe stays on and every event is recorded (factor 1).

use std::{
    os::fd::RawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray};
use ljprobe_common::{AllocConfig, ALLOC_BYTES, ALLOC_CALLS, ALLOC_EXPLICIT_FREED_BYTES};
use serde::Serialize;

use crate::{
    bpf::uprobe_window::{uprobe_pmu, Site, Window},
    lua::{GcReading, ProcMem, GC_21_GC64_X86_64},
};

/// How often the VM's accounting is read: fast enough that most collector
/// cycles span several readings (a small heap allocated flat out cycles
/// every millisecond), slow enough to cost little when cycles are long.
const POLL_MIN: Duration = Duration::from_micros(100);
const POLL_MAX: Duration = Duration::from_millis(2);
/// How long a window counts: short against the run, long against a poll.
const WINDOW: Duration = Duration::from_millis(5);
/// Cost of one probe hit on the target (trap, single-step, program), as
/// measured here: a bpftrace uprobe counting calls of the debug build's
/// `lj_alloc_f` slowed an allocation loop to 21 us per call, ljprobe --all to
/// 20 us (docs/alloc.md). A machine with cheaper traps pays less than the
/// budget, never more.
const EVENT_COST_SECS: f64 = 20e-6;
const MIN_DUTY: f64 = 0.0005;
/// After a window's close starts, its breakpoints are gone within this (they
/// are removed before the grace period; `stray_hits` checks it).
const CLOSE_SETTLE: Duration = Duration::from_millis(10);
/// The first window's duty, before any rate is known.
const FIRST_DUTY: f64 = 0.02;

/// A process the sampler probes and polls.
pub struct Probed {
    pub site: Site,
    pub g: u64,
}

struct Live {
    site: Site,
    g: u64,
    mem: ProcMem,
    prev: Option<(GcReading, Instant)>,
    /// Recent allocation rate (bytes/s, net), for the bytes before an atomic phase.
    rate: f64,
    window: Option<Window>,
    gone: bool,
}

/// How the run sampled, for the JSON and the terminal.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Sampling {
    /// "all" or "windows".
    pub mode: &'static str,
    pub overhead_budget_pct: Option<f64>,
    pub windows: u64,
    /// Share of the run the probe counted.
    pub duty: f64,
    pub counted_secs: f64,
    pub run_secs: f64,
    /// What one recorded event stands for.
    pub scale: f64,
    /// "all"; "vm-accounting" (see the module doc); or "time" when that
    /// could not be read (counts scaled by run time / counted time, low for a
    /// target the probe slows).
    pub estimated_by: &'static str,
    /// Allocated less freed outside the collector, from the VM's accounting
    /// (see the module doc): over the run, and over the counted windows.
    pub vm_net_bytes: f64,
    pub vm_net_in_windows_bytes: f64,
    /// The same in the windows as the probe counted it: bytes allocated, and
    /// freed outside the collector.
    pub counted_bytes: u64,
    pub counted_explicit_freed_bytes: u64,
    /// Atomic phases seen between two readings (where the bytes before one
    /// are estimated).
    pub cycles_seen: u64,
    /// Allocator calls the probe saw while attached (counted or not).
    pub probe_hits: u64,
    /// Allocator calls the probe saw when it was held to be detached (should be 0).
    pub stray_hits: u64,
    /// Readings of the collector, and intervals between two in which it rested.
    pub polls: u64,
    pub rested_intervals: u64,
}

/// How the run sampled, and the maps the sampler held, handed back.
pub type Finished = (Sampling, Array<MapData, AllocConfig>, PerCpuArray<MapData, u64>);

pub struct Sampler {
    stop: Arc<AtomicBool>,
    inbox: Arc<Mutex<Vec<Probed>>>,
    handle: JoinHandle<Finished>,
}

pub struct Maps {
    pub config: Array<MapData, AllocConfig>,
    pub counts: PerCpuArray<MapData, u64>,
    pub base: AllocConfig,
}

impl Sampler {
    /// Starts probing `targets` (`budget_pct`: None = `--all`).
    pub fn start(targets: Vec<Probed>, prog_fd: RawFd, maps: Maps, budget_pct: Option<f64>) -> anyhow::Result<Sampler> {
        let pmu = uprobe_pmu()?;
        let stop = Arc::new(AtomicBool::new(false));
        let inbox = Arc::new(Mutex::new(targets));
        let (s, i) = (stop.clone(), inbox.clone());
        // With --all the probe goes on before the run is said to start.
        let mut run = Run::new(pmu, prog_fd, maps, budget_pct);
        run.adopt(&i);
        if budget_pct.is_none() {
            run.switch_on()?;
        }
        let handle = std::thread::Builder::new().name("alloc-sampler".into()).spawn(move || run.go(&s, &i))?;
        Ok(Sampler { stop, inbox, handle })
    }

    /// A process that joined the run (a new nginx worker).
    pub fn add(&self, p: Probed) {
        if let Ok(mut v) = self.inbox.lock() {
            v.push(p);
        }
    }

    pub fn finish(self) -> Finished {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the sampler thread does not panic")
    }
}

enum Phase {
    /// Until the next window opens.
    Gap(Instant),
    Opening,
    /// Until the window closes (None: never, `--all`).
    Counting(Option<Instant>),
}

enum Order {
    /// Open a window on each (target index, site).
    Open(Vec<(usize, Site)>),
    Close(Vec<Window>),
}

fn attach_loop(pmu: u32, prog_fd: RawFd, orders: &std::sync::mpsc::Receiver<Order>, opened: &std::sync::mpsc::Sender<Vec<(usize, Window)>>) {
    let mut closing = Vec::new();
    while let Ok(order) = orders.recv() {
        closing.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
        match order {
            Order::Open(sites) => {
                let windows = sites
                    .into_iter()
                    .filter_map(|(i, site)| match Window::open(pmu, &site, prog_fd) {
                        Ok(w) => Some((i, w)),
                        Err(e) => {
                            log::debug!("{e:#}");
                            None
                        }
                    })
                    .collect();
                if opened.send(windows).is_err() {
                    break;
                }
            }
            // Each close waits out a grace period: in a thread of its own, so
            // the next window opens on time.
            Order::Close(windows) => closing.push(std::thread::spawn(move || drop(windows))),
        }
    }
    for c in closing {
        let _ = c.join();
    }
}

struct Run {
    pmu: u32,
    prog_fd: RawFd,
    maps: Maps,
    budget: Option<f64>,
    targets: Vec<Live>,
    duty: f64,
    on: bool,
    /// Polls since the probe started counting (the first one opens the span).
    polls_on: u32,
    started: Instant,
    on_since: Instant,
    hits_at_on: u64,
    out: Sampling,
    rng: fastrand::Rng,
    /// No probe is attached from here on (None: one may be): a closed
    /// window's breakpoints go as its close starts, before the grace period.
    free_from: Option<Instant>,
    /// Allocator calls seen by the probe when it was thought detached.
    settled_hits: Option<u64>,
}

impl Run {
    fn new(pmu: u32, prog_fd: RawFd, maps: Maps, budget: Option<f64>) -> Run {
        let out = Sampling {
            mode: if budget.is_some() { "windows" } else { "all" },
            overhead_budget_pct: budget,
            ..Default::default()
        };
        Run {
            pmu,
            prog_fd,
            maps,
            budget: budget.map(|b| b / 100.0),
            targets: Vec::new(),
            duty: FIRST_DUTY,
            on: false,
            polls_on: 0,
            started: Instant::now(),
            on_since: Instant::now(),
            hits_at_on: 0,
            out,
            rng: fastrand::Rng::new(),
            free_from: None,
            settled_hits: None,
        }
    }

    fn adopt(&mut self, inbox: &Mutex<Vec<Probed>>) {
        let new: Vec<Probed> = inbox.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        for p in new {
            let Ok(mem) = ProcMem::open(p.site.pid) else { continue };
            let mut live = Live { site: p.site, g: p.g, mem, prev: None, rate: 0.0, window: None, gone: false };
            if self.on {
                live.window = Window::open(self.pmu, &live.site, self.prog_fd).ok();
            }
            self.targets.push(live);
        }
    }

    fn go(mut self, stop: &AtomicBool, inbox: &Mutex<Vec<Probed>>) -> Finished {
        // Opening a uprobe takes milliseconds and closing one waits for an RCU
        // grace period (~0.1 s here): both happen on another thread, so the
        // polls go on at their pace and a window counts exactly its ticks.
        let (to_attacher, orders) = std::sync::mpsc::channel::<Order>();
        let (opened_tx, opened) = std::sync::mpsc::channel::<Vec<(usize, Window)>>();
        let (pmu, prog_fd) = (self.pmu, self.prog_fd);
        let attacher = std::thread::Builder::new()
            .name("alloc-attach".into())
            .spawn(move || attach_loop(pmu, prog_fd, &orders, &opened_tx))
            .expect("a thread can be started");
        self.started = Instant::now();
        if self.on {
            self.on_since = self.started;
        }
        let mut phase = if self.on { Phase::Counting(None) } else { Phase::Gap(Instant::now()) };
        let mut period = Duration::from_millis(1);
        let mut next = Instant::now();
        // SAFETY: prctl on this thread only; 1 ns of slack keeps 100 us sleeps
        // from stretching to the default 50 us more.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        let mut polls_since = 0u32;
        let mut cycles_since = 0u64;
        while !stop.load(Ordering::Relaxed) {
            self.adopt(inbox);
            self.poll();
            let now = Instant::now();
            phase = match phase {
                Phase::Gap(at) if now >= at => {
                    if let Some(h) = self.settled_hits.take() {
                        self.out.stray_hits += self.hits().saturating_sub(h);
                    }
                    self.free_from = None;
                    let sites = self.targets.iter().enumerate().map(|(i, t)| (i, t.site.clone())).collect();
                    let _ = to_attacher.send(Order::Open(sites));
                    Phase::Opening
                }
                Phase::Opening => match opened.try_recv() {
                    Ok(windows) => {
                        for (i, w) in windows {
                            if let Some(t) = self.targets.get_mut(i) {
                                t.window = Some(w);
                            }
                        }
                        self.count_from_here();
                        Phase::Counting(Some(Instant::now() + WINDOW))
                    }
                    Err(_) => Phase::Opening,
                },
                Phase::Counting(Some(until)) if now >= until => {
                    if self.adapt() {
                        Phase::Counting(Some(now + WINDOW))
                    } else {
                        self.stop_counting();
                        let windows = self.targets.iter_mut().filter_map(|t| t.window.take()).collect();
                        let _ = to_attacher.send(Order::Close(windows));
                        self.free_from = Some(now + CLOSE_SETTLE);
                        Phase::Gap(now + self.gap())
                    }
                }
                other => other,
            };
            self.targets.retain(|t| !t.gone);
            // Every 100 readings: faster while most cycles fall between two
            // readings, slower while they are rare.
            polls_since += 1;
            if polls_since == 100 {
                let cycles = self.out.cycles_seen - cycles_since;
                period = if cycles > 10 { period / 2 } else if cycles < 2 { period * 2 } else { period };
                period = period.clamp(POLL_MIN, POLL_MAX);
                (polls_since, cycles_since) = (0, self.out.cycles_seen);
            }
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        if self.on {
            self.poll();
            self.stop_counting();
        }
        for t in &mut self.targets {
            t.window = None;
        }
        drop(to_attacher);
        let _ = attacher.join();
        self.finish()
    }

    fn hits(&self) -> u64 {
        crate::bpf::per_cpu_total(&self.maps.counts, ALLOC_CALLS)
    }

    /// Attaches to every target and starts counting (`--all`, before the run).
    fn switch_on(&mut self) -> anyhow::Result<()> {
        for t in &mut self.targets {
            t.window = Some(Window::open(self.pmu, &t.site, self.prog_fd)?);
        }
        self.count_from_here();
        Ok(())
    }

    /// The probe is attached: what the kernel counts from here on is matched
    /// by the polls from here on.
    fn count_from_here(&mut self) {
        self.set_scale(1);
        self.on = true;
        self.polls_on = 0;
        self.on_since = Instant::now();
        self.hits_at_on = self.hits();
    }

    fn stop_counting(&mut self) {
        self.set_scale(0);
        self.on = false;
        self.out.counted_secs += self.on_since.elapsed().as_secs_f64();
        self.out.windows += 1;
        self.out.probe_hits += self.hits().saturating_sub(self.hits_at_on);
    }

    fn set_scale(&mut self, scale: u64) {
        let cfg = AllocConfig { scale, ..self.maps.base };
        if let Err(e) = self.maps.config.set(0, cfg, 0) {
            log::debug!("cannot switch the alloc program: {e}");
        }
    }

    /// Sets the next duty from this window's rate of hits; true to keep the
    /// probe on (the target allocates so little that the budget covers it all).
    fn adapt(&mut self) -> bool {
        let Some(budget) = self.budget else { return true };
        let secs = self.on_since.elapsed().as_secs_f64().max(1e-4);
        let hits = self.hits().saturating_sub(self.hits_at_on) as f64;
        let per_target = hits / secs / self.targets.len().max(1) as f64;
        let load = (per_target * EVENT_COST_SECS).min(1.0);
        self.duty = if load > 0.0 { (budget / load).clamp(MIN_DUTY, 1.0) } else { 1.0 };
        self.duty >= 1.0
    }

    /// Time to the next window: what keeps the probe on `duty` of the time,
    /// drawn at random so that windows fall on no rhythm of the target's.
    fn gap(&mut self) -> Duration {
        let mean = WINDOW.as_secs_f64() * (1.0 - self.duty) / self.duty;
        Duration::from_secs_f64(mean * (0.5 + self.rng.f64()))
    }

    /// Reads every target's collector and adds up what it allocated since
    /// the last reading (see the module doc), and apart what it allocated in
    /// counted windows.
    fn poll(&mut self) {
        let counting = self.on && self.polls_on > 0;
        if !self.on && self.settled_hits.is_none() && self.free_from.is_some_and(|t| Instant::now() >= t) {
            self.settled_hits = Some(self.hits());
        }
        for t in &mut self.targets {
            let Some(now) = GC_21_GC64_X86_64.read(&t.mem, t.g) else {
                if !ljprobe_host::proc::alive(t.site.pid) {
                    t.gone = true;
                }
                t.prev = None;
                continue;
            };
            let at = Instant::now();
            self.out.polls += 1;
            if let Some((prev, prev_at)) = t.prev {
                let secs = (at - prev_at).as_secs_f64();
                let since_atomic = now.total as f64 - now.estimate as f64;
                let added = if atomic_between(&prev, &now) {
                    self.out.cycles_seen += 1;
                    // Exact since the atomic phase; before it, on average
                    // half the interval at the recent rate.
                    since_atomic + t.rate * secs / 2.0
                } else {
                    let added = since_atomic - (prev.total as f64 - prev.estimate as f64);
                    if secs > 0.0 {
                        t.rate = 0.8 * t.rate + 0.2 * (added.max(0.0) / secs);
                    }
                    added
                };
                self.out.vm_net_bytes += added;
                if counting {
                    self.out.vm_net_in_windows_bytes += added;
                }
            }
            t.prev = Some((now, at));
        }
        if self.on {
            self.polls_on += 1;
        }
    }

    fn finish(mut self) -> Finished {
        let o = &mut self.out;
        o.run_secs = self.started.elapsed().as_secs_f64();
        o.duty = if o.run_secs > 0.0 { o.counted_secs / o.run_secs } else { 0.0 };
        o.counted_bytes = crate::bpf::per_cpu_total(&self.maps.counts, ALLOC_BYTES);
        o.counted_explicit_freed_bytes = crate::bpf::per_cpu_total(&self.maps.counts, ALLOC_EXPLICIT_FREED_BYTES);
        (o.scale, o.estimated_by) = match (o.mode, vm_scale(o)) {
            ("all", _) => (1.0, "all"),
            (_, Some(k)) => (k, "vm-accounting"),
            _ if o.counted_secs > 0.0 => (o.run_secs / o.counted_secs, "time"),
            _ => (0.0, "time"),
        };
        (self.out, self.maps.config, self.maps.counts)
    }
}

/// The collector went through its atomic phase between two readings: the
/// estimate only grows there (sweeps and finalizers lower it), or the state
/// passed from marking to sweeping.
fn atomic_between(prev: &GcReading, now: &GcReading) -> bool {
    now.estimate > prev.estimate || (prev.state <= 2 && now.state >= 3 && now.estimate != prev.estimate)
}

/// What one counted byte stands for: the run's allocations from the VM's
/// accounting, with the frees outside the collector added back in the
/// proportion the windows saw, over the bytes the windows counted.
fn vm_scale(o: &Sampling) -> Option<f64> {
    let counted = o.counted_bytes as f64;
    let net_share = 1.0 - o.counted_explicit_freed_bytes as f64 / counted.max(1.0);
    if counted <= 0.0 || o.vm_net_bytes <= 0.0 || net_share <= 0.05 {
        return None;
    }
    Some(o.vm_net_bytes / net_share / counted)
}
