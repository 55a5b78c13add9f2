//! One module per command; each pairs with `probes-ebpf/src/<tool>.rs`.
//! `run_args` holds the options they all take.

pub mod alloc;
pub mod cpu;
pub mod diff;
pub mod doctor;
pub mod epoll_loop;
pub mod gate;
pub mod gc;
pub mod heap;
pub mod jit;
pub mod latency;
pub mod layout;
pub mod leak;
pub mod offcpu;
pub mod report;
pub mod run_args;
