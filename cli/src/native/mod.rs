//! User-space DWARF unwinding and symbolization of native (C) stacks for
//! binaries built without frame pointers (Debian's nginx and LuaJIT).
//! The kernel side only copies registers and the top of the user stack;
//! everything that needs the binaries happens here.

// Not wired into the CLI yet; the sampling side lands separately.

mod cfi;
mod maps;
mod symbolize;
mod unwind;

#[cfg(test)]
mod tests;

pub use symbolize::Symbolizer;
pub use unwind::Unwinder;

/// One sample's user registers and the bytes at `[rsp, rsp + stack.len())`.
#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    pub rip: u64,
    pub rsp: u64,
    /// 0 when not captured; only frames whose CFA is rbp-based need it.
    pub rbp: u64,
    pub stack: &'a [u8],
}
