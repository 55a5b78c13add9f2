//! From the kernel's raw Lua samples to the shared stack model: names from the
//! target's memory, the VM state on top, truncation made visible.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use ljprobe_common::{
    CpuSample, LuaFrameRaw, STACK_BROKEN, STACK_NOT_IN_LUA, STACK_NO_VM, STACK_TRUNCATED,
};
use ljprobe_flamegraph::{Folded, Frame, VmState};

use crate::{
    lua::{LuaFrame, ProcMem, RawFrame, Resolver},
    target::Process,
};

pub struct StackBuilder {
    resolvers: HashMap<u32, Resolver<ProcMem>>,
    pub folded: Folded,
    pub by_vm_state: BTreeMap<String, u64>,
}

impl StackBuilder {
    pub fn new(processes: &[Process]) -> Result<StackBuilder> {
        let mut resolvers = HashMap::new();
        for p in processes {
            resolvers.insert(p.pid, Resolver::new(ProcMem::open(p.pid)?));
        }
        Ok(StackBuilder { resolvers, folded: Folded::default(), by_vm_state: BTreeMap::new() })
    }

    /// One `CpuSample` record from the ring buffer, weight 1.
    pub fn add(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<CpuSample>() {
            return;
        }
        // SAFETY: the kernel wrote a whole CpuSample; read_unaligned copes with
        // the ring buffer's 8-byte alignment.
        let s: CpuSample = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CpuSample) };
        let n = (s.nframes as usize).min(s.frames.len());
        let stack = self.stack(s.tgid, s.vmstate, s.flags, &s.frames[..n]);
        *self.by_vm_state.entry(state_key(s.vmstate, s.flags)).or_default() += 1;
        self.folded.add(&stack, 1);
    }

    /// Root first, as folded stacks read.
    pub fn stack(&mut self, tgid: u32, vmstate: i32, flags: u32, raw: &[LuaFrameRaw]) -> Vec<Frame> {
        if flags & STACK_NO_VM != 0 {
            return vec![Frame::Vm("[no Lua VM found yet]".into())];
        }
        if flags & STACK_NOT_IN_LUA != 0 {
            return vec![Frame::Vm("[C: no Lua running]".into())];
        }
        let raw: Vec<RawFrame> = raw.iter().map(|f| RawFrame { func: f.func, link: f.link }).collect();
        let resolved = match self.resolvers.get_mut(&tgid) {
            Some(r) => r.resolve(&raw),
            None => Vec::new(),
        };
        let mut stack: Vec<Frame> = Vec::with_capacity(resolved.len() + 2);
        if flags & STACK_TRUNCATED != 0 {
            stack.push(Frame::Vm("[truncated: deeper frames not walked]".into()));
        } else if flags & STACK_BROKEN != 0 {
            stack.push(Frame::Vm("[unreadable frames below]".into()));
        }
        stack.extend(resolved.into_iter().rev().map(to_frame));
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

fn to_frame(f: LuaFrame) -> Frame {
    match f {
        LuaFrame::Lua { name, file, line } => Frame::Lua { name, file, line },
        LuaFrame::C { addr, name } => Frame::Native(name.unwrap_or_else(|| format!("C function {addr:#x}"))),
        LuaFrame::Builtin { ffid, name } => Frame::Native(match name {
            Some(n) => format!("{n} [builtin]"),
            None => format!("builtin#{ffid}"),
        }),
    }
}

fn state_key(vmstate: i32, flags: u32) -> String {
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
