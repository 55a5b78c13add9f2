//! Per-CPU counters: no atomics needed, user space sums the CPUs.

use aya_ebpf::maps::PerCpuArray;

#[inline(always)]
pub fn add(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; a BPF program is not preempted by another on the same CPU.
        unsafe { *slot += n };
    }
}
