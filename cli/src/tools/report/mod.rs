//! `ljprobe report`: the tools that apply, run together over the same window,
//! and one self-contained page of what they found (`DIR/index.html`), with
//! every tool's own files beside it.
//!
//! Each tool runs exactly as its own command would, with its options parsed
//! from the same definitions, so the page shows what `ljprobe cpu` and the
//! others show; findings are read back from the files they wrote.

pub mod findings;
pub mod page;
mod sections;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Parser;

use self::findings::Output;

#[derive(clap::Args)]
pub struct Args {
    /// An nginx master (all its workers), a worker, or any LuaJIT process.
    #[arg(long)]
    pid: u32,
    /// How long the tools run, together; Ctrl-C stops early and still writes the page.
    #[arg(long, default_value = "30s", value_parser = ljprobe_host::duration::parse)]
    duration: Duration,
    /// Directory for index.html and each tool's files [default: ljprobe-report-<pid>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The tools to run [default: all of them].
    #[arg(long, value_enum, value_delimiter = ',')]
    tools: Vec<Tool>,
    /// Give alloc `--no-watchpoint`: then no tool of the report sets a
    /// hardware watchpoint (on a VM one has killed a target, docs/gc.md#cost).
    #[arg(long)]
    no_watchpoint: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    Cpu,
    Offcpu,
    EpollLoop,
    Gc,
    Alloc,
}

impl Tool {
    const ALL: [Tool; 5] = [Tool::Cpu, Tool::Offcpu, Tool::EpollLoop, Tool::Gc, Tool::Alloc];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Cpu => "cpu",
            Tool::Offcpu => "offcpu",
            Tool::EpollLoop => "epoll-loop",
            Tool::Gc => "gc",
            Tool::Alloc => "alloc",
        }
    }

    fn writes_folded(self) -> bool {
        matches!(self, Tool::Cpu | Tool::Offcpu | Tool::Alloc)
    }
}

/// A tool's options as its own command parses them.
#[derive(Parser)]
struct As<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

fn parse<T: clap::Args>(tool: Tool, argv: &[String]) -> Result<T> {
    let argv = std::iter::once(tool.name().to_string()).chain(argv.iter().cloned());
    Ok(As::<T>::try_parse_from(argv).with_context(|| format!("the options of {}", tool.name()))?.args)
}

/// What one tool's run came to.
pub struct Ran {
    pub tool: Tool,
    /// Why it has nothing to show: it does not apply, or it failed.
    pub error: Option<String>,
    pub output: Output,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("ljprobe-report-{}", args.pid)));
    if dir.is_symlink() || dir.is_file() {
        bail!("cannot write the report into {}: it is not a directory", dir.display());
    }
    // Said once, before five tools would each say it, and before a directory
    // is made for a run that cannot happen.
    crate::system::require_privileges()?;
    // Every tool of the report looks at Lua: a process without a Lua VM is
    // refused as `gc` refuses it, not answered with a page of refusals.
    crate::target::aim::Aim::open(args.pid, true, "; for C stacks alone, use `ljprobe cpu --stack c`", "")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tools = if args.tools.is_empty() { Tool::ALL.to_vec() } else { args.tools.clone() };
    // Five live lines on one terminal would overwrite each other.
    crate::collect::quiet_live_line();

    let file = |tool: Tool, ext: &str| dir.join(format!("{}.{ext}", tool.name())).display().to_string();
    let argv = |tool: Tool| {
        let mut v = vec!["--pid".to_string(), args.pid.to_string(), "--duration".into(), format!("{}ms", args.duration.as_millis())];
        v.extend(["--svg".into(), file(tool, "svg"), "--json".into(), file(tool, "json")]);
        if tool.writes_folded() {
            v.extend(["--folded".into(), file(tool, "folded")]);
        }
        if tool == Tool::Alloc && args.no_watchpoint {
            v.push("--no-watchpoint".into());
        }
        v
    };
    let one = |tool: Tool| {
        let argv = argv(tool);
        async move {
            let result = match tool {
                Tool::Cpu => run_tool(parse(tool, &argv), super::cpu::run).await,
                Tool::Offcpu => run_tool(parse(tool, &argv), super::offcpu::run).await,
                Tool::EpollLoop => run_tool(parse(tool, &argv), super::epoll_loop::run).await,
                Tool::Gc => run_tool(parse(tool, &argv), super::gc::run).await,
                Tool::Alloc => run_tool(parse(tool, &argv), super::alloc::run).await,
            };
            (tool, result)
        }
    };
    // Joined on this task: the tools' futures need not be Send, and all of them
    // spend the run awaiting the same duration.
    let results = futures_util::future::join_all(tools.iter().map(|&t| one(t))).await;

    let ran: Vec<Ran> = results
        .into_iter()
        .map(|(tool, result)| match result {
            Ok(()) => Ran { tool, error: None, output: read_output(&dir, tool) },
            Err(e) => Ran { tool, error: Some(format!("{e:#}")), output: Output::default() },
        })
        .collect();
    if ran.iter().all(|r| r.error.is_some()) {
        let why: Vec<String> = ran.iter().map(|r| format!("{}: {}", r.tool.name(), r.error.as_deref().unwrap_or(""))).collect();
        bail!("no tool could run against PID {} ({})", args.pid, why.join("; "));
    }
    let page = sections::page(args.pid, args.duration, &dir, &ran);
    let index = dir.join("index.html");
    crate::output::write(&index, page::render(&page).as_bytes())?;
    println!();
    println!("ljprobe report: PID {}, {} finding(s)", args.pid, page.findings.len());
    for f in page.findings.iter().take(5) {
        println!("  - {}", f.text);
    }
    for r in ran.iter().filter(|r| r.error.is_some()) {
        println!("  {} did not run: {}", r.tool.name(), r.error.as_deref().unwrap_or_default());
    }
    println!("  report: {}", index.display());
    Ok(ExitCode::SUCCESS)
}

async fn run_tool<T, F>(args: Result<T>, run: impl FnOnce(T) -> F) -> Result<()>
where
    F: std::future::Future<Output = Result<ExitCode>>,
{
    run(args?).await.map(|_| ())
}

fn read_output(dir: &Path, tool: Tool) -> Output {
    let json = std::fs::read_to_string(dir.join(format!("{}.json", tool.name()))).ok().and_then(|t| serde_json::from_str(&t).ok());
    let stacks = tool
        .writes_folded()
        .then(|| std::fs::read_to_string(dir.join(format!("{}.folded", tool.name()))).ok())
        .flatten()
        .and_then(|t| ljprobe_flamegraph::diff::Stacks::parse(&t).ok());
    Output { json, stacks }
}
