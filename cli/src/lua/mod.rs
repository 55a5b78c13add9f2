//! Labels for the Lua frames the kernel samples: reads the target's LuaJIT
//! objects through /proc/PID/mem (never stopping it) and names functions the
//! way LuaJIT's own `debug.getinfo(level, "n")` does.
//!
//! Everything read may be stale or garbage by the time we read it: every read
//! and every value is checked, and failures become "unknown", never a panic.

// Parts of the API (layouts, slot names, bytecode access) have no caller
// outside the tests yet.
#![allow(dead_code)]

mod bc;
mod callsite;
mod cache;
mod copy;
mod frame;
mod funcname;
pub mod gc_flip;
mod gc_state;
mod gcstr;
pub mod heap;
mod heap_layout;
pub mod jit_names;
pub mod jit_state;
mod layout;
mod mem;
mod proto;
mod resolve;
#[cfg(test)]
mod tests;
pub mod trace;
mod trace_call;

#[allow(unused_imports)]
pub use bc::Op;
pub use callsite::call_target;
pub use copy::MemCopy;
#[allow(unused_imports)]
pub use frame::RawFrame;
#[allow(unused_imports)]
pub use gc_state::{allocated_so_far, atomic_between, Accounted, Accounting, GcLayout, GcReading, Step, GC_STATES};
pub use funcname::{SlotKind, SlotName};
pub use heap_layout::HeapLayout;
#[allow(unused_imports)]
pub use layout::{ObjLayout, TraceLayout};
#[allow(unused_imports)]
pub use mem::{Memory, ProcMem};
#[allow(unused_imports)]
pub use resolve::{LuaFrame, Pc, Place, Resolver, UNKNOWN_FILE};
#[allow(unused_imports)]
pub use trace::{Inlined, MAX_INLINED};
pub use trace_call::{FfiCall, Found, TraceImage};
