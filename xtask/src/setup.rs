//! Idempotent machine setup: installs only what is missing and says what it does.
//! A second run checks and returns in seconds.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cmd, luajit_builds};

/// Debian packages, each with why it is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "the gateway's web server"),
    ("libnginx-mod-http-lua", "lua-nginx-module (OpenResty's LuaJIT inside nginx)"),
    ("lua-resty-core", "the gateway's ngx.* FFI API"),
    ("lua-resty-lrucache", "the gateway's per-worker cache"),
    ("lua-cjson", "the gateway's JSON"),
    ("luajit2", "stock stripped `luajit` for fidelity tests"),
    ("wrk", "load generator"),
    ("gdb", "reads LuaJIT's struct layout from DWARF in the tests"),
    ("linux-perf", "perf record for the benchmark's comparison"),
    ("bpftool", "the kernel's lists of BPF programs and perf links, checked after ljprobe is killed"),
    ("build-essential", "compiles the debug LuaJIT"),
    ("dpkg-dev", "unpacks the luajit2 source package"),
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links against LLVM 22"),
    ("libzstd-dev", "bpf-linker"),
    ("zlib1g-dev", "bpf-linker"),
    ("libcap2-bin", "setcap/getcap: the capability-installed ljprobe (docs/install.md) and its test"),
    ("bpftrace", "a uprobe counting every allocator call: the reference `cargo xtask bench alloc` compares with"),
    ("golang-go", "`go tool pprof`: the tests read ljprobe's --pprof files with Go's own pprof"),
    ("chromium", "headless Chromium: the test of `ljprobe report` renders its page and checks every graph drew"),
    ("musl-tools", "musl-gcc: compiles jemalloc, the allocator of the static build (cargo xtask dist)"),
];

pub fn run() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup installs Debian packages and loads eBPF programs: run it as root");
    }
    apt_packages()?;
    rust_src()?;
    musl_target()?;
    bpf_linker()?;
    tracefs()?;
    luajit_builds::luajit_debug()?;
    luajit_builds::setup()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]))
        .is_ok_and(|s| s.trim() == "installed")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    for (p, why) in &missing {
        eprintln!("setup: installing {p} ({why})");
    }
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Debian starts the packaged nginx on port 80 where it can; we run our own.
    let _ = Command::new("service").args(["nginx", "stop"]).output();
    Ok(())
}

fn rust_src() -> Result<()> {
    let have = cmd::output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .context("the nightly toolchain is needed to build the eBPF programs")?;
    if have.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly (build-std for the BPF target)");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `cargo xtask dist` builds ljprobe static for x86_64-unknown-linux-musl: the
/// standard library for that target (rustup's own musl crt and libc; musl-gcc,
/// from `musl-tools`, compiles only the jemalloc allocator's C).
fn musl_target() -> Result<()> {
    let target = crate::dist::TARGET;
    let have = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if have.lines().any(|l| l.trim() == target) {
        eprintln!("setup: Rust target {target} present");
        return Ok(());
    }
    eprintln!("setup: adding the Rust target {target} (the static build of `cargo xtask dist`)");
    cmd::run(Command::new("rustup").args(["target", "add", target]))
}

fn bpf_linker() -> Result<()> {
    if cmd::succeeds("bpf-linker", &["--version"]) {
        eprintln!("setup: bpf-linker present");
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against LLVM 22 (about 5 minutes)");
    // /usr/bin/llvm-config is LLVM 14; the LLVM 22 one must come first.
    let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
    cmd::run(
        Command::new("cargo")
            .args(["install", "--locked", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
            .env("PATH", path),
    )
}

fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        eprintln!("setup: tracefs mounted");
        return Ok(());
    }
    eprintln!("setup: mounting tracefs (sched_switch and syscall tracepoints)");
    cmd::run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

/// `apt-get source` needs a deb-src line for the mirror the machine already uses.
pub(crate) fn deb_src() -> Result<()> {
    let list = Path::new("/etc/apt/sources.list.d/ljprobe-deb-src.list");
    if list.exists() {
        return Ok(());
    }
    let mirror = debian_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".into());
    eprintln!("setup: adding deb-src for {mirror} to {}", list.display());
    fs::write(
        list,
        format!("deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} bookworm main\n"),
    )?;
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
}

/// The main Debian mirror from the machine's sources (one-line or deb822 format).
fn debian_mirror() -> Option<String> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        texts.extend(dir.filter_map(|e| fs::read_to_string(e.ok()?.path()).ok()));
    }
    texts.iter().flat_map(|t| t.lines()).find_map(|line| {
        let line = line.trim();
        let url = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().next()?
        } else if line.starts_with("deb ") {
            line.split_whitespace().find(|w| w.starts_with("http"))?
        } else {
            return None;
        };
        (url.ends_with("/debian") || url.ends_with("/debian/")).then(|| url.trim_end_matches('/').to_string())
    })
}
