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

/// Directory of one of the other LuaJIT builds made by `setup`
/// (target/luajit-builds/<name>/; names and layouts in `luajit_builds`).
pub fn luajit_build(name: &str) -> PathBuf {
    target().join("luajit-builds").join(name)
}

/// Where `setup` unpacks a Debian LuaJIT source package: `luajit2` (OpenResty's
/// fork, built in place into `luajit_debug()`) stays in target/luajit-src, where the
/// tests read its source; any other package goes to target/luajit-src-<package>.
pub fn luajit_src(package: &str) -> PathBuf {
    match package {
        "luajit2" => target().join("luajit-src"),
        other => target().join(format!("luajit-src-{other}")),
    }
}

/// A build's own copy of a source tree (target/luajit-src-<name>/<tree>), so that builds
/// with other flags never reuse object files.
pub fn luajit_build_src(name: &str) -> PathBuf {
    target().join(format!("luajit-src-{name}"))
}

pub fn ljprobe_bin() -> PathBuf {
    target().join("debug/ljprobe")
}
