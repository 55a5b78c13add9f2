//! The bundled gateway (gateway/): Debian's nginx + lua-nginx-module started on
//! loopback from a config rendered under target/, with either the debug LuaJIT
//! built by `setup` or Debian's stock stripped one.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ljprobe_host::proc;
use serde::{Deserialize, Serialize};

use crate::{cmd, paths};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LuaJitBuild {
    /// `-g` build from Debian's luajit2 source, via LD_LIBRARY_PATH.
    Debug,
    /// Debian's libluajit2-5.1-2 as installed: stripped.
    Stock,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Runtime directory: rendered config, logs, pid file, temp files.
    pub prefix: PathBuf,
    pub port: u16,
    pub backend_port: u16,
    pub workers: u32,
    pub luajit: LuaJitBuild,
    /// A planted function made 20% slower by configuration (`GATEWAY_SLOWER`):
    /// the regression `ljprobe gate` must catch. Empty: none.
    #[serde(default)]
    pub slower: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: paths::target().join("gateway"),
            port: 18080,
            backend_port: 18081,
            workers: 1,
            luajit: LuaJitBuild::Debug,
            slower: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub running: bool,
    pub url: String,
    pub master_pid: Option<u32>,
    pub worker_pids: Vec<u32>,
    pub luajit: LuaJitBuild,
    /// The libluajit each worker mapped, as /proc/PID/maps shows it.
    pub libluajit: Vec<String>,
    pub prefix: PathBuf,
}

impl Config {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn conf_path(&self) -> PathBuf {
        self.prefix.join("conf/nginx.conf")
    }

    fn pid_file(&self) -> PathBuf {
        self.prefix.join("logs/nginx.pid")
    }

    /// nginx's access log (the tests' ground truth). At full rate it grows by
    /// about 12 MB a second: each start begins a new one, and benches empty it
    /// between runs (`truncate_access_log`).
    pub fn access_log(&self) -> PathBuf {
        self.prefix.join("logs/access.log")
    }

    /// Empties the access log of a running gateway: nginx appends (O_APPEND),
    /// so its next write lands at the new end.
    pub fn truncate_access_log(&self) {
        if let Ok(f) = fs::OpenOptions::new().write(true).open(self.access_log()) {
            let _ = f.set_len(0);
        }
    }

        fn state_file(&self) -> PathBuf {
        self.prefix.join("gateway.json")
    }

    /// The config a running gateway was started with, if one was.
    pub fn load(prefix: &Path) -> Option<Config> {
        serde_json::from_str(&fs::read_to_string(prefix.join("gateway.json")).ok()?).ok()
    }

    fn render(&self) -> Result<()> {
        let template_path = paths::gateway_src().join("conf/nginx.conf.tmpl");
        let template = fs::read_to_string(&template_path)
            .with_context(|| format!("cannot read {}", template_path.display()))?;
        let text = template
            .replace("{{PREFIX}}", &self.prefix.to_string_lossy())
            .replace("{{GATEWAY_DIR}}", &paths::gateway_src().to_string_lossy())
            .replace("{{PORT}}", &self.port.to_string())
            .replace("{{BACKEND_PORT}}", &self.backend_port.to_string())
            .replace("{{WORKERS}}", &self.workers.to_string())
            .replace("{{SLOWER}}", &self.slower);
        for dir in ["conf", "logs", "tmp"] {
            fs::create_dir_all(self.prefix.join(dir))?;
        }
        fs::write(self.conf_path(), text)?;
        fs::write(self.state_file(), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    fn master_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        proc::alive(pid).then_some(pid)
    }

    pub fn up(&self) -> Result<Status> {
        if self.master_pid().is_some() {
            eprintln!("gateway: already running in {}", self.prefix.display());
            return self.status();
        }
        self.render()?;
        let _ = fs::remove_file(self.access_log());
        let mut nginx = Command::new("nginx");
        nginx.arg("-p").arg(&self.prefix).arg("-c").arg(self.conf_path());
        match self.luajit {
            LuaJitBuild::Debug => {
                let lib = paths::luajit_debug_lib();
                if !lib.join("libluajit-5.1.so.2").exists() {
                    bail!("the debug LuaJIT is not built: run `cargo xtask setup` (or use --stock-luajit)");
                }
                // Same SONAME as Debian's: the lua module binds to ours instead.
                nginx.env("LD_LIBRARY_PATH", lib);
            }
            LuaJitBuild::Stock => {
                nginx.env_remove("LD_LIBRARY_PATH");
            }
        }
        cmd::run(&mut nginx).context("nginx did not start; see its error log under the prefix")?;
        self.wait_ready(Duration::from_secs(10))?;
        // The first worker can answer /health before the others have named
        // themselves "nginx: worker process": wait for all of them.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = self.status()?;
        while status.worker_pids.len() < self.workers as usize && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            status = self.status()?;
        }
        eprintln!("gateway: up at {} (master {:?}, workers {:?})", status.url, status.master_pid, status.worker_pids);
        Ok(status)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = http_get(self.port, "/health") {
                if resp.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway did not answer /health on port {} within {timeout:?}; see {}",
                    self.port,
                    self.prefix.join("logs/error.log").display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn status(&self) -> Result<Status> {
        let master = self.master_pid();
        let workers = master.map(proc::nginx_workers).unwrap_or_default();
        let libluajit = workers.iter().filter_map(|&w| mapped_luajit(w)).collect();
        Ok(Status {
            running: master.is_some(),
            url: self.url(),
            master_pid: master,
            worker_pids: workers,
            luajit: self.luajit,
            libluajit,
            prefix: self.prefix.clone(),
        })
    }

    pub fn down(&self) -> Result<()> {
        let Some(pid) = self.master_pid() else {
            eprintln!("gateway: not running");
            return Ok(());
        };
        // SIGTERM is nginx's fast shutdown; workers go with the master.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc::alive(pid) || !proc::nginx_workers(pid).is_empty() {
            if Instant::now() > deadline {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("gateway: stopped (master {pid})");
        Ok(())
    }
}

/// Stops the gateway when dropped: tests must not leave nginx behind, even when
/// an assertion fails.
pub struct Running {
    pub config: Config,
    pub status: Status,
}

impl Running {
    pub fn start(config: Config) -> Result<Running> {
        let status = config.up()?;
        Ok(Running { config, status })
    }

    pub fn worker(&self) -> u32 {
        self.status.worker_pids[0]
    }

    pub fn master(&self) -> u32 {
        self.status.master_pid.expect("a running gateway has a master")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.config.down();
    }
}

/// The libluajit a process mapped, as /proc/PID/maps shows it.
fn mapped_luajit(pid: u32) -> Option<String> {
    let maps = proc::maps(pid).ok()?;
    maps.into_iter()
        .filter_map(|m| m.file().map(str::to_string))
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("libluajit")))
}

/// A port on 127.0.0.1 free together with the next one (the gateway's backend
/// listens there): `preferred` if it is, else a pair the kernel hands out.
pub fn free_port_pair(preferred: Option<u16>) -> Result<u16> {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    if let Some(p) = preferred.filter(|&p| p < u16::MAX && free(p) && free(p + 1)) {
        return Ok(p);
    }
    for _ in 0..50 {
        let p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if p < u16::MAX && free(p) && free(p + 1) {
            return Ok(p);
        }
    }
    bail!("found no two free adjacent ports on 127.0.0.1")
}

/// A minimal HTTP/1.1 GET on loopback: enough to probe readiness and routes
/// without pulling an HTTP client into the build. Returns the raw response.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp)
}
