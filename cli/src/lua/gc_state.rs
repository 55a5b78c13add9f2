//! The allocator and collector fields of a live VM's `global_State` (lj_obj.h:
//! `GCState`, `lua_Alloc allocf`): what `ljprobe alloc` probes and `ljprobe gc`
//! samples. Read from the target's memory; nothing here stops it.

use serde::Serialize;

use super::Memory;

/// Offsets inside `global_State`. The same in OpenResty's 2.1 and upstream 2.1
/// GC64 on x86_64 (both checked with gdb on `-g` builds, see FIELD-NOTES): the
/// fields OpenResty adds come later in the struct.
#[derive(Debug, Clone, Copy)]
pub struct GcLayout {
    /// `lua_Alloc allocf`: every byte of the Lua heap goes through it.
    pub allocf: u64,
    pub allocd: u64,
    /// `gc.total`: bytes in use (GCSize, u64 in GC64).
    pub total: u64,
    /// `gc.threshold`: the collector steps when `total` reaches it.
    pub threshold: u64,
    /// `gc.state` (u8): `GCSpause` .. `GCSfinalize`.
    pub state: u64,
    /// `gc.debt`: how far the incremental collector is behind.
    pub debt: u64,
    /// `gc.estimate`: the live heap as the last cycle measured it.
    pub estimate: u64,
    /// `gc.stepmul`, `gc.pause` (u32 each, percent).
    pub stepmul: u64,
    pub pause: u64,
}

pub const GC_21_GC64_X86_64: GcLayout = GcLayout {
    allocf: 0,
    allocd: 8,
    total: 0x10,
    threshold: 0x18,
    state: 0x21,
    debt: 0x58,
    estimate: 0x60,
    stepmul: 0x68,
    pause: 0x6c,
};

/// `GCSpause` .. `GCSfinalize` in lj_gc.h's order, as `ljprobe gc` names them.
pub const GC_STATES: [&str; 6] = ["pause", "propagate", "atomic", "sweepstring", "sweep", "finalize"];

/// One reading of the collector's fields.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct GcReading {
    pub total: u64,
    pub threshold: u64,
    pub state: u8,
    pub debt: u64,
    pub estimate: u64,
}

impl GcLayout {
    /// One consistent-enough reading: the fields are read in one copy of the
    /// `GCState` block, so they come from (nearly) the same moment.
    pub fn read<M: Memory>(&self, mem: &M, g: u64) -> Option<GcReading> {
        let start = self.total;
        let end = self.estimate + 8;
        let block = mem.read_bytes(g + start, (end - start) as usize)?;
        let u64_at = |off: u64| {
            let i = (off - start) as usize;
            u64::from_ne_bytes(block[i..i + 8].try_into().expect("8 bytes"))
        };
        let state = block[(self.state - start) as usize];
        (usize::from(state) < GC_STATES.len()).then_some(GcReading {
            total: u64_at(self.total),
            threshold: u64_at(self.threshold),
            state,
            debt: u64_at(self.debt),
            estimate: u64_at(self.estimate),
        })
    }

    /// The allocator function the VM calls (`G->allocf`).
    pub fn allocf<M: Memory>(&self, mem: &M, g: u64) -> Option<u64> {
        mem.read_u64(g + self.allocf).filter(|&a| a != 0)
    }
}
