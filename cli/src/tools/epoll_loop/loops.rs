//! Which Lua function held each long iteration: the stacks recorded while it
//! ran, named only once it ends long. An iteration whose time preempted
//! outweighs every function's is charged to waiting for a CPU instead: its code
//! did not hold it.

use std::collections::HashMap;

use ljprobe_common::{LoopEnd, LoopHead, LoopStack, LOOP_ITERATION, LOOP_OFF_CPU, LOOP_ON_CPU};
use ljprobe_flamegraph::Frame;

use crate::stacks::{culprit_frame, wait_frame, StackBuilder};

/// What held one long iteration: its heaviest Lua function.
#[derive(Default)]
pub struct Culprit {
    pub iterations: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// The heaviest stack seen under it, root first.
    pub stack: Vec<Frame>,
    pub stack_ns: u64,
}

/// The records of the iteration a thread is running, kept raw: most
/// iterations end short and their stacks are never named. Long ones end
/// within a drain or two (100 ms), while their functions are still there.
struct Running {
    iteration_ns: u64,
    records: Vec<LoopStack>,
}

pub struct Loops {
    builder: StackBuilder,
    /// The least time a stack stands for (`LoopConfig::stack_after_ns`); time
    /// preempted competes as a culprit from the same amount.
    piece_ns: u64,
    /// Per thread, the stacks of the iteration it is running.
    running: HashMap<u32, Running>,
    pub culprits: HashMap<Frame, Culprit>,
    pub long: u64,
    /// Where the long iterations' time went.
    pub long_ns: u64,
    pub blocked_ns: u64,
    pub runnable_ns: u64,
    /// Long iterations without any stack (blocked or ran in pieces under 1 ms).
    pub unexplained: u64,
}

impl crate::collect::Sink for Loops {
    fn record(&mut self, bytes: &[u8]) {
        Loops::record(self, bytes);
    }

    fn joined(&mut self, p: &crate::target::Process) -> anyhow::Result<()> {
        self.builder.add_process(p)
    }
}

impl Loops {
    pub fn inlined_summary(&self) -> serde_json::Value {
        self.builder.inlined_summary()
    }

    pub fn new(builder: StackBuilder, piece_ns: u64) -> Loops {
        Loops {
            builder,
            piece_ns,
            running: HashMap::new(),
            culprits: HashMap::new(),
            long: 0,
            long_ns: 0,
            blocked_ns: 0,
            runnable_ns: 0,
            unexplained: 0,
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<LoopHead>() {
            return;
        }
        // SAFETY: every record starts with a LoopHead; read_unaligned copes with
        // the ring buffer's alignment.
        let head: LoopHead = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
        match head.kind {
            LOOP_ITERATION if bytes.len() >= std::mem::size_of::<LoopEnd>() => {
                // SAFETY: as above, a whole LoopEnd.
                self.iteration_ended(&unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const LoopEnd) })
            }
            LOOP_ON_CPU | LOOP_OFF_CPU if bytes.len() >= std::mem::size_of::<LoopStack>() => {
                // SAFETY: as above, a whole LoopStack.
                let r: LoopStack = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
                let fresh = || Running { iteration_ns: head.iteration_ns, records: vec![] };
                let running = self.running.entry(head.tid).or_insert_with(fresh);
                if running.iteration_ns != head.iteration_ns {
                    *running = fresh();
                }
                running.records.push(r);
            }
            _ => {}
        }
    }

    fn iteration_ended(&mut self, end: &LoopEnd) {
        let head = &end.head;
        self.long += 1;
        self.long_ns += head.ns;
        self.blocked_ns += end.blocked_ns;
        self.runnable_ns += end.runnable_ns;
        let records = match self.running.remove(&head.tid) {
            Some(r) if r.iteration_ns == head.iteration_ns => r.records,
            _ => vec![],
        };
        let mut stacks: Vec<(Vec<Frame>, u64)> = records
            .iter()
            .map(|r| {
                let wait = (r.head.kind == LOOP_OFF_CPU).then(|| wait_frame(r.syscall, false));
                (self.builder.build(&r.lua, None, wait), r.head.ns)
            })
            .collect();
        let mut by_function: HashMap<Frame, (u64, usize)> = HashMap::new();
        if end.runnable_ns >= self.piece_ns {
            stacks.push((vec![wait_frame(-1, true)], end.runnable_ns));
        }
        for (i, (stack, ns)) in stacks.iter().enumerate() {
            let entry = by_function.entry(culprit_frame(stack)).or_insert((0, i));
            entry.0 += ns;
            if *ns > stacks[entry.1].1 {
                entry.1 = i;
            }
        }
        let Some((frame, (_, heaviest))) = by_function.into_iter().max_by_key(|(_, (ns, _))| *ns) else {
            self.unexplained += 1;
            return;
        };
        let c = self.culprits.entry(frame).or_default();
        c.iterations += 1;
        c.total_ns += head.ns;
        c.max_ns = c.max_ns.max(head.ns);
        let (stack, ns) = &stacks[heaviest];
        if *ns > c.stack_ns {
            c.stack = stack.clone();
            c.stack_ns = *ns;
        }
    }
}
