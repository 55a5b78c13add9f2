//! What the alloc program sends, as stacks: in Lua mode each stack arrives
//! once and its counts are read from the kernel at the end; with native
//! stacks every event arrives with its own.

use std::collections::{BTreeMap, HashMap};

use ljprobe_common::{AllocRecord, AllocRecordNative, AllocTotals, CpuSample, ALLOC_NEW, ALLOC_REALLOC, ALLOC_TABLE_RESIZE};
use ljprobe_flamegraph::{Folded, Frame};
use serde::Serialize;

use crate::stacks::{state_key, StackBuilder};

/// What a kind of allocator call adds to the top of its stack: table growth
/// stands out under the function that grew the table.
fn kind_frame(kind: u32) -> Option<Frame> {
    match kind {
        ALLOC_TABLE_RESIZE => Some(Frame::Vm("[table resize]".into())),
        ALLOC_REALLOC => Some(Frame::Vm("[block grown]".into())),
        _ => None,
    }
}

pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        ALLOC_NEW => "new",
        ALLOC_TABLE_RESIZE => "table_resize",
        _ => "grown",
    }
}

struct Known {
    stack: Vec<Frame>,
    state: String,
}

/// Estimated totals (raw counts times the sampler's scale).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Amount {
    pub count: f64,
    pub bytes: f64,
}

pub struct Tally {
    pub builder: StackBuilder,
    native: bool,
    known: HashMap<u64, Known>,
    /// Native mode: raw (count, bytes) per stack, and per kind.
    raw: HashMap<(Vec<Frame>, String, u32), (u64, u64)>,
    pub records: u64,
}

/// The stacks weighed both ways, the VM states by bytes, and per kind.
pub struct Weighed {
    pub by_bytes: Folded,
    pub by_count: Folded,
    pub by_state: BTreeMap<String, u64>,
    pub by_kind: BTreeMap<&'static str, Amount>,
    /// Raw events behind the estimate.
    pub recorded: u64,
}

impl Tally {
    pub fn new(builder: StackBuilder, native: bool) -> Tally {
        Tally { builder, native, known: HashMap::new(), raw: HashMap::new(), records: 0 }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        self.records += 1;
        if self.native {
            if bytes.len() < std::mem::size_of::<AllocRecordNative>() {
                return;
            }
            // SAFETY: the kernel wrote a whole record of this type; read_unaligned
            // copes with the ring buffer's 8-byte alignment.
            let r: AllocRecordNative = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const AllocRecordNative) };
            let (stack, state) = self.stack_of(&r.head.stack, Some(&r.native), r.head.kind);
            // `ljprobe leak` pairs each record with its address by the key.
            if r.head.key != 0 {
                self.known.insert(r.head.key, Known { stack: stack.clone(), state: state.clone() });
            }
            let e = self.raw.entry((stack, state, r.head.kind)).or_default();
            e.0 += 1;
            e.1 += r.head.bytes;
        } else {
            if bytes.len() < std::mem::size_of::<AllocRecord>() {
                return;
            }
            // SAFETY: as above.
            let r: AllocRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const AllocRecord) };
            // Resolved now: the functions it names may be collected later.
            let (stack, state) = self.stack_of(&r.stack, None, r.kind);
            self.known.insert(r.key, Known { stack, state });
        }
    }

    /// The stack a record with `key` arrived with.
    pub fn stack(&self, key: u64) -> Option<&[Frame]> {
        self.known.get(&key).map(|k| k.stack.as_slice())
    }

    fn stack_of(&mut self, s: &CpuSample, native: Option<&ljprobe_common::NativeStack>, kind: u32) -> (Vec<Frame>, String) {
        let mut stack = self.builder.build(s, native, None);
        stack.extend(kind_frame(kind));
        (stack, state_key(s.vmstate, s.flags))
    }

    /// Everything weighed, with `scale` per raw event; `kernel` holds the Lua
    /// mode's per-stack counts (key -> totals summed over CPUs).
    pub fn weigh(&self, kernel: &[(u64, AllocTotals)], scale: f64) -> Weighed {
        let mut w = Weighed {
            by_bytes: Folded::default(),
            by_count: Folded::default(),
            by_state: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            recorded: 0,
        };
        let unknown = Known { stack: vec![Frame::Vm("[stack not received]".into())], state: "unknown".into() };
        let mut add = |stack: &[Frame], state: &str, kind: u32, count: u64, bytes: u64| {
            let (c, b) = (count as f64 * scale, bytes as f64 * scale);
            w.by_bytes.add(stack, b.round() as u64);
            w.by_count.add(stack, c.round() as u64);
            *w.by_state.entry(state.to_string()).or_default() += b.round() as u64;
            let k = w.by_kind.entry(kind_name(kind)).or_default();
            k.count += c;
            k.bytes += b;
            w.recorded += count;
        };
        for ((stack, state, kind), &(count, bytes)) in &self.raw {
            add(stack, state, *kind, count, bytes);
        }
        for (key, t) in kernel {
            let k = self.known.get(key).unwrap_or(&unknown);
            add(&k.stack, &k.state, (key & 3) as u32, t.events, t.bytes);
        }
        w
    }
}
