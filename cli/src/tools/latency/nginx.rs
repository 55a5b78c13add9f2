//! Finding what the latency probe needs in a target: nginx's program and its
//! exported functions, the Lua module's, and where nginx keeps a request's
//! fields. The layout is Debian's nginx 1.22 (`--with-compat`, which fixes the
//! request struct whatever modules are built in), from nginx's own headers by
//! `xtask/data/nginx_offsets.c`, checked instruction by instruction against
//! the stripped binary (docs/latency.md#layout); every request the probe
//! describes is checked again (`Requests::plausible`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ljprobe_common::latency::NginxLayout;
use object::{Object, ObjectSymbol};

use crate::{
    lua::{Memory, ProcMem},
    target::{elf, Process},
};

const NGINX_1_22: NginxLayout = NginxLayout {
    r_connection: 8,
    r_loc_conf: 0x28,
    r_upstream_states: 0x50,
    r_main: 0x468,
    r_uri: 0x3f0,
    r_method_name: 0x430,
    r_status: 0x288,
    r_err_status: 0x4e8,
    r_start_sec: 0x3c0,
    r_start_msec: 0x3c8,
    core_ctx_index: 0,
    us_size: 72,
    us_connect_time: 16,
    us_header_time: 24,
    us_response_time: 8,
    _pad: 0,
};

/// Versions whose request layout is known, as nginx names itself in its binary.
const KNOWN: &[(&str, NginxLayout)] = &[("nginx/1.22.", NGINX_1_22)];

/// nginx functions probed, and what each tells (probes-ebpf/src/latency.rs).
/// Each costs a trap into the kernel per call (about 1.5 µs here), so the set
/// is the least that tells which request runs: calls that only repeat what
/// an earlier one said (`ngx_http_finalize_request`, `ngx_http_core_find_config_phase`)
/// are left out.
pub const RUNS: &str = "ngx_http_core_run_phases";
pub const CREATE: &str = "ngx_http_create_request";
pub const FREE: &str = "ngx_http_free_request";
pub const ACCESS: &str = "ngx_http_core_post_rewrite_phase";
pub const CONTENT: &str = "ngx_http_core_content_phase";
pub const UPSTREAM: &str = "ngx_http_upstream_init";
pub const LUA_RUNS: &str = "ngx_http_lua_run_thread";

pub struct Nginx {
    pub version: String,
    pub layout: NginxLayout,
    /// The probed functions: their object (nginx, or lua-nginx-module's if
    /// loaded) and the file offset of their cheapest probe point (`uprobe_entry`).
    pub offsets: Vec<(PathBuf, &'static str, u64)>,
    /// Where `ngx_stat_requests` (stub_status's count of every request the
    /// server took, in shared memory) is in the process, if it has one.
    stat_requests: Option<u64>,
}

impl Nginx {
    /// nginx in process `p`, or one sentence saying why not.
    pub fn find(p: &Process) -> Result<Nginx> {
        let exe = PathBuf::from(&p.exe);
        // Through /proc: the program as the process runs it, even if replaced on disk.
        let data = elf::read_file(Path::new(&format!("/proc/{}/exe", p.pid)))
            .with_context(|| format!("cannot read the program of PID {} ({})", p.pid, p.comm))?;
        let file = object::File::parse(&*data).with_context(|| format!("{} is not an ELF file", exe.display()))?;
        let exported = |name: &str| file.dynamic_symbols().find(|s| s.is_definition() && s.name() == Ok(name));
        if exported(FREE).is_none() {
            if !has(&data, b"nginx/") {
                bail!(
                    "process {} ({}) is not nginx: `ljprobe latency` follows nginx's HTTP requests; for another LuaJIT program use `ljprobe cpu` or `ljprobe offcpu`",
                    p.pid,
                    p.comm
                );
            }
            bail!(
                "{} does not export nginx's functions (ngx_http_free_request is not in its dynamic symbols), so requests cannot be followed: build nginx with `--with-ld-opt=-Wl,-E` as Debian and OpenResty do",
                exe.display()
            );
        }
        let (prefix, layout) = KNOWN.iter().find(|(v, _)| has(&data, v.as_bytes())).copied().with_context(|| {
            format!(
                "{} is {}, whose request layout ljprobe does not know (known: nginx 1.22 built --with-compat, Debian 12's): file an issue with `nginx -V`",
                exe.display(),
                version(&data).unwrap_or_else(|| "an unknown nginx version".into())
            )
        })?;
        let version = version(&data).unwrap_or_else(|| prefix.trim_end_matches('.').into());
        for f in [RUNS, CREATE, ACCESS, CONTENT, UPSTREAM] {
            if exported(f).is_none() {
                bail!("{} does not export {f}, which `ljprobe latency` probes", exe.display());
            }
        }
        let core = exported("ngx_http_core_module").context("nginx does not export ngx_http_core_module")?;
        let bias = elf::load_bias(&file, &p.maps()?, &p.exe).with_context(|| format!("PID {} does not map {}", p.pid, exe.display()))?;
        let mut layout = layout;
        layout.core_ctx_index = core_ctx_index(p, bias + core.address())?;
        let mut offsets: Vec<(PathBuf, &'static str, u64)> = [RUNS, CREATE, FREE, ACCESS, CONTENT, UPSTREAM]
            .iter()
            .filter_map(|f| Some((exe.clone(), *f, elf::exported_probe_offset(&data, &file, f)?)))
            .collect();
        // lua-nginx-module's object, if loaded (a module `.so` or built in).
        if let Some(lua) = &lua_module(p) {
            let data = elf::read_file(&p.host_path(&lua.to_string_lossy()))?;
            let so = object::File::parse(&*data)?;
            if let Some(off) = elf::exported_probe_offset(&data, &so, LUA_RUNS) {
                offsets.push((lua.clone(), LUA_RUNS, off));
            }
        }
        let stat_requests = exported("ngx_stat_requests").map(|s| bias + s.address());
        Ok(Nginx { version, layout, offsets, stat_requests })
    }

    /// The number of requests nginx has taken so far, all workers together
    /// (stub_status's counter), if this build counts them.
    /// `p` is the process `find` looked at (or a process it forked: the
    /// program is where `find` saw it).
    pub fn requests_taken(&self, p: &Process) -> Option<u64> {
        let mem = ProcMem::open(p.pid).ok()?;
        let counter = mem.read_u64(self.stat_requests?)?;
        mem.read_u64(counter)
    }
}

fn has(data: &[u8], needle: &[u8]) -> bool {
    data.windows(needle.len()).any(|w| w == needle)
}

/// `nginx/1.22.1` as the binary spells its version.
fn version(data: &[u8]) -> Option<String> {
    let at = data.windows(8).position(|w| w == b"nginx/1.")?;
    let tail = &data[at..data.len().min(at + 24)];
    let end = tail.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/')).unwrap_or(tail.len());
    Some(String::from_utf8_lossy(&tail[..end]).into_owned())
}

/// `ngx_http_core_module.ctx_index` in the live process: the first word of
/// the module struct, at `addr` there.
fn core_ctx_index(p: &Process, addr: u64) -> Result<u32> {
    let mem = ProcMem::open(p.pid)?;
    let index = mem.read_u64(addr).with_context(|| format!("cannot read ngx_http_core_module in PID {}", p.pid))?;
    if index > 64 {
        bail!("ngx_http_core_module.ctx_index reads {index} in PID {}: the layout does not fit this nginx", p.pid);
    }
    Ok(index as u32)
}

/// The object exporting `ngx_http_lua_run_thread` among those the target maps.
fn lua_module(p: &Process) -> Option<PathBuf> {
    let maps = p.maps().ok()?;
    let mut files: Vec<&str> = maps.iter().filter(|m| m.executable()).filter_map(|m| m.file()).collect();
    files.dedup();
    files.into_iter().filter(|f| f.contains("lua")).map(PathBuf::from).find(|f| {
        let Ok(data) = elf::read_file(&p.host_path(&f.to_string_lossy())) else { return false };
        object::File::parse(&*data)
            .is_ok_and(|o| o.dynamic_symbols().any(|s| s.is_definition() && s.name() == Ok(LUA_RUNS)))
    })
}
