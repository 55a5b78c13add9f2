//! `ljprobe`: profile and diagnose live LuaJIT / OpenResty processes with eBPF.
//! The binary only parses arguments and reports errors; the work is in the
//! library (`lib.rs`).

use std::{path::PathBuf, process::ExitCode};

use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use ljprobe::tools;

/// musl's allocator (one lock for every thread) is slow for ljprobe's many
/// small allocations (decoding stacks, symbol and unwind tables): the static
/// build uses jemalloc, which brings it back to the glibc build's CPU time
/// (docs/bench.md#static-build).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ljprobe",
    // Version, commit and target triple, from build.rs.
    version = env!("LJPROBE_VERSION"),
    about = "Profile and diagnose live LuaJIT / OpenResty processes with eBPF",
    long_about = "Profile and diagnose live LuaJIT / OpenResty processes with eBPF: no restart, \
                  no code change, no kernel module, no kernel debuginfo. Run as root against a PID, or \
                  installed with file capabilities against your own processes."
)]
struct Cli {
    /// More output: -v shows messages from the kernel programs, -vv debug detail.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the kernel, and with --pid the target: is everything there to profile it?
    Doctor(tools::doctor::Args),
    /// On-CPU flame graph of a live LuaJIT process (Lua-level stacks).
    Cpu(tools::cpu::Args),
    /// Off-CPU flame graph: where threads wait (blocking syscalls, locks, preemption), in microseconds.
    Offcpu(tools::offcpu::Args),
    /// Event-loop iteration times as a log2 histogram, and the Lua functions that block the loop.
    EpollLoop(tools::epoll_loop::Args),
    /// The Lua heap over time: size, GC threshold and cycles, allocation rate, the collector's CPU share.
    Gc(tools::gc::Args),
    /// Allocation flame graph: which Lua code allocates on the heap, by bytes or count, with table growth.
    Alloc(tools::alloc::Args),
    /// Snapshot of the Lua heap: every object by type, the biggest holders named by their path from a root.
    Heap(tools::heap::Args),
    /// What stays live: allocations of the run not freed by its end, by Lua stack and holder, and the reference paths that grew.
    Leak(tools::leak::Args),
    /// Per-request latency of nginx: percentiles per location, and where each request's time went (phase, CPU, blocked, waiting).
    Latency(tools::latency::Args),
    /// Why code falls out of the JIT: VM states, trace aborts with LuaJIT's reasons, blacklisted loops, traces, and trace exits.
    Jit(tools::jit::Args),
    /// Run cpu, offcpu, epoll-loop, gc and alloc together and write one page of what they found (DIR/index.html).
    Report(tools::report::Args),
    /// Differential flame graph of two runs of a stack tool, and the functions that changed most.
    Diff(tools::diff::Args),
    /// CI regression gate: exit 1 when a function got more expensive than the baseline allows.
    Gate(tools::gate::Args),
    /// Write the layout file of a LuaJIT build from the DWARF of its -g build
    /// (a build ljprobe does not know yet: docs/supported-luajit.md).
    Layout(tools::layout::Args),
    /// Write the man pages and the bash, zsh and fish completions into DIR
    /// (`cargo xtask dist` ships them beside the binary).
    #[command(hide = true)]
    Generate {
        /// Directory to write into: DIR/man/*.1 and DIR/completions/*.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, turning `ljprobe ... | head` into a panic on the next
    // print; die quietly like any Unix filter instead (files are written first).
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Installed with capabilities: read files with the user's own rights (docs/install.md).
    ljprobe::system::lower_file_privileges();
    let cli = Cli::parse();
    if let Command::Generate { dir } = &cli.command {
        return match generate(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Command::Layout(args) = cli.command {
        return tools::layout::run(args).unwrap_or_else(|e| fail(&e));
    }
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("ljprobe", level)
        // aya-log attributes kernel messages to the program's own module path.
        .filter_module("doctor", level)
        .filter_module("cpu", level)
        .filter_module("offcpu", level)
        .filter_module("epoll_loop", level)
        .filter_module("gc", level)
        .filter_module("alloc", level)
        .filter_module("latency", level)
        .filter_module("jit", level)
        .format_timestamp(None)
        .init();

    // One thread: every tool's work runs in this `block_on` (nothing is
    // spawned), and a worker pool only added wake-ups of its own (the timer
    // woke a worker, which woke this thread): 70 a second where the 100 ms
    // tick needs 10, each one a cost to a busy target on a small VM.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Doctor(args) => tools::doctor::run(args).await,
            Command::Cpu(args) => tools::cpu::run(args).await,
            Command::Offcpu(args) => tools::offcpu::run(args).await,
            Command::EpollLoop(args) => tools::epoll_loop::run(args).await,
            Command::Gc(args) => tools::gc::run(args).await,
            Command::Alloc(args) => tools::alloc::run(args).await,
            Command::Heap(args) => tools::heap::run(args).await,
            Command::Leak(args) => tools::leak::run(args).await,
            Command::Latency(args) => tools::latency::run(args).await,
            Command::Jit(args) => tools::jit::run(args).await,
            Command::Report(args) => tools::report::run(args).await,
            Command::Diff(args) => tools::diff::run(args),
            Command::Gate(args) => tools::gate::run(args).map_err(|e| anyhow::Error::new(Gate(e))),
            Command::Generate { .. } | Command::Layout(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    if level >= log::LevelFilter::Info {
        // The kernel programs' own messages (aya-log) are read by tasks of
        // this runtime, which run only while it waits: give them a last turn.
        runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(20)).await });
    }
    match result {
        Ok(code) => code,
        // 1 is the gate's "regressed": a CI job must tell it from "could not judge".
        Err(e) if e.is::<Gate>() => {
            eprintln!("ljprobe: {:#}", e.downcast::<Gate>().expect("checked").0);
            ExitCode::from(2)
        }
        Err(e) => fail(&e),
    }
}

/// An error of `gate`, which exits 2 for it.
#[derive(Debug)]
struct Gate(anyhow::Error);

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Gate {}

/// Man pages (one for ljprobe, one per command) and completions, from the very
/// argument definitions this binary parses with, so they cannot drift from it.
fn generate(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap_complete::Shell;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // The commands users run: clap has no way to drop a subcommand, so the
    // hidden ones are left out by building the command again without them.
    let full = Cli::command();
    let mut cmd = clap::Command::new("ljprobe")
        .version(env!("LJPROBE_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .long_about(full.get_long_about().cloned().unwrap_or_default())
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| format!("cannot write man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "ljprobe", &completions)
            .with_context(|| format!("cannot write {shell} completions into {}", completions.display()))?;
    }
    Ok(())
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("ljprobe: {err:#}");
    ExitCode::FAILURE
}
