//! `ljprobe doctor [--pid PID]`: can ljprobe work here, and on this process?
//! Checks the kernel, inspects the target's LuaJIT, then proves the whole eBPF
//! chain by loading `probes-ebpf/src/doctor.rs` and finding the live Lua VM.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::HashMap as BpfHashMap;
use ljprobe_common::{VmFound, VmLayout, VM_SOURCE_API_ARG};
use ljprobe_flamegraph::VmState;
use serde::Serialize;

use crate::{
    bpf::{self, attach, objects},
    system::{self, Check},
    target::{luajit::Symbols, layout::LayoutSource, Role, Target, TargetProcess},
};

#[derive(clap::Args)]
pub struct Args {
    /// Process to check: an nginx master (its workers are checked), a worker, or any LuaJIT program.
    #[arg(long)]
    pid: Option<u32>,
    /// How long to wait for the target to run Lua code before saying it ran none.
    #[arg(long, default_value = "2s", value_parser = ljprobe_host::duration::parse)]
    wait: Duration,
    /// Also write the report as JSON to FILE ("-" for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// API functions whose first argument is a `lua_State *`: nginx's lua module calls
/// `lua_resume` for every request it runs Lua for.
const API_HOOKS: &[&str] = &["lua_resume", "lua_pcall", "lua_call", "lua_gettop", "lua_settop"];

#[derive(Serialize)]
struct Report {
    kernel: Vec<Check>,
    /// What each tool can do on this kernel (docs/install.md).
    tools: Vec<ToolReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Target>,
    vms: Vec<VmReport>,
}

#[derive(Serialize)]
struct ToolReport {
    tool: &'static str,
    ok: bool,
    /// What the kernel (or our privileges) lacks for it, in words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
}

#[derive(Serialize)]
struct VmReport {
    pid: u32,
    found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    global_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_thread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    found_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    // A wrong PID is the likeliest mistake: say so before anything else.
    let target = args.pid.map(Target::open).transpose()?;
    let probe = system::Kernel::probe();
    let kernel = probe.checks();
    println!("Kernel");
    for c in &kernel {
        print_check(c);
    }
    let tools = tool_reports(&probe);
    let kernel_ok = kernel.iter().all(|c| c.ok) && tools.iter().all(|t| t.ok);
    let Some(target) = target else {
        if !system::privileged() {
            bail!("{}", system::NEED_PRIVILEGES);
        }
        let loaded = bpf::load(objects::DOCTOR, "doctor").and_then(|mut ebpf| {
            let prog: &mut aya::programs::PerfEvent =
                ebpf.program_mut("doctor_sample").context("doctor_sample missing")?.try_into()?;
            prog.load().map_err(|e| bpf::program_error("loading doctor_sample", e))
        });
        print_check(&Check {
            name: "eBPF load",
            ok: loaded.is_ok(),
            detail: match &loaded {
                Ok(()) => "a sampling program passed the kernel's verifier".into(),
                Err(e) => format!("{e:#}"),
            },
            fix: None,
        });
        print_tools(&tools);
        write_json(&args.json, &Report { kernel, tools, target: None, vms: vec![] })?;
        return Ok(if kernel_ok && loaded.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    };
    print_tools(&tools);
    if !system::privileged() {
        bail!("{}", system::NEED_PRIVILEGES);
    }

    let pid = target.pid;
    for p in &target.processes {
        print_process(p);
    }
    let lua = target.lua_processes();
    if lua.is_empty() {
        let root = &target.processes[0].process;
        let hint = if root.comm == "nginx" { " (is ngx_http_lua_module loaded?)" } else { "" };
        bail!(
            "process {pid} ({}) has no LuaJIT mapped{hint}: ljprobe profiles LuaJIT programs such as OpenResty or nginx+Lua workers",
            root.comm
        );
    }

    println!("\nLua VM (eBPF probe, waiting up to {:?} for Lua code to run)", args.wait);
    let found = find_vms(&lua, args.wait).await?;
    let mut vms = Vec::new();
    for p in &lua {
        let vm = vm_report(p, found.get(&p.process.pid));
        print_vm(&vm);
        vms.push(vm);
    }
    let missing: Vec<&TargetProcess> = lua.iter().copied().filter(|p| !found.contains_key(&p.process.pid)).collect();
    let exited: Vec<String> = missing.iter().filter(|p| !p.process.alive()).map(|p| p.process.pid.to_string()).collect();
    let idle: Vec<String> = missing.iter().filter(|p| p.process.alive()).map(|p| p.process.pid.to_string()).collect();
    let failure = if !exited.is_empty() {
        Some(format!("process {} exited before ljprobe saw its Lua VM", exited.join(", ")))
    } else if !idle.is_empty() {
        Some(format!(
            "no Lua VM seen in PID {} within {:?}: the target ran no Lua code meanwhile (send it some work, or raise --wait)",
            idle.join(", "),
            args.wait
        ))
    } else {
        None
    };
    drop(lua);
    write_json(&args.json, &Report { kernel, tools, target: Some(target), vms })?;
    if let Some(failure) = failure {
        bail!("{failure}");
    }
    Ok(if kernel_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Loads the doctor program, aims it at `procs`, and waits until each one's VM is
/// found, each one exits, or `wait` runs out.
async fn find_vms(procs: &[&TargetProcess], wait: Duration) -> Result<HashMap<u32, VmFound>> {
    let mut ebpf = bpf::load(objects::DOCTOR, "doctor")?;
    // An nginx master's workers are forks of one image, so they share one layout.
    let layout: VmLayout = procs[0].luajit.as_ref().map(|l| l.layout.offsets).context("no LuaJIT")?;
    let pids: Vec<u32> = procs.iter().map(|p| p.process.pid).collect();
    bpf::aim(&mut ebpf, &pids, layout)?;
    attach::cpu_clock(&mut ebpf, "doctor_sample", 499, None)?;
    for p in procs {
        let lj = p.luajit.as_ref().context("no LuaJIT")?;
        let hooks: Vec<&str> = API_HOOKS.iter().copied().filter(|f| lj.api.iter().any(|a| a == f)).collect();
        let n = attach::uprobes(&mut ebpf, "doctor_api", &lj.host_path, &hooks, p.process.pid)?;
        log::info!("pid {}: {n} API uprobes on {}", p.process.pid, lj.path);
    }

    let deadline = Instant::now() + wait;
    let found: BpfHashMap<_, u32, VmFound> =
        BpfHashMap::try_from(ebpf.map("FOUND").context("FOUND map missing")?)?;
    loop {
        let now: HashMap<u32, VmFound> = found.iter().filter_map(|r| r.ok()).collect();
        let pending = procs.iter().filter(|p| !now.contains_key(&p.process.pid) && p.process.alive()).count();
        if pending == 0 || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vm_report(p: &TargetProcess, found: Option<&VmFound>) -> VmReport {
    let pid = p.process.pid;
    let Some(f) = found else {
        let problem = if p.process.alive() { "no Lua code ran while we watched" } else { "the process exited" };
        return VmReport {
            pid,
            found: false,
            global_state: None,
            current_thread: None,
            vm_state: None,
            found_by: None,
            problem: Some(problem.into()),
        };
    };
    let found_by = if f.source == VM_SOURCE_API_ARG {
        format!("the lua_State argument of a LuaJIT API call (thread {})", f.tid)
    } else {
        format!("the interpreter's dispatch register in a CPU sample (thread {})", f.tid)
    };
    VmReport {
        pid,
        found: true,
        global_state: Some(format!("{:#x}", f.g)),
        current_thread: Some(format!("{:#x}", f.cur_l)),
        vm_state: Some(VmState::from_raw(f.vmstate).to_string()),
        found_by: Some(found_by),
        problem: None,
    }
}

/// Per tool: what the kernel checks say it lacks, and whether the kernel's
/// verifier accepts its programs (loaded, never attached, when we may load).
fn tool_reports(kernel: &system::Kernel) -> Vec<ToolReport> {
    system::TOOLS
        .iter()
        .map(|&tool| {
            let mut missing = kernel.missing_for(tool);
            if kernel.privileged {
                if let Err(e) = load_tool(tool) {
                    missing.push(e);
                }
            }
            ToolReport { tool, ok: missing.is_empty(), missing }
        })
        .collect()
}

/// Loads every program of `tool`'s object (its ring buffer shrunk to a page)
/// and drops them: the verifier's answer for this kernel, helpers included.
fn load_tool(tool: &str) -> Result<(), String> {
    let (object, ring): (&[u8], Option<&str>) = match tool {
        "doctor" => (objects::DOCTOR, None),
        "cpu" => (objects::CPU, Some("SAMPLES")),
        "offcpu" => (objects::OFFCPU, Some("SAMPLES")),
        "epoll-loop" => (objects::EPOLL_LOOP, Some("EVENTS")),
        _ => return Ok(()),
    };
    let entries: Vec<(&str, u32)> = ring.map(|r| (r, 4096)).into_iter().collect();
    let mut ebpf = bpf::load_sized(object, tool, &entries).map_err(|e| format!("{e:#}"))?;
    for (name, program) in ebpf.programs_mut() {
        let loaded = match program {
            aya::programs::Program::PerfEvent(p) => p.load(),
            aya::programs::Program::TracePoint(p) => p.load(),
            aya::programs::Program::UProbe(p) => p.load(),
            _ => continue,
        };
        if let Err(e) = loaded {
            return Err(verifier_refusal(name, e));
        }
    }
    Ok(())
}

/// The helpers ljprobe's programs call that older kernels lack, by number.
const HELPERS: &[(u32, &str)] = &[
    (67, "bpf_get_stack (Linux 4.18)"),
    (112, "bpf_probe_read_user (Linux 5.5)"),
    (113, "bpf_probe_read_kernel (Linux 5.5)"),
    (130, "bpf_ringbuf_output (Linux 5.8)"),
    (131, "bpf_ringbuf_reserve (Linux 5.8)"),
    (132, "bpf_ringbuf_submit (Linux 5.8)"),
    (158, "bpf_get_current_task_btf (Linux 5.11)"),
    (175, "bpf_task_pt_regs (Linux 5.15)"),
];

/// The verifier's refusal in one phrase: a helper this kernel lacks, if that is it.
fn verifier_refusal(program: &str, e: aya::programs::ProgramError) -> String {
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
        let log = verifier_log.to_string();
        log::debug!("verifier log for {program}:\n{log}");
        // "invalid func unknown#175" (older kernels), "unknown func bpf_x#175".
        let helper = log.lines().find_map(|l| {
            let rest = l.split_once("unknown func ").or_else(|| l.split_once("invalid func "))?.1;
            rest.rsplit_once('#')?.1.trim().parse::<u32>().ok()
        });
        if let Some(id) = helper {
            let name = HELPERS.iter().find(|h| h.0 == id).map_or_else(|| format!("BPF helper #{id}"), |h| h.1.to_string());
            return format!("the kernel lacks {name}, which its program {program} calls");
        }
    }
    format!("the kernel's verifier refused its program {program}: {e} (-vv shows the verifier log)")
}

fn print_tools(tools: &[ToolReport]) {
    println!("\nTools (what each needs of the kernel: docs/install.md)");
    for t in tools {
        let name = if t.tool == "doctor" { "doctor --pid" } else { t.tool };
        if t.ok {
            println!("  ok    {name:<14} everything it needs is here");
            continue;
        }
        println!("  FAIL  {name:<14} will not work: needs {}", t.missing[0]);
        for m in &t.missing[1..] {
            println!("        {:<14} and {m}", "");
        }
    }
}

fn print_check(c: &Check) {
    let mark = if c.ok { "ok  " } else { "FAIL" };
    println!("  {mark}  {:<14} {}", c.name, c.detail);
    if let Some(fix) = &c.fix {
        println!("        -> {fix}");
    }
}

fn print_process(p: &TargetProcess) {
    let role = match p.role {
        Role::NginxMaster => "nginx master",
        Role::NginxWorker => "nginx worker",
        Role::Process => "process",
    };
    println!("\nProcess {} ({role}: {})", p.process.pid, p.process.cmdline);
    let Some(lj) = &p.luajit else {
        println!("  LuaJIT       not mapped");
        return;
    };
    let embedding = match lj.embedding {
        crate::target::luajit::Embedding::SharedLibrary => "shared library",
        crate::target::luajit::Embedding::Static => "linked statically",
    };
    println!("  LuaJIT       {} ({embedding})", lj.path);
    let fork = if lj.openresty_fork { ", OpenResty fork" } else { "" };
    println!("  version      {}{fork}", lj.version.as_deref().unwrap_or("unknown"));
    let symbols = match &lj.symbols {
        Symbols::Symtab { count } => format!("{count} internal lj_* symbols in .symtab"),
        Symbols::DebugFile { path, count } => {
            format!("{count} internal lj_* symbols in {}", path.display())
        }
        Symbols::Missing { debuglink } => match debuglink {
            Some(link) => format!("stripped: its debug file {link} is not installed (looked under /usr/lib/debug)"),
            None => "stripped, no debug file".into(),
        },
    };
    println!("  symbols      {symbols}");
    let l = &lj.layout;
    let layout = match &l.source {
        LayoutSource::Dwarf { path, same_as_known: true } => {
            format!("{} (from DWARF in {}, the same as the known build)", l.name, path.display())
        }
        LayoutSource::Dwarf { path, same_as_known: false } => format!(
            "VM offsets from DWARF in {}; the rest from the known build {} (not the same VM offsets)",
            path.display(),
            l.name
        ),
        LayoutSource::Builtin { how, note } => {
            let note = note.as_deref().map(|n| format!("; {n}")).unwrap_or_default();
            let checked = if l.checked_live { "" } else { ", checked against the live VM below" };
            format!("{}: chosen by {how}{checked}{note}", l.name)
        }
    };
    println!("  layout       {layout}");
    println!("  build        {}", l.build.describe);
    match l.gc64 {
        true => println!("  GC64         yes"),
        false => println!("  GC64         no: 32-bit object references"),
    }
    println!("  unwind info  {}", if lj.has_eh_frame { ".eh_frame present" } else { "no .eh_frame" });
    println!("  works here");
    println!("    Lua stacks (cpu, offcpu, epoll-loop, latency)   yes, once the VM check below passes");
    let cfi = if lj.has_eh_frame { "yes (CFI)" } else { "no: the library has no .eh_frame" };
    println!("    C stacks (--stack c, mixed)                     {cfi}");
    let vm_tools = if l.gc64 { "yes" } else { "no: they read GC64 builds only for now" };
    println!("    gc, alloc, heap, leak, jit                      {vm_tools}");
    let internal = if lj.symbols.available() {
        "yes".to_string()
    } else {
        "no: needs LuaJIT's internal symbols (a -g build, or its debug file under /usr/lib/debug)".to_string()
    };
    println!("    table resizes in alloc (lj_tab_resize)          {internal}");
}

fn print_vm(v: &VmReport) {
    if v.found {
        println!(
            "  pid {:<8} global_State at {}, current coroutine {}; VM {}",
            v.pid,
            v.global_state.as_deref().unwrap_or("?"),
            v.current_thread.as_deref().unwrap_or("?"),
            v.vm_state.as_deref().unwrap_or("?")
        );
        println!("               found from {}", v.found_by.as_deref().unwrap_or("?"));
    } else {
        println!("  pid {:<8} not found: {}", v.pid, v.problem.as_deref().unwrap_or("?"));
    }
}

fn write_json(path: &Option<PathBuf>, report: &Report) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    if crate::report::write_json(path, report)? {
        println!("\nJSON report written to {}", path.display());
    }
    Ok(())
}
