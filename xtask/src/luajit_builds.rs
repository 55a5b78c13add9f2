//! The LuaJIT builds `setup` makes besides Debian's installed `luajit2`: OpenResty's
//! fork with `-g` (target/luajit-debug, the one most tests use), and under
//! target/luajit-builds/<name>/ Debian's upstream LuaJIT as shipped, the same
//! upstream source with `-g`, and both sources with `-g` and GC64 disabled.
//! Each is made once; a second `setup` checks and returns in seconds.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, paths, setup};

/// Debian's source package of OpenResty's LuaJIT fork (the installed `luajit2`).
pub const OPENRESTY: &str = "luajit2";
/// Debian's source package of upstream LuaJIT 2.1 (2.1.0~beta3+git20220320 on bookworm).
pub const UPSTREAM: &str = "luajit";
/// `XCFLAGS` of the builds with 32-bit GC references (heap below 2 GB on x86_64).
const NO_GC64: &str = "-DLUAJIT_DISABLE_GC64";
/// Both sources install their Lua modules (`jit/p.lua`, ...) here under the prefix.
const JIT_DIR: &str = "share/luajit-2.1.0-beta3";
/// Debian's multiarch library directory of the binary packages.
const MULTIARCH: &str = "x86_64-linux-gnu";

/// Where a build's files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Debian's binary packages, not installed (upstream `luajit` conflicts with
    /// `luajit2`) but unpacked with `dpkg -x` under <dir>/root.
    Debs(&'static [&'static str]),
    /// A Debian source package built with `CCDEBUG=-g` and these `XCFLAGS`.
    Source { package: &'static str, xcflags: &'static str },
}

#[derive(Debug, Clone, Copy)]
pub struct LuaJit {
    pub name: &'static str,
    pub origin: Origin,
    /// What it is, for `setup`'s messages.
    pub what: &'static str,
}

pub const BUILDS: &[LuaJit] = &[
    LuaJit {
        name: "upstream-stock",
        origin: Origin::Debs(&["luajit", "libluajit-5.1-2", "libluajit-5.1-common"]),
        what: "Debian's upstream LuaJIT as shipped (stripped, GC64)",
    },
    LuaJit {
        name: "upstream-debug",
        origin: Origin::Source { package: UPSTREAM, xcflags: "" },
        what: "upstream LuaJIT (Debian source package luajit) with -g",
    },
    LuaJit {
        name: "openresty-nogc64-debug",
        origin: Origin::Source { package: OPENRESTY, xcflags: NO_GC64 },
        what: "OpenResty's LuaJIT (Debian source package luajit2) with -g and GC64 disabled",
    },
    LuaJit {
        name: "upstream-nogc64-debug",
        origin: Origin::Source { package: UPSTREAM, xcflags: NO_GC64 },
        what: "upstream LuaJIT (Debian source package luajit) with -g and GC64 disabled",
    },
];

/// One of `BUILDS` by name.
pub fn find(name: &str) -> Option<&'static LuaJit> {
    BUILDS.iter().find(|b| b.name == name)
}

impl LuaJit {
    /// target/luajit-builds/<name>.
    pub fn dir(&self) -> PathBuf {
        paths::luajit_build(self.name)
    }

    /// The install prefix: `bin/luajit`, `share/luajit-2.1.0-beta3/jit/`, ...
    pub fn prefix(&self) -> PathBuf {
        match self.origin {
            Origin::Debs(_) => self.dir().join("root/usr"),
            Origin::Source { .. } => self.dir(),
        }
    }

    /// The `luajit` executable. Every build here has the VM linked into it: it
    /// does not load the library below.
    pub fn luajit(&self) -> PathBuf {
        self.prefix().join("bin/luajit")
    }

    /// The directory of `libluajit-5.1.so.2`, for `LD_LIBRARY_PATH`.
    pub fn lib_dir(&self) -> PathBuf {
        match self.origin {
            Origin::Debs(_) => self.prefix().join("lib").join(MULTIARCH),
            Origin::Source { .. } => self.prefix().join("lib"),
        }
    }

    pub fn lib(&self) -> PathBuf {
        self.lib_dir().join("libluajit-5.1.so.2")
    }

    /// `LUA_PATH` that finds this build's own `jit/*.lua` (for `-jp`, `-jv`):
    /// the stock binary's built-in path is /usr/share/luajit-2.1.0-beta3, where
    /// the installed `luajit2`'s modules are.
    pub fn lua_path(&self) -> String {
        format!("{}/?.lua;;", self.prefix().join(JIT_DIR).display())
    }

    /// `luajit` with `LUA_PATH` set.
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.luajit());
        c.env("LUA_PATH", self.lua_path());
        c
    }

    pub fn gc64(&self) -> bool {
        !matches!(self.origin, Origin::Source { xcflags: NO_GC64, .. })
    }

    /// Built with `-g`: `lj_*` symbols and DWARF.
    pub fn debug(&self) -> bool {
        matches!(self.origin, Origin::Source { .. })
    }

    fn present(&self) -> bool {
        self.luajit().exists() && self.lib().exists() && self.prefix().join(JIT_DIR).join("jit/p.lua").exists()
    }

    fn make(&self) -> Result<()> {
        match self.origin {
            Origin::Debs(packages) => unpack_debs(packages, &self.dir()),
            Origin::Source { package, xcflags } => {
                let unpacked = unpacked_source(package)?;
                // GC64 builds build in the unpacked tree, the others in a copy of it
                // (LuaJIT's make does not notice changed flags).
                let src = if xcflags.is_empty() {
                    unpacked
                } else {
                    // Under the same directory name, which the DWARF's comp_dir shows.
                    let dir = paths::luajit_build_src(self.name);
                    let _ = fs::remove_dir_all(&dir);
                    fs::create_dir_all(&dir)?;
                    cmd::run(Command::new("cp").arg("-a").arg(&unpacked).arg(&dir))?;
                    dir.join(unpacked.file_name().context("source tree without a name")?)
                };
                build(&src, xcflags, &self.prefix())
            }
        }
    }
}

/// `setup`'s step: every build of `BUILDS` that is missing.
pub fn setup() -> Result<()> {
    for b in BUILDS {
        if b.present() {
            eprintln!("setup: LuaJIT {} present in {}", b.name, b.dir().display());
            continue;
        }
        eprintln!("setup: making LuaJIT {}: {}, in {}", b.name, b.what, b.dir().display());
        b.make().with_context(|| format!("LuaJIT build {}", b.name))?;
        if !b.present() {
            bail!("LuaJIT {} was made but {} or {} is missing", b.name, b.luajit().display(), b.lib().display());
        }
    }
    Ok(())
}

/// A `-g` build of OpenResty's LuaJIT from Debian's own `luajit2` source package:
/// the same code as the stock library, with `lj_*` symbols and DWARF.
pub fn luajit_debug() -> Result<()> {
    let prefix = paths::luajit_debug();
    let lib = paths::luajit_debug_lib().join("libluajit-5.1.so.2");
    if lib.exists() {
        eprintln!("setup: debug LuaJIT present in {}", prefix.display());
        return Ok(());
    }
    eprintln!("setup: building OpenResty's LuaJIT (Debian source package luajit2) with -g into {}", prefix.display());
    build(&unpacked_source(OPENRESTY)?, "", &prefix)?;
    if !lib.exists() {
        bail!("the LuaJIT build finished but {} is missing", lib.display());
    }
    Ok(())
}

/// `make clean`, `make -j2 CCDEBUG=-g [XCFLAGS=..] PREFIX=..` and `make install`
/// in the source tree `src`, into a fresh `prefix` with a `bin/luajit`.
fn build(src: &Path, xcflags: &str, prefix: &Path) -> Result<()> {
    let prefix_arg = format!("PREFIX={}", prefix.display());
    cmd::run(Command::new("make").arg("clean").current_dir(src))?;
    let mut make = Command::new("make");
    make.args(["-j2", "CCDEBUG=-g"]);
    if !xcflags.is_empty() {
        make.arg(format!("XCFLAGS={xcflags}"));
    }
    cmd::run(make.arg(&prefix_arg).current_dir(src))?;
    let _ = fs::remove_dir_all(prefix);
    cmd::run(Command::new("make").args(["install", &prefix_arg]).current_dir(src))?;
    // Upstream 2.1 betas install only bin/luajit-2.1.0-beta3 ("the development
    // releases deliberately do NOT install a symlink"); OpenResty's make install does.
    let bin = prefix.join("bin");
    if bin.join("luajit").symlink_metadata().is_err() {
        let versioned = fs::read_dir(&bin)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("luajit-"))
            .with_context(|| format!("make install put no luajit-* in {}", bin.display()))?;
        std::os::unix::fs::symlink(&versioned, bin.join("luajit"))?;
    }
    Ok(())
}

/// The unpacked, patched tree of a Debian source package (`apt-get source`
/// applies Debian's patches), unpacked once under `paths::luajit_src`.
fn unpacked_source(package: &str) -> Result<PathBuf> {
    let work = paths::luajit_src(package);
    if let Some(tree) = source_tree(&work).filter(|t| fully_unpacked(t)) {
        return Ok(tree);
    }
    setup::deb_src()?;
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    cmd::run(Command::new("apt-get").args(["source", "-q", package]).current_dir(&work))?;
    let tree = source_tree(&work).context("apt-get source unpacked no directory")?;
    if !fully_unpacked(&tree) {
        bail!("apt-get source {package} left {} without all of its patches applied", tree.display());
    }
    Ok(tree)
}

fn source_tree(work: &Path) -> Option<PathBuf> {
    fs::read_dir(work).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.is_dir())
}

/// dpkg-source unpacks the upstream tarball, then debian/, then applies the
/// patches listed in debian/patches/series, recording each in .pc/applied-patches:
/// both packages here have patches, so equal lists mean the unpacking finished.
fn fully_unpacked(tree: &Path) -> bool {
    let names = |p: PathBuf| -> Option<Vec<String>> {
        let text = fs::read_to_string(p).ok()?;
        Some(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
        )
    };
    tree.join("Makefile").exists()
        && matches!(
            (names(tree.join("debian/patches/series")), names(tree.join(".pc/applied-patches"))),
            (Some(series), Some(applied)) if !series.is_empty() && series == applied
        )
}

/// `apt-get download` the packages into a scratch directory, `dpkg -x` each into
/// <dir>/root (through a temporary directory, so a half-unpacked root never counts).
fn unpack_debs(packages: &[&str], dir: &Path) -> Result<()> {
    let scratch = dir.join("debs");
    let tmp = dir.join("root.tmp");
    for d in [&scratch, &tmp] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir_all(d)?;
    }
    cmd::run(Command::new("apt-get").args(["download", "-q"]).args(packages).current_dir(&scratch))?;
    let mut debs: Vec<PathBuf> = fs::read_dir(&scratch)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    if debs.len() != packages.len() {
        bail!("apt-get download gave {} .deb files for {} packages", debs.len(), packages.len());
    }
    for deb in &debs {
        cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(&tmp))?;
    }
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root)?;
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let stock = find("upstream-stock").unwrap();
        assert!(stock.gc64() && !stock.debug());
        assert!(stock.luajit().ends_with("luajit-builds/upstream-stock/root/usr/bin/luajit"));
        assert!(stock.lib().ends_with("root/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2"));
        let nogc = find("upstream-nogc64-debug").unwrap();
        assert!(!nogc.gc64() && nogc.debug());
        assert!(nogc.lib().ends_with("luajit-builds/upstream-nogc64-debug/lib/libluajit-5.1.so.2"));
        assert_eq!(
            nogc.lua_path(),
            format!("{}/share/luajit-2.1.0-beta3/?.lua;;", paths::luajit_build("upstream-nogc64-debug").display())
        );
        assert!(find("upstream-debug").unwrap().gc64());
    }

    #[test]
    fn unpacked_means_every_patch_applied() {
        let tree = std::env::temp_dir().join(format!("ljprobe-xtask-unpacked-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(tree.join("debian/patches")).unwrap();
        fs::create_dir_all(tree.join(".pc")).unwrap();
        fs::write(tree.join("Makefile"), "").unwrap();
        fs::write(tree.join("debian/patches/series"), "a.patch\n# note\nb.patch\n").unwrap();
        fs::write(tree.join(".pc/applied-patches"), "a.patch\n").unwrap();
        assert!(!fully_unpacked(&tree));
        fs::write(tree.join(".pc/applied-patches"), "a.patch\nb.patch\n").unwrap();
        assert!(fully_unpacked(&tree));
        fs::remove_dir_all(&tree).unwrap();
    }
}
