//! Builds the kernel-side programs (`probes-ebpf`, one ELF object per tool) with
//! nightly + bpf-linker and leaves them in OUT_DIR, where `src/bpf/objects.rs`
//! embeds them: the `ljprobe` binary is the only file a user copies to a server.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    version(&manifest_dir);
    layouts(&manifest_dir);
    let probes = manifest_dir.join("../probes-ebpf");
    let common = manifest_dir.join("../common");
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", probes.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", common.join("src").display());

    // A target dir of its own: the outer cargo holds the lock on target/.
    let target_dir = manifest_dir.join("../target/bpf");
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "build", "--release", "--bins", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(probes.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's toolchain and flags are for the host; none of them apply here.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| fail(&format!("could not run cargo: {e}")));
    if !status.success() {
        fail("building the eBPF programs in probes-ebpf/ failed (see above)");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let built = target_dir.join("bpfel-unknown-none/release");
    for name in bin_names(&probes.join("Cargo.toml")) {
        let from = built.join(&name);
        fs::copy(&from, out_dir.join(&name))
            .unwrap_or_else(|e| fail(&format!("{} was not built: {e}", from.display())));
    }
}

/// `LJPROBE_VERSION` for `ljprobe --version`: the crate version, the commit it
/// was built from and the target triple, e.g. `0.1.0 (commit 1a2b3c4d5e6f,
/// x86_64-unknown-linux-musl)`. The commit comes from `git` when the source is a
/// clone, else from `LJPROBE_COMMIT` (set it when building from a tarball), else
/// it says `unknown`.
fn version(manifest_dir: &Path) {
    println!("cargo:rerun-if-env-changed=LJPROBE_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        // safe.directory: a checkout owned by another user (a container's mounted source) still says its commit.
        let out =
            Command::new("git").args(["-c", "safe.directory=*"]).args(args).current_dir(manifest_dir).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let commit = env::var("LJPROBE_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Build again when HEAD moves: HEAD itself, the branch it names, packed refs.
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for f in watch {
            // Only files that exist: cargo reruns a script on every build for a missing one.
            match git(&["rev-parse", "--path-format=absolute", "--git-path", &f]) {
                Some(path) if Path::new(&path).exists() => {
                    println!("cargo:rerun-if-changed={path}")
                }
                _ => {}
            }
        }
        Some(commit)
    });
    let target = env::var("TARGET").unwrap_or_else(|_| "unknown target".into());
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = commit.unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LJPROBE_VERSION={version} (commit {commit}, {target})");
}

/// `OUT_DIR/layouts.rs`: every file of `cli/layouts/` built in, so adding a
/// LuaJIT build is adding a file (`src/target/known_builds.rs` reads them).
fn layouts(manifest_dir: &Path) {
    let dir = manifest_dir.join("layouts");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect())
        .unwrap_or_default();
    files.sort();
    let mut text = String::from("pub const FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().unwrap().to_string_lossy();
        text += &format!("    ({name:?}, include_str!({:?})),\n", f.display().to_string());
    }
    text += "];\n";
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("layouts.rs");
    fs::write(out, text).unwrap_or_else(|e| fail(&format!("could not write layouts.rs: {e}")));
}

/// The `[[bin]]` names of probes-ebpf: one per tool.
fn bin_names(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).unwrap_or_default();
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name").and_then(|r| r.trim().strip_prefix('=')) {
                names.push(v.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

fn fail(msg: &str) -> ! {
    eprintln!(
        "error: {msg}.\nThe kernel programs need the nightly toolchain with rust-src and \
         bpf-linker built against LLVM 22: run `cargo xtask setup` once, then build again."
    );
    std::process::exit(1);
}
