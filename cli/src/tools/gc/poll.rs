//! The run's tick: read every VM's collector fields, and at each interval's
//! end close a point per VM and one for all of them together, with the
//! interval's CPU samples by VM state from the kernel program.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use aya::maps::{HashMap, MapData, PerCpuArray};
use ljprobe_common::{GcCycles, VMSTATE_FIRST_VMST, VMSTATE_NO_VM, VMSTATE_OUTSIDE_LUA, VMSTATE_SLOTS, VMSTATE_TRACE};
use serde::Serialize;

use super::heap::{Heap, HeapPoint, HeapTotals};
use crate::{
    bpf,
    collect::Source,
    bpf::gc_cycles::{CycleHook, Hook, Hooked},
    lua::{allocated_so_far, GcLayout, ProcMem},
    target::Process,
};

const SLOTS: usize = VMSTATE_SLOTS as usize;
const GC_SLOT: usize = (VMSTATE_FIRST_VMST + 2) as usize;

/// One target's VM: where its `global_State` is, and what was read of it.
pub struct Vm {
    pid: u32,
    g: u64,
    mem: ProcMem,
    heap: Heap,
    series: Vec<HeapPoint>,
    /// False once the process exited or exec'd.
    live: bool,
    /// What runs the kernel's accounting at its atomic phase (`--exact`),
    /// which makes cycles and allocation exact (`lua::allocated_so_far`);
    /// without it they come from the readings.
    watch: Option<Hooked>,
    /// Its accounting (allocated, cycles) when it joined and at the last interval's end.
    first: Option<(f64, u64)>,
    last: Option<(f64, u64)>,
}

impl Vm {
    /// None unless the collector's fields can be read at `g` and look sane.
    /// `exact` (with `--exact`) runs the kernel's `gc_atomic` or `gc_flip` at
    /// each atomic phase; when neither can be set the reason goes to `notes`.
    pub fn open(pid: u32, g: u64, layout: GcLayout, exact: Option<&CycleHook>, notes: &mut Vec<String>) -> Option<Vm> {
        let mem = ProcMem::open(pid).ok()?;
        layout.read(&mem, g)?;
        let watch = exact.and_then(|h| match h.hook(pid, g, layout.currentwhite) {
            Ok(l) => Some(l),
            Err(e) => {
                notes.push(format!("process {pid}: {e:#}; cycles and allocation come from readings every {:?} instead and can miss short cycles", super::POLL));
                None
            }
        });
        Some(Vm { pid, g, mem, heap: Heap::default(), series: Vec::new(), live: true, watch, first: None, last: None })
    }

    /// Its accounting now, from the kernel's map and its fields. Once the
    /// process is gone its fields cannot be read, but the map still holds its
    /// accounting up to its last atomic phase: without it, the cycles since
    /// the last interval closed were lost (a tenth of a second of them: 9% of
    /// a test script that cycles every 0.1 ms and ran under a second).
    fn account(&self, layout: &GcLayout, cycles: &HashMap<MapData, u32, GcCycles>) -> Option<(f64, u64)> {
        self.watch.as_ref()?;
        let map = || cycles.get(&self.pid, 0).ok();
        let live = self.live.then(|| allocated_so_far(layout, &self.mem, self.g, map)).flatten();
        let now = live.map(|a| (a.allocated, a.cycles)).or_else(|| map().map(|c| (c.allocated as f64, c.cycles)))?;
        // The map alone misses the bytes since the last atomic phase that an
        // earlier reading of the fields counted: never go back.
        Some(match self.last {
            Some(last) if last.1 >= now.1 && last.0 > now.0 => last,
            _ => now,
        })
    }

    fn poll(&mut self, layout: &GcLayout, at: f64) {
        match layout.read(&self.mem, self.g) {
            Some(r) => self.heap.observe(r, at),
            None => self.heap.failed(),
        }
    }
}

/// All VMs together over one interval: the heap summed over the processes.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_secs: f64,
    pub heap_bytes: u64,
    /// The range of the summed heap over the interval's readings.
    pub heap_min_bytes: u64,
    pub heap_max_bytes: u64,
    pub threshold_bytes: u64,
    pub estimate_bytes: u64,
    pub cycles: u64,
    pub alloc_bytes_per_sec: f64,
    /// The target's CPU samples in which a VM was found, and those of them in the GC.
    pub samples: u64,
    pub gc_samples: u64,
    pub gc_share: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct VmResult {
    pub pid: u32,
    pub global_state: String,
    /// With `--exact`, how its atomic phase was hooked: "uprobe" or "watchpoint".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_hook: Option<Hook>,
    #[serde(flatten)]
    pub totals: HeapTotals,
    pub series: Vec<HeapPoint>,
}

pub struct Outcome {
    pub start_unix_secs: f64,
    pub interval_secs: f64,
    pub series: Vec<Point>,
    pub vms: Vec<VmResult>,
    /// CPU samples of the whole run by VM state.
    pub by_vm_state: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

pub struct Poller {
    vms: Vec<Vm>,
    layout: GcLayout,
    states: PerCpuArray<MapData, u64>,
    cycles: HashMap<MapData, u32, GcCycles>,
    /// How new workers' atomic phases are hooked (`--exact`).
    watch: Option<CycleHook>,
    counted: [u64; SLOTS],
    interval: f64,
    started: Instant,
    start_unix_secs: f64,
    closed_at: f64,
    next_close: f64,
    /// The summed heap's range in the interval so far.
    range: Option<(u64, u64)>,
    series: Vec<Point>,
    notes: Vec<String>,
}

impl Poller {
    /// The clock starts now: make it just before the run.
    pub fn new(
        mut vms: Vec<Vm>,
        layout: GcLayout,
        states: PerCpuArray<MapData, u64>,
        cycles: HashMap<MapData, u32, GcCycles>,
        watch: Option<CycleHook>,
        interval: Duration,
    ) -> Poller {
        for vm in &mut vms {
            vm.first = vm.account(&layout, &cycles);
            vm.last = vm.first;
        }
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Poller {
            vms,
            layout,
            states,
            cycles,
            watch,
            counted: [0; SLOTS],
            interval: interval.as_secs_f64(),
            started: Instant::now(),
            start_unix_secs: unix.as_secs_f64(),
            closed_at: 0.0,
            next_close: interval.as_secs_f64(),
            range: None,
            series: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn heap_now(&self) -> Option<u64> {
        let lasts = self.vms.iter().filter(|v| v.live).filter_map(|v| v.heap.last);
        lasts.map(|r| r.total).reduce(|a, b| a + b)
    }

    /// Ends the interval at `at`; returns the samples counted in it.
    fn close(&mut self, at: f64) -> u64 {
        let secs = at - self.closed_at;
        let mut points = Vec::new();
        for vm in &mut self.vms {
            let exact = vm.account(&self.layout, &self.cycles);
            let Some(mut p) = vm.heap.close(at, secs) else { continue };
            if let (Some((a, c)), Some((a0, c0))) = (exact, vm.last) {
                p.cycles = c - c0;
                p.alloc_bytes_per_sec = (a - a0).max(0.0) / secs.max(1e-9);
                vm.last = exact;
            }
            // Watched: the run's totals are the accounting's, up to its last
            // reading (the readings' own count is a lower bound).
            if let (Some((a, c)), Some((first_a, first_c))) = (vm.last, vm.first) {
                vm.heap.totals.cycles = c - first_c;
                vm.heap.totals.allocated_bytes = (a - first_a).max(0.0).round() as u64;
            }
            vm.series.push(p.clone());
            points.push(p);
        }
        let mut now = [0u64; SLOTS];
        for (i, n) in now.iter_mut().enumerate() {
            *n = bpf::per_cpu_total(&self.states, i as u32);
        }
        let delta: Vec<u64> = now.iter().zip(self.counted).map(|(n, c)| n.saturating_sub(c)).collect();
        self.counted = now;
        let range = self.range.take();
        if !points.is_empty() {
            let sum = |f: fn(&HeapPoint) -> u64| points.iter().map(f).sum::<u64>();
            let heap = sum(|p| p.heap_bytes);
            let samples = in_vm(&delta);
            let (lo, hi) = range.unwrap_or((heap, heap));
            self.series.push(Point {
                t_secs: at,
                heap_bytes: heap,
                heap_min_bytes: lo,
                heap_max_bytes: hi,
                threshold_bytes: sum(|p| p.threshold_bytes),
                estimate_bytes: sum(|p| p.estimate_bytes),
                cycles: sum(|p| p.cycles),
                alloc_bytes_per_sec: points.iter().map(|p| p.alloc_bytes_per_sec).sum(),
                samples,
                gc_samples: delta[GC_SLOT],
                gc_share: (samples > 0).then(|| delta[GC_SLOT] as f64 / samples as f64),
            });
        }
        self.closed_at = at;
        while self.next_close <= at {
            self.next_close += self.interval;
        }
        delta.iter().sum()
    }

    /// Closes the last, partial interval and hands over what was collected.
    pub fn finish(mut self) -> Outcome {
        let at = self.started.elapsed().as_secs_f64();
        if self.vms.iter().any(|v| v.heap.last.is_some()) && at > self.closed_at {
            self.close(at);
        }
        for vm in &self.vms {
            if vm.heap.totals.readings == 0 {
                self.notes.push(format!("process {}: its heap could not be read", vm.pid));
            }
        }
        Outcome {
            start_unix_secs: self.start_unix_secs,
            interval_secs: self.interval,
            by_vm_state: by_vm_state(&self.counted),
            vms: self
                .vms
                .into_iter()
                .map(|v| VmResult {
                    pid: v.pid,
                    global_state: format!("{:#x}", v.g),
                    cycles_hook: v.watch.as_ref().map(|w| w.hook),
                    totals: v.heap.totals,
                    series: v.series,
                })
                .collect(),
            series: self.series,
            notes: self.notes,
        }
    }
}

impl Source for Poller {
    fn tick(&mut self) -> Result<u64> {
        let at = self.started.elapsed().as_secs_f64();
        for vm in self.vms.iter_mut().filter(|v| v.live) {
            vm.poll(&self.layout, at);
        }
        if let Some(h) = self.heap_now() {
            self.range = Some(self.range.map_or((h, h), |(lo, hi)| (lo.min(h), hi.max(h))));
        }
        Ok(if at >= self.next_close { self.close(at) } else { 0 })
    }

    fn status(&self, records: u64) -> String {
        let cycles: u64 = self.vms.iter().map(|v| v.heap.totals.cycles).sum();
        let mb = self.heap_now().unwrap_or(0) as f64 / 1048576.0;
        format!("heap {mb:<8.1} MB  cycles {cycles:<6} samples {records:<8}")
    }

    fn lost(&self) -> u64 {
        0
    }

    fn joined(&mut self, p: &Process, g: Option<u64>) -> Result<()> {
        match g.and_then(|g| Vm::open(p.pid, g, self.layout, self.watch.as_ref(), &mut self.notes)) {
            Some(mut vm) => {
                vm.first = vm.account(&self.layout, &self.cycles);
                vm.last = vm.first;
                self.vms.push(vm);
            }
            None => {
                let note = format!("process {}: its Lua VM was not found in its memory; its heap is not in the figures", p.pid);
                eprintln!("ljprobe: note: {note}");
                self.notes.push(note);
            }
        }
        Ok(())
    }

    fn left(&mut self, pid: u32) {
        for vm in self.vms.iter_mut().filter(|v| v.pid == pid) {
            vm.live = false;
        }
    }
}

/// Samples in which the kernel found a VM: the GC share's denominator.
fn in_vm(counts: &[u64]) -> u64 {
    counts.iter().enumerate().filter(|&(i, _)| i != VMSTATE_NO_VM as usize).map(|(_, n)| n).sum()
}

/// The slots under the names `cpu`'s JSON uses for VM states.
fn by_vm_state(counts: &[u64; SLOTS]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (i, &n) in counts.iter().enumerate() {
        let i = i as u32;
        let name = match i {
            VMSTATE_TRACE => "trace",
            VMSTATE_OUTSIDE_LUA => "outside-lua",
            VMSTATE_NO_VM => "no-vm",
            _ => match i - VMSTATE_FIRST_VMST {
                0 => "interpreter",
                1 => "c",
                2 => "gc",
                3 => "trace-exit",
                _ => "jit-compiler",
            },
        };
        *m.entry(name.to_string()).or_default() += n;
    }
    m
}
