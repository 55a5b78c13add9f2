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
mod prop_tests;
#[cfg(test)]
mod tests;

pub use symbolize::Symbolizer;
pub use unwind::{StackCopy, Unwinder};
