//! `ljprobe`: profile and diagnose live LuaJIT / OpenResty processes with eBPF.
//! The binary only parses arguments and reports errors; the work is in the
//! library (`lib.rs`).

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use ljprobe::tools;

#[derive(Parser)]
#[command(
    name = "ljprobe",
    version,
    about = "Profile and diagnose live LuaJIT / OpenResty processes with eBPF",
    long_about = "Profile and diagnose live LuaJIT / OpenResty processes with eBPF: no restart, \
                  no code change, no kernel module, no kernel debuginfo. Run as root against a PID."
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
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, turning `ljprobe ... | head` into a panic on the next
    // print; die quietly like any Unix filter instead (files are written first).
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("ljprobe", level)
        // aya-log attributes kernel messages to the program's own module path.
        .filter_module("doctor", level)
        .filter_module("cpu", level)
        .filter_module("offcpu", level)
        .filter_module("epoll_loop", level)
        .format_timestamp(None)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Doctor(args) => tools::doctor::run(args).await,
            Command::Cpu(args) => tools::cpu::run(args).await,
            Command::Offcpu(args) => tools::offcpu::run(args).await,
            Command::EpollLoop(args) => tools::epoll_loop::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("ljprobe: {err:#}");
    ExitCode::FAILURE
}
