//! When the allocator probe is on, and what one recorded event stands for.
//!
//! A uprobe traps on every call whatever its program does, so the default
//! mode keeps it attached only in short windows at random times, sized so the
//! traps cost about `--overhead` percent of the target's time, and scales
//! what the windows recorded by run time / counted time. That is unbiased for
//! a target that waits for work (a server below saturation: its requests
//! arrive whatever the probe does). A target that allocates flat out runs
//! slower inside a window, so its totals come out low; shares between
//! functions stay right. The sampler also adds up the growth of `gc.total`
//! while the collector rests (no step, so nothing swept) inside and outside
//! windows: a work measure the probe cannot slow, reported for comparison;
//! it is not yet used to scale (docs/alloc.md says why).
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
use ljprobe_common::{AllocConfig, ALLOC_CALLS};
use serde::Serialize;

use crate::{
    bpf::uprobe_window::{uprobe_pmu, Site, Window},
    lua::{GcReading, ProcMem, GC_21_GC64_X86_64},
};

const TICK: Duration = Duration::from_millis(1);
/// Ticks a window stays open: long against the time a uprobe takes to
/// attach (tens of microseconds), short against the run.
const WINDOW_TICKS: u32 = 5;
/// Cost of one probe hit on the target (trap, single-step, program), as
/// measured here: a bpftrace uprobe counting calls of the debug build's
/// `lj_alloc_f` slowed an allocation loop to 21 us per call, ljprobe --all to
/// 20 us (docs/alloc.md). A machine with cheaper traps pays less than the
/// budget, never more.
const EVENT_COST_SECS: f64 = 20e-6;
const MIN_DUTY: f64 = 0.0005;
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
    prev: Option<GcReading>,
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
    /// "all", or "time": scaled by run time / counted time, which undercounts
    /// a target the probe slows (see the module doc).
    pub estimated_by: &'static str,
    pub heap_growth_bytes: i64,
    pub heap_growth_in_windows_bytes: i64,
    /// Allocator calls the probe saw while attached (counted or not).
    pub probe_hits: u64,
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
    /// Ticks until the next window.
    Gap(u32),
    Opening,
    /// Ticks left to count.
    Counting(u32),
}

enum Order {
    /// Open a window on each (target index, site).
    Open(Vec<(usize, Site)>),
    Close(Vec<Window>),
}

fn attach_loop(pmu: u32, prog_fd: RawFd, orders: &std::sync::mpsc::Receiver<Order>, opened: &std::sync::mpsc::Sender<Vec<(usize, Window)>>) {
    while let Ok(order) = orders.recv() {
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
                    return;
                }
            }
            Order::Close(windows) => drop(windows),
        }
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
        }
    }

    fn adopt(&mut self, inbox: &Mutex<Vec<Probed>>) {
        let new: Vec<Probed> = inbox.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        for p in new {
            let Ok(mem) = ProcMem::open(p.site.pid) else { continue };
            let mut live = Live { site: p.site, g: p.g, mem, prev: None, window: None, gone: false };
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
        let mut next = Instant::now();
        let mut phase = if self.on { Phase::Counting(u32::MAX) } else { Phase::Gap(0) };
        while !stop.load(Ordering::Relaxed) {
            self.adopt(inbox);
            self.poll();
            phase = match phase {
                Phase::Gap(0) => {
                    let sites = self.targets.iter().enumerate().map(|(i, t)| (i, t.site.clone())).collect();
                    let _ = to_attacher.send(Order::Open(sites));
                    Phase::Opening
                }
                Phase::Gap(n) => Phase::Gap(n - 1),
                Phase::Opening => match opened.try_recv() {
                    Ok(windows) => {
                        for (i, w) in windows {
                            if let Some(t) = self.targets.get_mut(i) {
                                t.window = Some(w);
                            }
                        }
                        self.count_from_here();
                        Phase::Counting(WINDOW_TICKS)
                    }
                    Err(_) => Phase::Opening,
                },
                Phase::Counting(n) if n > 1 || self.budget.is_none() => Phase::Counting(n.saturating_sub(1)),
                Phase::Counting(_) => {
                    if self.adapt() {
                        Phase::Counting(WINDOW_TICKS)
                    } else {
                        self.stop_counting();
                        let windows = self.targets.iter_mut().filter_map(|t| t.window.take()).collect();
                        let _ = to_attacher.send(Order::Close(windows));
                        Phase::Gap(self.gap_ticks())
                    }
                }
            };
            self.targets.retain(|t| !t.gone);
            next += TICK;
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

    fn gap_ticks(&mut self) -> u32 {
        let mean = f64::from(WINDOW_TICKS) * (1.0 - self.duty) / self.duty;
        (mean * (0.5 + self.rng.f64())).round() as u32
    }

    /// Reads every target's collector and adds up the heap's growth over
    /// intervals in which it rested.
    fn poll(&mut self) {
        let counting = self.on;
        let in_window = counting && self.polls_on > 0;
        for t in &mut self.targets {
            let Some(now) = GC_21_GC64_X86_64.read(&t.mem, t.g) else {
                if !ljprobe_host::proc::alive(t.site.pid) {
                    t.gone = true;
                }
                t.prev = None;
                continue;
            };
            self.out.polls += 1;
            if let Some(prev) = t.prev {
                if rested(&prev, &now) {
                    self.out.rested_intervals += 1;
                    let d = now.total as i64 - prev.total as i64;
                    self.out.heap_growth_bytes += d;
                    if in_window {
                        self.out.heap_growth_in_windows_bytes += d;
                    }
                }
            }
            t.prev = Some(now);
        }
        if counting {
            self.polls_on += 1;
        }
    }

    fn finish(mut self) -> Finished {
        let o = &mut self.out;
        o.run_secs = self.started.elapsed().as_secs_f64();
        o.duty = if o.run_secs > 0.0 { o.counted_secs / o.run_secs } else { 0.0 };
        (o.scale, o.estimated_by) = match o.mode {
            "all" => (1.0, "all"),
            _ if o.counted_secs > 0.0 => (o.run_secs / o.counted_secs, "time"),
            _ => (0.0, "time"),
        };
        (self.out, self.maps.config, self.maps.counts)
    }
}

/// No collector step ran between two readings: it rested (`GCSpause`) at
/// both, with the same threshold (each step and each cycle's end sets a new
/// one) and the same estimate (a full collection run by `collectgarbage()`,
/// which ends where it began when the collector is stopped, changes it).
fn rested(prev: &GcReading, now: &GcReading) -> bool {
    prev.state == 0 && now.state == 0 && prev.threshold == now.threshold && prev.estimate == now.estimate
}
