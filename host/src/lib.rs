//! Helpers shared by the `ljprobe` core and `xtask` (which must build before the
//! BPF tool chain exists): durations as users type them, and readers of `/proc`.
//! Everything read from `/proc` describes another process and may be gone or
//! malformed by the time it is parsed: parsers return `None`, never panic.

pub mod duration;
pub mod proc;
pub mod steal;
