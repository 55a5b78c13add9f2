//! The run: per target VM, two hardware watchpoints on its `jit_State`
//! (`probes-ebpf/src/jit.rs` says what each catches), and the CPU samples'
//! Lua stacks and VM states; both rings drained at each tick.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::RawFd,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use ljprobe_flamegraph::Frame;
use ljprobe_common::{jit::JitAbort, CpuSample};

use super::analysis::{self, AbortEvent, ExitPlace, Findings};
use crate::{
    bpf::{self, perf_link::Link},
    collect::{self, Source},
    lua::{
        jit_state::{self, JitStateLayout, TraceInfo, JIT_OPENRESTY_21_GC64},
        ProcMem, Resolver, OPENRESTY_21_GC64,
    },
    stacks::{culprit_frame, state_key, StackBuilder},
    target::Process,
};

/// One target's VM and what was read of it when it joined.
pub struct Vm {
    pub pid: u32,
    pub g: u64,
    pub mem: ProcMem,
    /// Closed at the end of the run (dropped).
    watches: Vec<Link>,
    pub jit_on: Option<bool>,
    pub traces_at_start: Vec<TraceInfo>,
}

/// The two watch programs' descriptors, for VMs that join later too.
#[derive(Clone, Copy)]
pub struct Programs {
    pub state: RawFd,
    pub exit: RawFd,
}

impl Vm {
    /// The VM of `pid` at `g`; a watch that cannot be set goes to `notes`
    /// (the rest of the report still comes).
    pub fn open(pid: u32, g: u64, jl: &JitStateLayout, programs: Programs, notes: &mut Vec<String>) -> Result<Vm> {
        let mem = ProcMem::open(pid)?;
        let l = &OPENRESTY_21_GC64;
        let jit_on = jit_state::enabled(&mem, l, jl, g);
        let traces_at_start = jit_state::traces(&mem, l, jl, g);
        
        let j = g + l.trace.g2j;
        let mut watches = Vec::new();
        // The VM runs on the thread that created it: the main thread for nginx
        // workers and the luajit interpreter alike.
        for (what, field, prog) in
            [("aborts", jl.probe.j_state, programs.state), ("trace exits", jl.probe.j_parent, programs.exit)]
        {
            match Link::write_watch(pid, j + u64::from(field), prog) {
                Ok(link) => watches.push(link),
                Err(e) => notes.push(format!("process {pid}: {e:#}; {what} are not counted")),
            }
        }
        Ok(Vm { pid, g, mem, watches, jit_on, traces_at_start })
    }

    /// Whether its memory can still be read (the process lives).
    pub fn mem_alive(&self) -> bool {
        jit_state::enabled(&self.mem, &OPENRESTY_21_GC64, &JIT_OPENRESTY_21_GC64, self.g).is_some()
    }

    pub fn watched(&self) -> bool {
        self.watches.len() == 2
    }
}

/// How often each VM's memory is looked at for what only lives there
/// (traces, penalty cache, blacklisted bytecode, where exits go): a process
/// that exits keeps what was seen last.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub struct Collector {
    pub builder: StackBuilder,
    samples: RingBuf<MapData>,
    aborts: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    exits: BpfHashMap<MapData, u64, u64>,
    /// Samples by their innermost Lua function, then by VM state.
    pub by_function: HashMap<Frame, BTreeMap<String, u64>>,
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
    layout: JitStateLayout,
    last_look: Option<Instant>,
    pub notes: Vec<String>,
}

impl Collector {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        builder: StackBuilder,
        samples: RingBuf<MapData>,
        aborts: RingBuf<MapData>,
        lost: PerCpuArray<MapData, u64>,
        exits: BpfHashMap<MapData, u64, u64>,
        vms: Vec<Vm>,
        programs: Programs,
        layout: JitStateLayout,
        notes: Vec<String>,
    ) -> Collector {
        let res = vms.iter().filter_map(|v| Some((v.pid, Resolver::new(ProcMem::open(v.pid).ok()?)))).collect();
        Collector {
            builder,
            samples,
            aborts,
            lost,
            exits,
            by_function: HashMap::new(),
            funcs: HashMap::new(),
            abort_protos: HashMap::new(),
            events: Vec::new(),
            findings: HashMap::new(),
            exit_places: HashMap::new(),
            exit_counts: Vec::new(),
            res,
            vms,
            programs,
            layout,
            last_look: None,
            notes,
        }
    }

    /// Lost records: [samples, aborts, exits not counted].
    pub fn lost_counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| bpf::per_cpu_total(&self.lost, i))
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

    /// Reads what lives only in the VMs' memory; also once more at the end.
    pub fn look(&mut self) {
        self.last_look = Some(Instant::now());
        let none = HashSet::new();
        for vm in &self.vms {
            let Some(r) = self.res.get_mut(&vm.pid) else { continue };
            let protos = self.abort_protos.get(&vm.pid).unwrap_or(&none);
            if let Some(f) = analysis::findings(vm, &self.layout, r, self.funcs.get(&vm.pid), protos) {
                self.findings.insert(vm.pid, f);
            }
        }
        self.exit_counts = self.exits.iter().filter_map(Result::ok).collect();
        for &(key, _) in &self.exit_counts {
            if self.exit_places.contains_key(&key) {
                continue;
            }
            let pid = (key >> 32) as u32;
            let (Some(vm), Some(r)) = (self.vms.iter().find(|v| v.pid == pid), self.res.get_mut(&pid)) else { continue };
            if !vm.mem_alive() {
                continue;
            }
            let place = analysis::exit_place(vm, &self.layout, r, ((key >> 16) & 0xffff) as u32, (key & 0xffff) as u32);
            self.exit_places.insert(key, place);
        }
    }
}

impl Source for Collector {
    fn tick(&mut self) -> Result<u64> {
        let mut samples = Vec::new();
        let n = collect::drain(&mut self.samples, &mut |b: &[u8]| samples.push(b.to_vec()));
        for s in &samples {
            self.sample(s);
        }
        let mut aborts = Vec::new();
        collect::drain(&mut self.aborts, &mut |b: &[u8]| {
            if b.len() >= std::mem::size_of::<JitAbort>() {
                // SAFETY: as in `sample`.
                aborts.push(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const JitAbort) });
            }
        });
        for a in &aborts {
            self.abort(a);
        }
        if self.last_look.is_none_or(|t| t.elapsed() >= LOOK_EVERY) {
            self.look();
        }
        Ok(n)
    }

    fn status(&self, records: u64) -> String {
        format!("samples {records:<8} aborts {:<6}", self.events.len())
    }

    fn lost(&self) -> u64 {
        bpf::per_cpu_total(&self.lost, 0)
    }

    fn joined(&mut self, p: &Process, g: Option<u64>) -> Result<()> {
        self.builder.add_process(p)?;
        match g {
            Some(g) => {
                let vm = Vm::open(p.pid, g, &self.layout, self.programs, &mut self.notes)?;
                self.res.insert(p.pid, Resolver::new(ProcMem::open(p.pid)?));
                self.vms.push(vm);
            }
            None => self.notes.push(format!("process {}: its Lua VM was not found; its aborts and exits are not counted", p.pid)),
        }
        Ok(())
    }
}
