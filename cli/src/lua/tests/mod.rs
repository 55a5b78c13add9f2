//! Tests of the Lua frame resolver: synthetic memory images, and live LuaJIT
//! processes (root, and the builds `cargo xtask setup` installs).

use std::path::{Path, PathBuf};

mod image;
mod live;
mod trace;
mod unit;

pub fn debug_prefix() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/luajit-debug")
}

pub fn require(path: &Path) {
    assert!(path.exists(), "{} is missing: run `cargo xtask setup`", path.display());
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test reads /proc/PID/mem of a child: run it as root");
}
