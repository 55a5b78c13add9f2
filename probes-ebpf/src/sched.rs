//! Reading `sched:sched_switch` (a classic tracepoint: this kernel has no
//! kprobes). The program runs in the context of the thread leaving the CPU.

use aya_ebpf::programs::TracePointContext;
use ljprobe_common::{SchedSwitchFormat, TASK_STATE_EXITING, TASK_STATE_PREEMPTED};

pub struct Switch {
    /// The thread leaving the CPU (the current one).
    pub prev_tid: u32,
    pub prev_state: u64,
    /// The thread taking the CPU.
    pub next_tid: u32,
}

impl Switch {
    #[inline(always)]
    pub fn read(ctx: &TracePointContext, f: &SchedSwitchFormat) -> Option<Switch> {
        // SAFETY: offsets come from the tracepoint's own format file; reads are checked.
        unsafe {
            Some(Switch {
                prev_tid: ctx.read_at::<i32>(f.prev_pid as usize).ok()? as u32,
                prev_state: ctx.read_at::<i64>(f.prev_state as usize).ok()? as u64,
                next_tid: ctx.read_at::<i32>(f.next_pid as usize).ok()? as u32,
            })
        }
    }

    pub fn prev_exiting(&self) -> bool {
        self.prev_state & TASK_STATE_EXITING != 0
    }

    pub fn prev_runnable(&self) -> bool {
        self.prev_state == 0 || self.prev_state & TASK_STATE_PREEMPTED != 0
    }
}
