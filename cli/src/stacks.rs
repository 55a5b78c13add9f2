//! From the kernel's raw samples to the shared stack model: Lua frames named from
//! the target's memory with the VM state on top, native frames unwound with CFI,
//! or both spliced into one mixed stack. Truncation is always made visible.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use ljprobe_common::{
    CpuSample, CpuSampleNative, LuaFrameRaw, NativeStack, STACK_BROKEN, STACK_NOT_IN_LUA, STACK_NO_VM,
    STACK_TRUNCATED,
};
use ljprobe_flamegraph::{Folded, Frame, VmState};

use crate::{
    kallsyms::Kallsyms,
    lua::{Found, LuaFrame, ObjLayout, Pc, ProcMem, Resolver},
    native::{StackCopy, Symbolizer, Unwinder},
    target::{aim::Aim, Process},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// Lua functions (and VM states), as `lj-lua-stacks` showed them.
    Lua,
    /// Native frames (nginx, LuaJIT, libc), unwound with CFI, as `sample-bt` showed them.
    C,
    /// Native frames with the Lua frames spliced in where C entered the VM.
    Mixed,
}

impl StackKind {
    pub fn title(self) -> &'static str {
        match self {
            StackKind::Lua => "Lua-level",
            StackKind::C => "C-level",
            StackKind::Mixed => "mixed Lua and C",
        }
    }
}

/// Where a sample inside a trace stands: see `StackBuilder::placed_in_trace`.
struct Placed {
    /// Inlined frames, innermost first.
    frames: Vec<LuaFrameRaw>,
    pc: Option<Pc>,
    /// The C function the trace called, when the sample is inside one.
    callee: Option<u64>,
}

/// Which Lua frames carry the line they were executing (`--lines`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Lines {
    /// Functions only, as without `--lines`.
    #[default]
    None,
    /// The innermost Lua frame: where the time is spent.
    Innermost,
    /// Every Lua frame: each caller at its call.
    All,
}

/// Native frames unwound per sample at most; deeper stacks get a marker.
const MAX_NATIVE_FRAMES: usize = 128;

/// What it takes to unwind one process's native samples.
struct NativeView {
    unwinder: Unwinder,
    /// Executable ranges of the LuaJIT object: where mixed stacks splice Lua in.
    luajit: Vec<(u64, u64)>,
    /// Executable ranges of every mapped file; JIT traces live outside them.
    files: Vec<(u64, u64)>,
}

/// Where the interpreter keeps the caller's rbp and its return address, from the
/// rsp it runs with (`L->cframe`), and how far that frame reaches (vm_x64.dasc,
/// x64 POSIX `saveregs`: push rbp, rbx, r15, r14; sub rsp, 5*8).
const CFRAME_SAVED_RBP: usize = 8 * 8;
const CFRAME_RETURN: usize = 9 * 8;
const CFRAME_END: usize = 10 * 8;

fn within(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges.iter().any(|&(s, e)| addr >= s && addr < e)
}

pub struct StackBuilder {
    kind: StackKind,
    per_worker: bool,
    /// Which frames keep their line; set with `with_lines`.
    lines: Lines,
    luajit_path: Option<String>,
    /// The targets' LuaJIT build, for reading their Lua objects.
    layout: ObjLayout,
    resolvers: HashMap<u32, Resolver<ProcMem>>,
    /// Names native frames and the C functions Lua calls.
    symbolizers: HashMap<u32, Symbolizer>,
    native: HashMap<u32, NativeView>,
    kernel: Option<Kallsyms>,
    pub folded: Folded,
    pub by_vm_state: BTreeMap<String, u64>,
    /// Stacks taken inside a trace, and those of them whose inlined frames
    /// stayed ambiguous (see `Inlined::ambiguous`): charged to the frames
    /// that are certain.
    pub in_traces: u64,
    pub inlined_ambiguous: u64,
}

impl StackBuilder {
    /// Names the stacks of `aim`'s processes. `per_worker` roots each stack in
    /// its process, for an nginx master's workers.
    pub fn new(kind: StackKind, kernel: bool, per_worker: bool, aim: &Aim) -> Result<StackBuilder> {
        let kernel = if kernel { Some(Kallsyms::load()?) } else { None };
        let mut builder = StackBuilder {
            kind,
            per_worker,
            lines: Lines::None,
            luajit_path: aim.luajit_path().map(str::to_string),
            layout: aim.build.obj,
            resolvers: HashMap::new(),
            symbolizers: HashMap::new(),
            native: HashMap::new(),
            kernel,
            folded: Folded::default(),
            by_vm_state: BTreeMap::new(),
            in_traces: 0,
            inlined_ambiguous: 0,
        };
        for p in &aim.processes {
            builder.add_process(p)?;
        }
        Ok(builder)
    }

    /// For the JSON summary: how many stacks were taken inside traces, and in
    /// how many of them the inlined frames stayed ambiguous.
    pub fn inlined_summary(&self) -> serde_json::Value {
        serde_json::json!({ "stacks_in_traces": self.in_traces, "ambiguous": self.inlined_ambiguous })
    }

    /// Lua frames carry the line they were executing, as `lines` says.
    pub fn with_lines(mut self, lines: Lines) -> StackBuilder {
        self.lines = lines;
        self
    }

    /// Gets ready to name the stacks of `p`: its memory for Lua frames, its
    /// symbols and unwind tables for native ones. Also for a worker that joins
    /// mid-run; a PID seen before (reused) starts afresh.
    pub fn add_process(&mut self, p: &Process) -> Result<()> {
        self.resolvers.insert(p.pid, Resolver::with_layout(ProcMem::open(p.pid)?, self.layout));
        self.symbolizers.insert(p.pid, Symbolizer::new(p.pid));
        if self.kind != StackKind::Lua {
            let maps = p.maps()?;
            let exec = maps.iter().filter(|m| m.executable() && m.file().is_some());
            let files: Vec<(u64, u64)> = exec.clone().map(|m| (m.start, m.end)).collect();
            let luajit =
                exec.filter(|m| m.file() == self.luajit_path.as_deref()).map(|m| (m.start, m.end)).collect();
            let view = NativeView { unwinder: Unwinder::new(p.pid)?, luajit, files };
            self.native.insert(p.pid, view);
        }
        Ok(())
    }

    /// One record from the cpu program's ring buffer (`CpuSample`, or
    /// `CpuSampleNative` when native stacks were asked for), weight 1.
    pub fn add(&mut self, bytes: &[u8]) {
        let (s, native) = if bytes.len() >= std::mem::size_of::<CpuSampleNative>() {
            // SAFETY: the kernel wrote a whole record of this type; read_unaligned
            // copes with the ring buffer's 8-byte alignment.
            let r: CpuSampleNative = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CpuSampleNative) };
            (r.lua, Some(r.native))
        } else if bytes.len() >= std::mem::size_of::<CpuSample>() {
            // SAFETY: as above.
            (unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CpuSample) }, None)
        } else {
            return;
        };
        let stack = self.build(&s, native.as_ref(), None);
        self.add_weighted(&s, &stack, 1);
    }

    /// Adds a built stack with its weight, and counts it by VM state.
    pub fn add_weighted(&mut self, s: &CpuSample, stack: &[Frame], weight: u64) {
        *self.by_vm_state.entry(state_key(s.vmstate, s.flags)).or_default() += weight;
        self.folded.add(stack, weight);
    }

    /// The stack of one kernel record, root first, in the builder's kind:
    /// Lua-level, native (when `native` is there) or both spliced. `wait` goes
    /// between the user frames and the kernel's (what an off-CPU thread waited in).
    pub fn build(&mut self, s: &CpuSample, native: Option<&NativeStack>, wait: Option<Frame>) -> Vec<Frame> {
        let lua = self.lua_stack(s);
        let mut stack = match (self.kind, native) {
            (StackKind::Lua, _) | (_, None) => lua,
            (StackKind::C, Some(ns)) => self.native_stack(s.tgid, s.vmstate, ns).into_iter().map(|(f, _)| f).collect(),
            (StackKind::Mixed, Some(ns)) => {
                let native = self.native_stack(s.tgid, s.vmstate, ns);
                if s.flags & (STACK_NO_VM | STACK_NOT_IN_LUA) == 0 {
                    splice(native, lua)
                } else {
                    native.into_iter().map(|(f, _)| f).collect()
                }
            }
        };
        stack.extend(wait);
        if let Some(k) = &self.kernel {
            let n = (s.nkernel as usize).min(s.kernel.len());
            stack.extend(s.kernel[..n].iter().rev().map(|&a| Frame::Kernel(k.name(a))));
        }
        if self.per_worker {
            stack.insert(0, Frame::Vm(format!("[pid {}]", s.tgid)));
        }
        stack
    }

    /// Root first, each frame with whether it lies in LuaJIT's code.
    fn native_stack(&mut self, tgid: u32, vmstate: i32, ns: &NativeStack) -> Vec<(Frame, bool)> {
        let (Some(view), Some(symbolizer)) = (self.native.get_mut(&tgid), self.symbolizers.get_mut(&tgid)) else {
            return vec![];
        };
        let len = (ns.len as usize).min(ns.bytes.len());
        let copy = StackCopy { rip: ns.rip, rsp: ns.rsp, rbp: ns.rbp, stack: &ns.bytes[..len] };
        let mut addrs = view.unwinder.unwind(&copy, MAX_NATIVE_FRAMES);
        // JIT traces have no CFI: an unwind ending outside every mapped file ended
        // in one. The interpreter frame they run in tells where to go on.
        let mut jit_frame = None;
        let ended_in_jit = addrs.last().is_some_and(|&a| !within(&view.files, a));
        if let (true, Some(off)) = (ended_in_jit, ns.cframe.checked_sub(ns.rsp).map(|o| o as usize)) {
            if off + CFRAME_END <= len {
                let word = |at: usize| u64::from_le_bytes(copy.stack[off + at..off + at + 8].try_into().unwrap_or_default());
                let resume = StackCopy {
                    rip: word(CFRAME_RETURN),
                    rsp: ns.cframe + CFRAME_END as u64,
                    rbp: word(CFRAME_SAVED_RBP),
                    stack: &copy.stack[off + CFRAME_END..],
                };
                jit_frame = Some(addrs.len() - 1);
                let rest = view.unwinder.unwind(&resume, MAX_NATIVE_FRAMES.saturating_sub(addrs.len()));
                addrs.extend(rest);
            }
        }
        let names = symbolizer.names(&addrs, true);
        let jit = match VmState::from_raw(vmstate) {
            VmState::Trace(n) => Frame::Trace(n),
            _ => Frame::Native("[JIT code]".into()),
        };
        let mut frames: Vec<(Frame, bool)> = names
            .into_iter()
            .zip(addrs.iter())
            .enumerate()
            .map(|(i, (n, a))| match Some(i) == jit_frame {
                true => (jit.clone(), true),
                false => (Frame::Native(n), within(&view.luajit, *a)),
            })
            .rev()
            .collect();
        if addrs.len() >= MAX_NATIVE_FRAMES {
            frames.insert(0, (Frame::Vm("[truncated: deeper frames not unwound]".into()), false));
        }
        if frames.is_empty() {
            frames.push((Frame::Vm("[native stack not unwound]".into()), false));
        }
        frames
    }

    /// The Lua stack of a record, root first. Inside a JIT trace, the functions
    /// the trace inlined have no frames in memory; the trace's snapshot at the
    /// recorded address gives them back, on top of the walked frames.
    fn lua_stack(&mut self, s: &CpuSample) -> Vec<Frame> {
        let n = (s.nframes as usize).min(s.frames.len());
        let walked = &s.frames[..n];
        let placed = self.placed_in_trace(s, walked);
        let (inlined, innermost, callee) = match placed {
            Some(p) => (p.frames, p.pc, p.callee),
            // Where the innermost frame stands in the interpreter: its PC register.
            None => (Vec::new(), (s.pc != 0 && s.vmstate == !0).then_some(Pc::Past(s.pc)), None),
        };
        let raw: Vec<LuaFrameRaw> = inlined.into_iter().chain(walked.iter().copied()).collect();
        let mut stack = self.stack_at(s.tgid, s.vmstate, s.flags, &raw, innermost);
        if self.kind == StackKind::Lua {
            stack.extend(callee.and_then(|target| self.callee_frame(s.tgid, target)));
        }
        stack
    }

    /// Inside a trace: the Lua frames it inlined at the sampled place, where
    /// the innermost of them stands, and the C function it called when the
    /// sample is in one. An FFI call is placed by the walk between snapshots
    /// (`trace_call.rs`); anything else by the snapshots around the address.
    fn placed_in_trace(&mut self, s: &CpuSample, walked: &[LuaFrameRaw]) -> Option<Placed> {
        let traceno = u32::try_from(s.vmstate).ok()?;
        let addrs = &s.trace_addrs[..(s.ntrace_addrs as usize).min(s.trace_addrs.len())];
        if s.g == 0 || addrs.is_empty() || s.flags & (STACK_BROKEN | STACK_NO_VM | STACK_NOT_IN_LUA) != 0 {
            return None;
        }
        self.in_traces += 1;
        let r = self.resolvers.get_mut(&s.tgid)?;
        // `trace_pc` is the instruction pointer itself when the trace's own
        // code ran, else a return address into it: the sample is in a callee.
        let in_callee = s.trace_pc != 0 && s.trace_pc != addrs[0];
        let mut callee = None;
        if let (true, Some(root)) = (in_callee, walked.first()) {
            match r.ffi_call(s.g, traceno, s.trace_pc, root.func) {
                Found::Call(c) => {
                    return Some(Placed { frames: c.frames, pc: c.pc.map(Pc::At), callee: c.target });
                }
                Found::Ambiguous(target) => callee = target,
                Found::NotFfi => callee = crate::lua::call_target(r.memory(), s.trace_pc),
            }
        }
        let inlined = r.inlined_at(s.g, traceno, addrs)?;
        self.inlined_ambiguous += u64::from(inlined.ambiguous);
        Some(Placed { frames: inlined.frames, pc: inlined.pc.map(Pc::At), callee })
    }

    /// The C function at `target` as a frame, when it has a name (a function
    /// of LuaJIT's own without a symbol is the VM at work: no frame).
    fn callee_frame(&mut self, tgid: u32, target: u64) -> Option<Frame> {
        symbol(self.symbolizers.get_mut(&tgid)?, target).map(Frame::Native)
    }

    /// Root first, as folded stacks read; `innermost` is where the innermost
    /// frame stands, for `--lines`.
    fn stack_at(&mut self, tgid: u32, vmstate: i32, flags: u32, raw: &[LuaFrameRaw], innermost: Option<Pc>) -> Vec<Frame> {
        if flags & STACK_NO_VM != 0 {
            return vec![Frame::Vm("[no Lua VM found yet]".into())];
        }
        if flags & STACK_NOT_IN_LUA != 0 {
            return vec![Frame::Vm("[C: no Lua running]".into())];
        }
        let resolved = match self.resolvers.get_mut(&tgid) {
            Some(r) if self.lines != Lines::None => r.resolve_at(raw, innermost),
            Some(r) => r.resolve(raw),
            None => Vec::new(),
        };
        let mut symbolizer = self.symbolizers.get_mut(&tgid);
        let mut stack: Vec<Frame> = Vec::with_capacity(resolved.len() + 2);
        if flags & STACK_TRUNCATED != 0 {
            stack.push(Frame::Vm("[truncated: deeper frames not walked]".into()));
        } else if flags & STACK_BROKEN != 0 {
            stack.push(Frame::Vm("[unreadable frames below]".into()));
        }
        let mut to_frame = |f| to_frame(f, symbolizer.as_deref_mut());
        let innermost_lua = resolved.iter().position(|f| matches!(f, LuaFrame::Lua { .. }));
        let lines = self.lines;
        let keep_line = |i: usize| match lines {
            Lines::None => false,
            Lines::Innermost => Some(i) == innermost_lua,
            Lines::All => true,
        };
        let resolved: Vec<LuaFrame> = resolved
            .into_iter()
            .enumerate()
            .map(|(i, f)| match f {
                LuaFrame::Lua { name, file, line, at } => LuaFrame::Lua { name, file, line, at: at.filter(|_| keep_line(i)) },
                other => other,
            })
            .collect();
        stack.extend(resolved.into_iter().rev().map(&mut to_frame));
        let state = VmState::from_raw(vmstate);
        match state {
            VmState::Interpreter => {}
            VmState::C if matches!(stack.last(), Some(Frame::Native(_))) => {}
            _ => stack.push(match state {
                VmState::Trace(n) => Frame::Trace(n),
                other => Frame::Vm(other.label()),
            }),
        }
        if stack.is_empty() {
            stack.push(Frame::Vm(state.label()));
        }
        stack
    }
}

/// The symbol of the C function at `addr`; None for the symbolizer's
/// fallbacks (`object+0x1f`, `[...]`), which name no function.
fn symbol(symbolizer: &mut Symbolizer, addr: u64) -> Option<String> {
    symbolizer.names(&[addr], true).pop().filter(|n| !n.contains("+0x") && !n.starts_with('['))
}

fn to_frame(f: LuaFrame, symbolizer: Option<&mut Symbolizer>) -> Frame {
    match f {
        LuaFrame::Lua { name, file, line, at } => Frame::Lua { name, file, line, at },
        // The symbol says which C function it is; the call-site name only how Lua
        // reached it.
        LuaFrame::C { addr, name } => {
            let symbol = symbolizer.and_then(|s| symbol(s, addr));
            Frame::Native(symbol.or(name).unwrap_or_else(|| format!("C function {addr:#x}")))
        }
        LuaFrame::Builtin { ffid, name } => Frame::Native(match name {
            Some(n) => format!("{n} [builtin]"),
            None => format!("builtin#{ffid}"),
        }),
    }
}

/// Why a thread was off the CPU, for the top of its stack: waiting for a CPU
/// after preemption, or the system call it blocked in (`syscall` < 0: none).
pub fn wait_frame(syscall: i64, runnable: bool) -> Frame {
    if runnable {
        return Frame::Wait("[runnable: waiting for a CPU]".into());
    }
    match usize::try_from(syscall).ok().and_then(syscalls::Sysno::new) {
        Some(sys) => Frame::Wait(format!("{} (syscall)", sys.name())),
        None if syscall >= 0 => Frame::Wait(format!("syscall {syscall}")),
        None => Frame::Wait("[off-CPU outside a syscall]".into()),
    }
}

pub fn state_key(vmstate: i32, flags: u32) -> String {
    if flags & STACK_NO_VM != 0 {
        return "no-vm".into();
    }
    if flags & STACK_NOT_IN_LUA != 0 {
        return "outside-lua".into();
    }
    match VmState::from_raw(vmstate) {
        VmState::Interpreter => "interpreter",
        VmState::C => "c",
        VmState::Gc => "gc",
        VmState::TraceExit => "trace-exit",
        VmState::Recording | VmState::Optimizing | VmState::Assembling => "jit-compiler",
        VmState::Trace(_) => "trace",
        VmState::Unknown(_) => "unknown",
    }
    .into()
}

/// A mixed stack, root first: the host's native frames up to where it entered
/// LuaJIT, then the Lua frames (with their VM-state top), then the native frames
/// Lua called into (C functions, libc). LuaJIT's own frames in between are the
/// interpreter running the Lua frames, so they are replaced by them.
fn splice(native: Vec<(Frame, bool)>, lua: Vec<Frame>) -> Vec<Frame> {
    let first = native.iter().position(|(_, lj)| *lj);
    let last = native.iter().rposition(|(_, lj)| *lj);
    let (Some(first), Some(last)) = (first, last) else {
        // The unwind never reached LuaJIT (cut short): keep both, Lua on top.
        return native.into_iter().map(|(f, _)| f).chain(lua).collect();
    };
    let mut out: Vec<Frame> = native[..first].iter().map(|(f, _)| f.clone()).collect();
    out.extend(lua);
    out.extend(native[last + 1..].iter().map(|(f, _)| f.clone()));
    out
}

/// The innermost Lua function of a stack, else its innermost frame that is
/// not a wait (a VM state, "no Lua running"), else the wait itself (preempted).
pub fn culprit_frame(stack: &[Frame]) -> Frame {
    stack
        .iter()
        .rev()
        .find(|f| matches!(f, Frame::Lua { .. }))
        .or_else(|| stack.iter().rev().find(|f| !matches!(f, Frame::Wait(_))))
        .or_else(|| stack.last())
        .cloned()
        .unwrap_or_else(|| Frame::Vm("[no stack]".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, lj: bool) -> (Frame, bool) {
        (Frame::Native(name.into()), lj)
    }

    #[test]
    fn splices_lua_between_the_host_and_what_lua_called() {
        let native = vec![
            n("main", false),
            n("ngx_http_lua_run_thread", false),
            n("lua_resume", true),
            n("lj_vm_resume", true),
            n("ngx_http_lua_ngx_say", false),
            n("write", false),
        ];
        let lua = vec![Frame::Lua { name: Some("handler".into()), file: "a.lua".into(), line: 3, at: None }];
        let got: Vec<String> = splice(native, lua).iter().map(Frame::label).collect();
        assert_eq!(got, ["main", "ngx_http_lua_run_thread", "handler a.lua:3", "ngx_http_lua_ngx_say", "write"]);
    }

    #[test]
    fn keeps_both_when_the_unwind_never_reached_luajit() {
        let lua = vec![Frame::Trace(4)];
        let got: Vec<String> = splice(vec![n("memcpy", false)], lua).iter().map(Frame::label).collect();
        assert_eq!(got, ["memcpy", "trace#4"]);
    }
}
