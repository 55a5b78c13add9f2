//! Needs root: /proc/PID/{mem,syscall,map_files} of other processes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object::{Object, ObjectSymbol};

use super::cfi::{ObjectCfi, Rule, Saved};
use super::maps::{find, parse_exec_maps};
use super::unwind::{step, Regs};
use super::{StackCopy, Symbolizer, Unwinder};

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const STACK: usize = 16 * 1024;

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "native:: tests must run as root"
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(argv: &[&str]) -> Killed {
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {argv:?}: {e}"));
    Killed(child)
}

/// Up to `len` bytes of `pid`'s memory at `addr`, stopping at the first
/// unreadable page (the stack's top end).
fn read_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let f = File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut out = Vec::with_capacity(len);
    let mut page = [0u8; 4096];
    while out.len() < len {
        let at = addr + out.len() as u64;
        // Page-sized steps aligned to the page boundary so that a partial
        // last page is still read.
        let want = ((4096 - (at % 4096)) as usize).min(len - out.len());
        match f.read_at(&mut page[..want], at) {
            Ok(n) if n > 0 => out.extend_from_slice(&page[..n]),
            _ => break,
        }
    }
    out
}

/// (sp, pc) while the task sits in a system call.
fn syscall_regs(pid: u32) -> (u64, u64) {
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).expect("syscall");
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() >= 9 {
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
            return (hex(f[7]), hex(f[8]));
        }
    }
    panic!("pid {pid} never blocked in a system call");
}

struct Trace {
    addrs: Vec<u64>,
    names: Vec<String>,
}

fn trace_blocked(argv: &[&str]) -> Trace {
    assert_root();
    let child = spawn(argv);
    let pid = child.0.id();
    let (sp, pc) = syscall_regs(pid);
    let stack = read_mem(pid, sp, STACK);
    assert!(stack.len() >= 512, "read only {} stack bytes", stack.len());
    // /proc/PID/syscall has no rbp: the frames here all have rsp-based CFAs
    // (glibc and LuaJIT are built without frame pointers), so 0 = unknown.
    let copy = StackCopy {
        rip: pc,
        rsp: sp,
        rbp: 0,
        stack: &stack,
    };
    let mut u = Unwinder::new(pid).expect("unwinder");
    let addrs = u.unwind(&copy, 64);
    let names = Symbolizer::new(pid).names(&addrs, true);
    for (a, n) in addrs.iter().zip(&names) {
        eprintln!("{a:#016x} {n}");
    }
    drop(child);
    Trace { addrs, names }
}

fn position(names: &[String], pred: impl Fn(&str) -> bool) -> Option<usize> {
    names.iter().position(|n| pred(n))
}

fn is_start(n: &str) -> bool {
    n == "main" || n.starts_with("__libc_start_")
}

fn check_common(t: &Trace, min_depth: usize, top_fn: &str) {
    assert!(
        t.addrs.len() >= min_depth,
        "depth {} < {min_depth}: {:?}",
        t.addrs.len(),
        t.names
    );
    let top = position(&t.names, |n| n.contains(top_fn)).expect("no libc syscall wrapper");
    assert!(top <= 2, "{top_fn} at {top}: {:?}", t.names);
    let start = position(&t.names, is_start).expect("no main / __libc_start_*");
    assert!(
        start + 4 >= t.names.len(),
        "start frame {start} not near the bottom: {:?}",
        t.names
    );
}

#[test]
fn live_stock_luajit() {
    let t = trace_blocked(&["/usr/bin/luajit", "-e", "io.read()"]);
    check_common(&t, 5, "read");
    // Stripped: only exported lua_*/luaL_* have names; internal lj_* frames
    // come out as "luajit+0x...".
    let lj = |n: &str| n.starts_with("lua") || n.starts_with("lj_") || n.starts_with("luajit+");
    assert!(
        position(&t.names, lj).is_some(),
        "no LuaJIT frame: {:?}",
        t.names
    );
}

#[test]
fn live_debug_luajit() {
    let bin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/luajit-debug/bin/luajit"
    );
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} missing: build it first"
    );
    let t = trace_blocked(&[bin, "-e", "io.read()"]);
    check_common(&t, 8, "read");
    // lj_cf_io_read tail-calls io_file_read, so it has no frame of its own;
    // lj_BC_FUNCC is the interpreter (assembly with hand-written CFI).
    for want in ["io_file_read", "lj_BC_FUNCC", "lua_pcall", "main"] {
        // From .symtab alone (no DWARF reader hit) GCC clones keep their
        // suffix: "io_file_read.isra.0".
        let hit = |n: &String| n == want || n.starts_with(&format!("{want}."));
        assert!(t.names.iter().any(hit), "no {want}: {:?}", t.names);
    }
}

#[test]
fn live_sleep() {
    let t = trace_blocked(&["/usr/bin/sleep", "30"]);
    check_common(&t, 3, "sleep");
}

#[inline(never)]
fn own_stack(depth: u32) -> (Vec<u64>, Vec<String>) {
    if depth > 0 {
        let r = own_stack(depth - 1);
        return std::hint::black_box(r);
    }
    let (rip, rsp, rbp): (u64, u64, u64);
    // SAFETY: reads registers only.
    unsafe {
        std::arch::asm!("lea {}, [rip]", "mov {}, rsp", "mov {}, rbp",
            out(reg) rip, out(reg) rsp, out(reg) rbp);
    }
    let pid = std::process::id();
    let stack = read_mem(pid, rsp, STACK);
    let copy = StackCopy {
        rip,
        rsp,
        rbp,
        stack: &stack,
    };
    let addrs = Unwinder::new(pid).expect("unwinder").unwind(&copy, 32);
    let names = Symbolizer::new(pid).names(&addrs, true);
    (addrs, names)
}

#[test]
fn unwinds_own_stack() {
    assert_root();
    let (addrs, names) = own_stack(3);
    eprintln!("{names:#?}");
    assert!(addrs.len() >= 6, "{names:?}");
    let recursed = names.iter().filter(|n| n.contains("own_stack")).count();
    assert!(recursed >= 4, "{names:?}");
    assert!(
        names.iter().any(|n| n.contains("unwinds_own_stack")),
        "{names:?}"
    );
}

fn libc_cfi_and_sym(name: &str) -> (ObjectCfi, u64) {
    let data = std::fs::read(LIBC).expect("libc");
    let file = object::File::parse(&*data).expect("parse libc");
    let addr = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .unwrap_or_else(|| panic!("{name} not in libc .dynsym"));
    let cfi = ObjectCfi::parse(&data).expect("libc CFI");
    (cfi, addr)
}

#[test]
fn libc_rule_at_function_entry() {
    let (mut cfi, addr) = libc_cfi_and_sym("read");
    assert!(cfi.fde_count() > 1000, "{} FDEs", cfi.fde_count());
    let r = cfi.rule_for(addr).expect("rule at read");
    assert_eq!((r.cfa_reg, r.cfa_off, r.ra), (7, 8, Saved::AtCfa(-8)));
    assert!(r.callee.iter().all(|s| *s == Saved::Same), "{r:?}");
}

#[test]
fn libc_rule_rbp_based() {
    // getaddrinfo keeps a frame pointer (it uses alloca): past its prologue
    // the CFA is rbp-based, with the caller's rbp saved at CFA-16.
    let (mut cfi, addr) = libc_cfi_and_sym("getaddrinfo");
    let r = (0..64)
        .filter_map(|i| cfi.rule_for(addr + i))
        .find(|r| r.cfa_reg == 6);
    let r = r.expect("no rbp-based CFA in getaddrinfo's prologue");
    assert_eq!(
        (r.cfa_off, r.ra, r.callee[1]),
        (16, Saved::AtCfa(-8), Saved::AtCfa(-16))
    );
    assert_eq!(cfi.rule_for(0), None);
}

fn stack_of(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn step_restores_rbp_for_rbp_based_cfa() {
    let base = 0x7000_0000u64;
    // [rsp]: junk, saved rbp, RA1 | caller frame: saved rbp, RA2
    let stack = stack_of(&[0xdead, 0x7000_0020, 0x1111, 0, 0x4242, 0x2222]);
    let s = StackCopy {
        rip: 0x10,
        rsp: base,
        rbp: 0,
        stack: &stack,
    };
    let mut regs = Regs::from_copy(&s);
    let same = [Saved::Same; 6];
    let mut callee = same;
    callee[1] = Saved::AtCfa(-16);
    // push rbp; sub rsp,8: CFA = rsp+24, rbp at CFA-16, RA at CFA-8.
    let r1 = Rule {
        cfa_reg: 7,
        cfa_off: 24,
        ra: Saved::AtCfa(-8),
        callee,
    };
    assert_eq!(step(&r1, &mut regs, &s), Some(0x1111));
    assert_eq!(regs.get(6), Some(0x7000_0020));
    // Frame-pointer function: CFA = rbp+16.
    let r2 = Rule {
        cfa_reg: 6,
        cfa_off: 16,
        ra: Saved::AtCfa(-8),
        callee,
    };
    assert_eq!(step(&r2, &mut regs, &s), Some(0x2222));
    assert_eq!(regs.get(7), Some(base + 0x30));
    // Next RA would be past the copy: the unwind ends instead of guessing.
    let r3 = Rule {
        cfa_reg: 7,
        cfa_off: 8,
        ra: Saved::AtCfa(-8),
        callee: same,
    };
    assert_eq!(step(&r3, &mut regs, &s), None);
}

#[test]
fn step_rejects_unknown_base_and_backwards_cfa() {
    let stack = stack_of(&[1, 2, 3, 4]);
    let s = StackCopy {
        rip: 0x10,
        rsp: 0x1000,
        rbp: 0,
        stack: &stack,
    };
    let same = [Saved::Same; 6];
    let on_rbp = Rule {
        cfa_reg: 6,
        cfa_off: 16,
        ra: Saved::AtCfa(-8),
        callee: same,
    };
    assert_eq!(step(&on_rbp, &mut Regs::from_copy(&s), &s), None);
    let back = Rule {
        cfa_reg: 7,
        cfa_off: -8,
        ra: Saved::AtCfa(0),
        callee: same,
    };
    assert_eq!(step(&back, &mut Regs::from_copy(&s), &s), None);
    let undef = Rule {
        cfa_reg: 7,
        cfa_off: 8,
        ra: Saved::Undefined,
        callee: same,
    };
    assert_eq!(step(&undef, &mut Regs::from_copy(&s), &s), None);
}

#[test]
fn garbage_never_panics() {
    assert_root();
    let pid = std::process::id();
    let mut u = Unwinder::new(pid).expect("unwinder");
    let text = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let maps = parse_exec_maps(&text);
    let libc = maps
        .iter()
        .find(|m| m.path.contains("libc.so"))
        .expect("libc mapped");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let words: Vec<u64> = (0..64)
            .map(|i| match rnd() % 3 {
                0 => libc.start + rnd() % (libc.end - libc.start),
                1 => 0x1000 + (i * 8),
                _ => rnd(),
            })
            .collect();
        let stack = stack_of(&words);
        let rip = libc.start + rnd() % (libc.end - libc.start);
        let s = StackCopy {
            rip,
            rsp: 0x1000,
            rbp: rnd(),
            stack: &stack,
        };
        let frames = u.unwind(&s, 16);
        assert!(!frames.is_empty() && frames.len() <= 16);
    }
    assert!(
        u.unwind(
            &StackCopy {
                rip: 0,
                rsp: u64::MAX,
                rbp: 0,
                stack: &[]
            },
            8
        ) == vec![0]
    );
    assert!(u
        .unwind(
            &StackCopy {
                rip: 0,
                rsp: 0,
                rbp: 0,
                stack: &[]
            },
            0
        )
        .is_empty());
}

#[test]
fn maps_keep_exec_files_and_vdso() {
    let text = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 08:01 123 /usr/sbin/nginx
55d0c0a20000-55d0c0b00000 r-xp 00020000 08:01 123 /usr/sbin/nginx
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 
7f0000002000-7f0000003000 r-xp 00001000 08:01 77 /opt/my lib/x.so (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
garbage line
";
    let m = parse_exec_maps(text);
    assert_eq!(m.len(), 3);
    let nginx = find(&m, 0x55d0c0a20010).expect("nginx text");
    assert_eq!(
        (nginx.object_name(), nginx.file_offset(0x55d0c0a20010)),
        ("nginx", 0x20010)
    );
    assert_eq!(find(&m, 0x55d0c0a00010), None);
    let x = find(&m, 0x7f0000002000).expect("x.so");
    assert_eq!(x.object_name(), "x.so");
    assert!(x
        .candidates(9)
        .iter()
        .any(|p| p.to_str() == Some("/proc/9/root/opt/my lib/x.so")));
    assert_eq!(
        find(&m, 0x7ffd00000100).map(|v| v.path.as_str()),
        Some("[vdso]")
    );
}
