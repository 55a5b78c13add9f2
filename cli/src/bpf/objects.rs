//! The kernel programs, built by `build.rs` from `probes-ebpf/` and embedded so
//! that the `ljprobe` binary is the only file a user needs.

/// `probes-ebpf/src/doctor.rs`
pub static DOCTOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/doctor"));

/// `probes-ebpf/src/cpu.rs`
pub static CPU: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cpu"));

/// `probes-ebpf/src/offcpu.rs`
pub static OFFCPU: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/offcpu"));

/// `probes-ebpf/src/epoll_loop.rs`
pub static EPOLL_LOOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/epoll-loop"));

/// `probes-ebpf/src/gc.rs`
pub static GC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gc"));

/// `probes-ebpf/src/alloc.rs`
pub static ALLOC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/alloc"));

/// `probes-ebpf/src/latency.rs`
pub static LATENCY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/latency"));

/// `probes-ebpf/src/jit.rs`
pub static JIT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jit"));
