//! Frames as ljprobe shows them.

use std::fmt;

/// What the LuaJIT VM was doing, from `global_State.vmstate`, which holds either a
/// trace number (>= 0) or the bitwise NOT of an `LJ_VMST_*` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    Interpreter,
    C,
    Gc,
    TraceExit,
    Recording,
    Optimizing,
    Assembling,
    Trace(u32),
    Unknown(i32),
}

impl VmState {
    pub fn from_raw(vmstate: i32) -> VmState {
        if vmstate >= 0 {
            return VmState::Trace(vmstate as u32);
        }
        match !vmstate {
            0 => VmState::Interpreter,
            1 => VmState::C,
            2 => VmState::Gc,
            3 => VmState::TraceExit,
            4 => VmState::Recording,
            5 => VmState::Optimizing,
            6 => VmState::Assembling,
            _ => VmState::Unknown(vmstate),
        }
    }

    /// The frame label a sample in this state gets when no Lua frame explains it.
    pub fn label(&self) -> String {
        match self {
            VmState::Interpreter => "[interpreter]".into(),
            VmState::C => "[C]".into(),
            VmState::Gc => "[GC]".into(),
            VmState::TraceExit => "[trace exit]".into(),
            VmState::Recording | VmState::Optimizing | VmState::Assembling => "[JIT compiler]".into(),
            VmState::Trace(n) => format!("trace#{n}"),
            VmState::Unknown(raw) => format!("[vmstate {raw}]"),
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            VmState::Interpreter => "interpreting Lua",
            VmState::C => "in C called from Lua",
            VmState::Gc => "collecting garbage",
            VmState::TraceExit => "leaving a trace",
            VmState::Recording => "recording a trace",
            VmState::Optimizing => "optimizing a trace",
            VmState::Assembling => "assembling a trace",
            VmState::Trace(n) => return write!(f, "running compiled trace #{n}"),
            VmState::Unknown(raw) => return write!(f, "unknown state {raw}"),
        };
        f.write_str(s)
    }
}

/// One frame of a stack, of any of the kinds a mixed graph shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    /// A Lua function: its name where debug info derives one, its chunk and the
    /// line where it is defined; with `at`, the line it was executing
    /// (`--lines`), shown as `name file:line @at`.
    Lua { name: Option<String>, file: String, line: u32, at: Option<u32> },
    /// A native function in user space.
    Native(String),
    Kernel(String),
    Trace(u32),
    /// A VM state label such as `[GC]`.
    Vm(String),
    /// Why an off-CPU thread was away: the system call it blocked in, or
    /// waiting for a CPU after preemption.
    Wait(String),
}

impl Frame {
    /// The same frame without the line it was executing: what a per-function
    /// view adds up.
    pub fn function(&self) -> Frame {
        match self {
            Frame::Lua { name, file, line, .. } => Frame::Lua { name: name.clone(), file: file.clone(), line: *line, at: None },
            other => other.clone(),
        }
    }

    pub fn label(&self) -> String {
        match self {
            // flamegraph.pl's format splits on ';' and the last ' ': keep both out.
            Frame::Lua { name, file, line, at } => {
                let name = name.as_deref().map(|n| format!("{n} ")).unwrap_or_default();
                let at = at.map(|a| format!(" @{a}")).unwrap_or_default();
                clean(&format!("{name}{file}:{line}{at}"))
            }
            Frame::Native(s) | Frame::Vm(s) | Frame::Wait(s) => clean(s),
            Frame::Kernel(s) => clean(&format!("{s}_[k]")),
            Frame::Trace(n) => format!("trace#{n}"),
        }
    }
}

fn clean(s: &str) -> String {
    s.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmstate_decodes_not_encoded_states_and_traces() {
        assert_eq!(VmState::from_raw(!0), VmState::Interpreter);
        assert_eq!(VmState::from_raw(!2), VmState::Gc);
        assert_eq!(VmState::from_raw(!4).label(), "[JIT compiler]");
        assert_eq!(VmState::from_raw(17), VmState::Trace(17));
        assert_eq!(VmState::from_raw(17).label(), "trace#17");
        assert_eq!(VmState::from_raw(-100), VmState::Unknown(-100));
    }

    #[test]
    fn labels_keep_separators_out() {
        let f = Frame::Lua { name: Some("work".into()), file: "app/a;b.lua".into(), line: 12, at: None };
        assert_eq!(f.label(), "work app/a:b.lua:12");
        let f = Frame::Lua { name: None, file: "b.lua".into(), line: 3, at: Some(5) };
        assert_eq!(f.label(), "b.lua:3 @5");
        assert_eq!(Frame::Kernel("schedule".into()).label(), "schedule_[k]");
    }
}
