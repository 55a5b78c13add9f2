//! ljprobe's core: everything the `ljprobe` binary does, callable as a library.
//!
//! Data flows one way: a tool's kernel program (`bpf`) fills maps and a ring
//! buffer, `collect` drains them, `stacks` builds the shared stack model from
//! Lua frames (`lua`, reading the target's memory) and native ones (`native`),
//! and `report` renders it. `target` finds what to look at; `tools` holds one
//! module per command, each beside its kernel program `probes-ebpf/src/<tool>.rs`.

pub mod bpf;
pub mod clock;
pub mod collect;
pub mod kallsyms;
pub mod lua;
pub mod native;
pub mod output;
pub mod report;
pub mod stacks;
pub mod system;
pub mod target;
pub mod tools;
