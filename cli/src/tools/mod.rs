//! One module per command; each pairs with `probes-ebpf/src/<tool>.rs`.

pub mod cpu;
pub mod doctor;
pub mod offcpu;
pub mod epoll_loop;
