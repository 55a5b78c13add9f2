//! Where things live in the workspace.

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

pub fn target() -> PathBuf {
    root().join("target")
}

pub fn gateway_src() -> PathBuf {
    root().join("gateway")
}

/// Prefix of the `-g` build of OpenResty's LuaJIT made by `setup`.
pub fn luajit_debug() -> PathBuf {
    target().join("luajit-debug")
}

pub fn luajit_debug_lib() -> PathBuf {
    luajit_debug().join("lib")
}

pub fn ljprobe_bin() -> PathBuf {
    target().join("debug/ljprobe")
}
