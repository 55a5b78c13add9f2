//! The run: per target VM, two hardware watchpoints on its `jit_State`
//! (`probes-ebpf/src/jit.rs` says what each catches), and the CPU samples'
//! Lua stacks and VM states; both rings drained at each tick.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::RawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use ljprobe_flamegraph::{Frame, VmState};
use ljprobe_common::{jit::JitAbort, CpuSample, STACK_NOT_IN_LUA, STACK_NO_VM};

use super::analysis::{self, AbortEvent, ExitPlace, Findings};
use crate::{
    bpf::{
        self,
        perf_link::{Link, Site},
    },
    collect::{self, Source},
    lua::{
        jit_state::{self, TraceInfo},
        ProcMem, Resolver,
    },
    stacks::{culprit_frame, state_key, StackBuilder},
    target::{known_builds::BuildLayout, Process},
};

/// One target's VM and what was read of it when it joined.
pub struct Vm {
    pub pid: u32,
    pub g: u64,
    /// The build the VM is read as.
    pub build: &'static BuildLayout,
    pub mem: ProcMem,
    /// Closed at the end of the run (dropped).
    state_watch: Option<Link>,
    exit_watch: Option<Link>,
    pub jit_on: Option<bool>,
    pub traces_at_start: Vec<TraceInfo>,
    pub budget: Budget,
    /// Where a uprobe would see its requests end (nginx), and the uprobe
    /// once it is there. It costs every request a trap (about 1.5 us here,
    /// 10% of the gateway's /health at 70k requests a second), so by default
    /// it is put in place only once the process takes `REQUEST_EXITS` exits
    /// in a second: before that, nearly every request has none.
    request_site: Option<Site>,
    request_link: Option<Link>,
}

/// Exits in one second from which a process's requests are followed
/// (unless `--per-request` follows them from the start).
pub const REQUEST_EXITS: u64 = 100;

/// The programs, for VMs that join later too.
pub struct Programs {
    pub state: RawFd,
    pub exit: RawFd,
    /// `jit_request`, when the targets are nginx.
    pub request: Option<RequestProbe>,
}

/// Where each request of an nginx worker ends (`ngx_http_free_request` in
/// the program every worker runs, found once), and the uprobe program and
/// PMU that follow it there.
pub struct RequestProbe {
    pub pmu: u32,
    pub prog: RawFd,
    pub path: PathBuf,
    pub offset: u64,
}

/// Keeps one process's exit watch within `--max-exits` a second: once a
/// second's budget is taken, the watch is off until the next second. The
/// counts are then those of the watched time, which is kept.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Exits a second to watch at most (0: all).
    max: u64,
    total: u64,
    window_start: Instant,
    window_exits: u64,
    on_since: Option<Instant>,
    watched: Duration,
    /// The period number in the kernel's `GENS`: even while on.
    pub gen: u64,
    pub capped_windows: u64,
    /// The most exits taken in one second so far.
    pub busiest: u64,
}

impl Budget {
    fn new(max: u64) -> Budget {
        let now = Instant::now();
        Budget { max, total: 0, window_start: now, window_exits: 0, on_since: Some(now), watched: Duration::ZERO, gen: 0, capped_windows: 0, busiest: 0 }
    }

    /// The watched time so far.
    pub fn watched(&self) -> Duration {
        self.watched + self.on_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Takes in the process's exit total; says whether to turn the watch
    /// off (Some(false)) or on (Some(true)).
    fn tick(&mut self, total: u64, now: Instant) -> Option<bool> {
        self.window_exits += total.saturating_sub(self.total);
        self.total = total;
        self.busiest = self.busiest.max(self.window_exits);
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_exits = 0;
            if self.on_since.is_none() {
                self.on_since = Some(now);
                self.gen += 1;
                return Some(true);
            }
        }
        if self.max > 0 && self.window_exits >= self.max {
            if let Some(since) = self.on_since.take() {
                self.watched += now.duration_since(since);
                self.gen += 1;
                self.capped_windows += 1;
                return Some(false);
            }
        }
        None
    }
}

impl Vm {
    /// The VM of `pid` at `g`; a watch that cannot be set goes to `notes`
    /// (the rest of the report still comes).
    pub fn open(
        p: &Process,
        g: u64,
        build: &'static BuildLayout,
        programs: &Programs,
        max_exits: u64,
        notes: &mut Vec<String>,
    ) -> Result<Vm> {
        let pid = p.pid;
        let mem = ProcMem::open(pid)?;
        let (l, jl) = (&build.obj, &build.jit);
        if !jit_state::fits(&mem, l, jl, g) {
            anyhow::bail!(
                "the JIT state of process {pid}'s Lua VM does not read as the {} layout keeps it ({}): see docs/supported-luajit.md",
                build.name,
                build.describe
            );
        }
        let jit_on = jit_state::enabled(&mem, l, jl, g);
        let traces_at_start = jit_state::traces(&mem, l, jl, g);
        let j = g + l.trace.g2j;
        log::debug!("process {pid}: global_State {g:#x}, jit_State {j:#x}");
        // The VM runs on the thread that created it: the main thread for nginx
        // workers and the luajit interpreter alike.
        let mut watch = |what: &str, field: u32, prog: RawFd| match Link::write_watch(pid, j + u64::from(field), prog) {
            Ok(link) => Some(link),
            Err(e) => {
                notes.push(format!("process {pid}: {e:#}; {what} are not counted"));
                None
            }
        };
        let state_watch = watch("aborts", jl.probe.j_state, programs.state);
        let exit_watch = watch("trace exits", jl.probe.j_parent, programs.exit);
        let request_site = programs.request.as_ref().and_then(|r| match Site::new(pid, &r.path, r.offset) {
            Ok(site) => Some(site),
            Err(e) => {
                notes.push(format!("process {pid}: exits per request are not counted: {e:#}"));
                None
            }
        });
        Ok(Vm {
            pid,
            g,
            build,
            mem,
            state_watch,
            exit_watch,
            jit_on,
            traces_at_start,
            budget: Budget::new(max_exits),
            request_site,
            request_link: None,
        })
    }

    /// Whether its memory can still be read (the process lives).
    pub fn mem_alive(&self) -> bool {
        jit_state::enabled(&self.mem, &self.build.obj, &self.build.jit, self.g).is_some()
    }

    pub fn watches_set(&self) -> bool {
        self.state_watch.is_some() && self.exit_watch.is_some()
    }

    pub fn requests_followed(&self) -> bool {
        self.request_link.is_some()
    }
}

/// How often each VM's memory is looked at for what only lives there
/// (traces, penalty cache, blacklisted bytecode, where exits go): a process
/// that exits keeps what was seen last.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The maps the run reads while it goes.
pub struct KernelMaps {
    samples: RingBuf<MapData>,
    aborts: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    exits: BpfHashMap<MapData, u64, u64>,
    totals: BpfHashMap<MapData, u32, u64>,
    gens: BpfHashMap<MapData, u32, u64>,
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelMaps> {
        let mut take = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map missing"));
        Ok(KernelMaps {
            samples: RingBuf::try_from(take("SAMPLES")?)?,
            aborts: RingBuf::try_from(take("ABORTS")?)?,
            lost: PerCpuArray::try_from(take("LOST")?)?,
            exits: BpfHashMap::try_from(take("EXITS")?)?,
            totals: BpfHashMap::try_from(take("EXIT_TOTALS")?)?,
            gens: BpfHashMap::try_from(take("GENS")?)?,
        })
    }
}

/// What the run was asked for.
pub struct Settings {
    /// The targets' build, for workers that join too.
    pub build: &'static BuildLayout,
    /// `--max-exits`, `--per-request`.
    pub max_exits: u64,
    pub per_request: bool,
}

pub struct Collector {
    pub builder: StackBuilder,
    maps: KernelMaps,
    settings: Settings,
    /// Samples by their innermost Lua function, then by VM state.
    pub by_function: HashMap<Frame, BTreeMap<String, u64>>,
    /// Samples by VM state, the JIT compiler's three apart.
    pub by_state: BTreeMap<String, u64>,
    /// Every Lua function (GCfunc) seen on a sampled stack, per process.
    funcs: HashMap<u32, HashSet<u64>>,
    /// Protos aborts started or stopped in, per process.
    abort_protos: HashMap<u32, HashSet<u64>>,
    pub events: Vec<AbortEvent>,
    pub findings: HashMap<u32, Findings>,
    pub exit_places: HashMap<u64, Option<ExitPlace>>,
    /// Exit counts as last read.
    pub exit_counts: Vec<(u64, u64)>,
    res: HashMap<u32, Resolver<ProcMem>>,
    pub vms: Vec<Vm>,
    programs: Programs,
    last_look: Option<Instant>,
    pub notes: Vec<String>,
}

impl Collector {
    pub fn new(builder: StackBuilder, mut maps: KernelMaps, vms: Vec<Vm>, programs: Programs, settings: Settings, notes: Vec<String>) -> Collector {
        // Watching from the start: period 0.
        for vm in &vms {
            let _ = maps.gens.insert(vm.pid, vm.budget.gen, 0);
        }
        let res = vms
            .iter()
            .filter_map(|v| Some((v.pid, Resolver::with_layout(ProcMem::open(v.pid).ok()?, v.build.obj))))
            .collect();
        Collector {
            builder,
            maps,
            settings,
            by_function: HashMap::new(),
            by_state: BTreeMap::new(),
            funcs: HashMap::new(),
            abort_protos: HashMap::new(),
            events: Vec::new(),
            findings: HashMap::new(),
            exit_places: HashMap::new(),
            exit_counts: Vec::new(),
            res,
            vms,
            programs,
            last_look: None,
            notes,
        }
    }

    /// Lost records: [samples, aborts, exits not counted].
    pub fn lost_counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| bpf::per_cpu_total(&self.maps.lost, i))
    }

    fn sample(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<CpuSample>() {
            return;
        }
        // SAFETY: the kernel wrote a whole record; read_unaligned copes with
        // the ring buffer's 8-byte alignment.
        let s: CpuSample = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CpuSample) };
        let stack = self.builder.build(&s, None, None);
        self.builder.add_weighted(&s, &stack, 1);
        let state = state_key(s.vmstate, s.flags);
        let fine = match VmState::from_raw(s.vmstate) {
            _ if s.flags & (STACK_NO_VM | STACK_NOT_IN_LUA) != 0 => state.clone(),
            VmState::Recording => "jit-recorder".into(),
            VmState::Optimizing => "jit-optimizer".into(),
            VmState::Assembling => "jit-assembler".into(),
            _ => state.clone(),
        };
        *self.by_state.entry(fine).or_default() += 1;
        let function = culprit_frame(&stack).function();
        if matches!(function, Frame::Lua { .. }) {
            *self.by_function.entry(function).or_default().entry(state).or_default() += 1;
        }
        let n = (s.nframes as usize).min(s.frames.len());
        let funcs = self.funcs.entry(s.tgid).or_default();
        // A bounded set: a few thousand functions are hot at most.
        if funcs.len() < 1 << 16 {
            funcs.extend(s.frames[..n].iter().map(|f| f.func).filter(|&f| f != 0));
        }
    }

    fn abort(&mut self, a: &JitAbort) {
        let Some(r) = self.res.get_mut(&a.tgid) else { return };
        let e = analysis::abort_event(r, a);
        self.abort_protos.entry(a.tgid).or_default().extend(e.protos);
        self.events.push(e);
    }

    /// Keeps each exit watch in its budget, and puts the request uprobe in
    /// place in a process that takes exits.
    fn budget(&mut self) {
        let now = Instant::now();
        for vm in &mut self.vms {
            let total = self.maps.totals.get(&vm.pid, 0).unwrap_or(0);
            if let Some(on) = vm.budget.tick(total, now) {
                if let Some(w) = &vm.exit_watch {
                    if let Err(e) = w.set_enabled(on) {
                        log::debug!("process {}: exit watch on={on}: {e}", vm.pid);
                    }
                }
                let _ = self.maps.gens.insert(vm.pid, vm.budget.gen, 0);
            }
            if (self.settings.per_request || vm.budget.busiest >= REQUEST_EXITS) && vm.request_link.is_none() {
                if let (Some(site), Some(r)) = (&vm.request_site, &self.programs.request) {
                    match Link::uprobe(r.pmu, site, r.prog) {
                        Ok(link) => vm.request_link = Some(link),
                        Err(e) => {
                            self.notes.push(format!("process {}: exits per request are not counted: {e:#}", vm.pid));
                            vm.request_site = None;
                        }
                    }
                }
            }
        }
    }

    /// Reads what lives only in the VMs' memory; also once more at the end.
    pub fn look(&mut self) {
        self.last_look = Some(Instant::now());
        let none = HashSet::new();
        for vm in &self.vms {
            let Some(r) = self.res.get_mut(&vm.pid) else { continue };
            let protos = self.abort_protos.get(&vm.pid).unwrap_or(&none);
            if let Some(f) = analysis::findings(vm, r, self.funcs.get(&vm.pid), protos) {
                self.findings.insert(vm.pid, f);
            }
        }
        self.exit_counts = self.maps.exits.iter().filter_map(Result::ok).collect();
        for &(key, _) in &self.exit_counts {
            if self.exit_places.contains_key(&key) {
                continue;
            }
            let pid = (key >> 32) as u32;
            let (Some(vm), Some(r)) = (self.vms.iter().find(|v| v.pid == pid), self.res.get_mut(&pid)) else { continue };
            if !vm.mem_alive() {
                continue;
            }
            let place = analysis::exit_place(vm, r, ((key >> 16) & 0xffff) as u32, (key & 0xffff) as u32);
            self.exit_places.insert(key, place);
        }
    }
}

impl Source for Collector {
    fn tick(&mut self) -> Result<u64> {
        let mut samples = Vec::new();
        let n = collect::drain(&mut self.maps.samples, &mut |b: &[u8]| samples.push(b.to_vec()));
        for s in &samples {
            self.sample(s);
        }
        let mut aborts = Vec::new();
        collect::drain(&mut self.maps.aborts, &mut |b: &[u8]| {
            if b.len() >= std::mem::size_of::<JitAbort>() {
                // SAFETY: as in `sample`.
                aborts.push(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const JitAbort) });
            }
        });
        for a in &aborts {
            self.abort(a);
        }
        self.budget();
        if self.last_look.is_none_or(|t| t.elapsed() >= LOOK_EVERY) {
            self.look();
        }
        Ok(n)
    }

    fn status(&self, records: u64) -> String {
        format!("samples {records:<8} aborts {:<6}", self.events.len())
    }

    fn lost(&self) -> u64 {
        bpf::per_cpu_total(&self.maps.lost, 0)
    }

    fn joined(&mut self, p: &Process, g: Option<u64>) -> Result<()> {
        self.builder.add_process(p)?;
        match g {
            Some(g) => {
                // A worker that cannot be watched is said, not fatal: the others go on.
                match Vm::open(p, g, self.settings.build, &self.programs, self.settings.max_exits, &mut self.notes) {
                    Ok(vm) => {
                        let _ = self.maps.gens.insert(vm.pid, vm.budget.gen, 0);
                        self.res.insert(p.pid, Resolver::with_layout(ProcMem::open(p.pid)?, self.settings.build.obj));
                        self.vms.push(vm);
                    }
                    Err(e) => self.notes.push(format!("{e:#}")),
                }
            }
            None => self.notes.push(format!("process {}: its Lua VM was not found; its aborts and exits are not counted", p.pid)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_watch_goes_off_at_its_budget_and_on_again_the_next_second() {
        let mut b = Budget::new(100);
        let t0 = b.window_start;
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(b.tick(50, ms(100)), None);
        assert_eq!(b.tick(120, ms(200)), Some(false), "off once 100 are taken");
        assert_eq!((b.gen, b.capped_windows), (1, 1));
        assert_eq!(b.tick(120, ms(500)), None, "stays off for the rest of the second");
        assert_eq!(b.tick(120, ms(1000)), Some(true), "on again the next second");
        assert_eq!(b.gen, 2, "an even period: watched");
        assert_eq!(b.watched, Duration::from_millis(200), "watched until it went off");
        assert_eq!(b.busiest, 120);
        let mut all = Budget::new(0);
        assert_eq!(all.tick(1_000_000, ms(100)), None, "0 watches every exit");
    }
}
