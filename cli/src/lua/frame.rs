//! What the kernel records per Lua frame, and the frame-link bits of
//! lj_frame.h: shared by the stack resolver and the trace reader, below both.

/// One frame as the kernel records it, innermost first: `func` is the GCfunc
/// address, `link` the raw frame link word (`ftsz`). The kernel's own record,
/// so samples are resolved in place.
pub use ljprobe_common::LuaFrameRaw as RawFrame;

/// Frame-type bits of a link word (lj_frame.h).
pub const FRAME_TYPE: u64 = 3;
pub const FRAME_TYPEP: u64 = 7;
pub const FRAME_LUA: u64 = 0;
pub const FRAME_VARG: u64 = 3;
