//! DWARF CFI unwinding of a sampled user stack copy.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use anyhow::Result;

use super::cfi::{ObjectCfi, Rule, Saved, CALLEE_SAVED, RA, RSP};
use super::maps::{self, Mapping};

/// One sample's user registers and the bytes at `[rsp, rsp + stack.len())`.
#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    pub rip: u64,
    pub rsp: u64,
    /// 0 when not captured; only frames whose CFA is rbp-based need it.
    pub rbp: u64,
    pub stack: &'a [u8],
}

/// DWARF register numbers 0..=16 (rax..r15, then the return address).
#[derive(Clone, Copy, Debug, Default)]
pub struct Regs([Option<u64>; 17]);

impl Regs {
    pub fn from_copy(s: &StackCopy) -> Regs {
        let mut r = Regs::default();
        r.0[RSP as usize] = Some(s.rsp);
        r.0[RA as usize] = Some(s.rip);
        // 0 means "not captured": the psABI zeroes rbp at _start to mark the
        // outermost frame, so a CFA based on rbp == 0 would be garbage anyway.
        r.0[6] = (s.rbp != 0).then_some(s.rbp);
        r
    }

    pub fn get(&self, reg: u16) -> Option<u64> {
        *self.0.get(reg as usize)?
    }
}

fn read_u64(s: &StackCopy, addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(s.rsp)?).ok()?;
    let bytes = s.stack.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// One frame: updates `regs` to the caller's and returns its return address.
/// None ends the unwind (unknown CFA base, RA not in the copy, or a CFA that
/// does not move toward the callers, which also rules out loops).
pub fn step(rule: &Rule, regs: &mut Regs, s: &StackCopy) -> Option<u64> {
    let cfa = regs.get(rule.cfa_reg)?.checked_add_signed(rule.cfa_off)?;
    if cfa <= regs.get(RSP)? {
        return None;
    }
    let at = |n: i64| read_u64(s, cfa.checked_add_signed(n)?);
    let ra = match rule.ra {
        Saved::AtCfa(n) => at(n)?,
        _ => return None,
    };
    let mut next = Regs::default();
    for (rule, reg) in rule.callee.iter().zip(CALLEE_SAVED) {
        // A slot we cannot read only makes that register unknown: the
        // unwind fails later, and only if some CFA actually needs it.
        next.0[reg as usize] = match *rule {
            Saved::Same => regs.get(reg),
            Saved::AtCfa(n) => at(n),
            Saved::ValCfa(n) => cfa.checked_add_signed(n),
            Saved::InReg(r) => regs.get(r),
            Saved::Undefined | Saved::Unknown => None,
        };
    }
    next.0[RSP as usize] = Some(cfa);
    next.0[RA as usize] = Some(ra);
    *regs = next;
    Some(ra)
}

/// Largest vDSO mapping read: the x86-64 vDSO is two pages; a larger
/// "[vdso]" line is not the kernel's.
const MAX_VDSO_BYTES: u64 = 1 << 20;

type ObjKey = (String, u64, String);

pub struct Unwinder {
    pid: u32,
    maps: Vec<Mapping>,
    /// None: could not be read or parsed; not retried until the next refresh.
    objects: HashMap<ObjKey, Option<ObjectCfi>>,
}

impl Unwinder {
    pub fn new(pid: u32) -> Result<Unwinder> {
        let mut u = Unwinder {
            pid,
            maps: Vec::new(),
            objects: HashMap::new(),
        };
        u.refresh_maps()?;
        Ok(u)
    }

    /// Not done automatically on a miss: an address outside every mapping
    /// is also what JIT code (LuaJIT traces) looks like, and rereading maps
    /// per such sample would be costly. Call it periodically.
    pub fn refresh_maps(&mut self) -> Result<()> {
        self.maps = maps::read_exec_maps(self.pid)?;
        let live: std::collections::HashSet<ObjKey> = self.maps.iter().map(key).collect();
        self.objects.retain(|k, v| live.contains(k) && v.is_some());
        Ok(())
    }

    /// At most `max_frames` addresses: each step must also move the CFA up
    /// the stack copy, so a cyclic or garbage stack ends early, never loops.
    pub fn unwind(&mut self, s: &StackCopy, max_frames: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if max_frames == 0 {
            return out;
        }
        out.push(s.rip);
        let mut regs = Regs::from_copy(s);
        let mut pc = s.rip;
        while out.len() < max_frames {
            // A return address may sit past the end of its function (a call
            // to a noreturn function is the last instruction), so look up
            // the call instruction itself.
            let probe = if out.len() == 1 {
                pc
            } else {
                pc.wrapping_sub(1)
            };
            let Some(rule) = self.rule_at(probe) else {
                break;
            };
            match step(&rule, &mut regs, s) {
                Some(ra) if ra != 0 => {
                    out.push(ra);
                    pc = ra;
                }
                _ => break,
            }
        }
        out
    }

    pub fn rule_at(&mut self, addr: u64) -> Option<Rule> {
        let m = maps::find(&self.maps, addr)?;
        let file_off = m.file_offset(addr);
        let k = key(m);
        if !self.objects.contains_key(&k) {
            let loaded = load(self.pid, m);
            self.objects.insert(k.clone(), loaded);
        }
        let obj = self.objects.get_mut(&k)?.as_mut()?;
        let svma = obj.vaddr_for_offset(file_off)?;
        obj.rule_for(svma)
    }
}

fn key(m: &Mapping) -> ObjKey {
    (m.dev.clone(), m.inode, m.path.clone())
}

fn load(pid: u32, m: &Mapping) -> Option<ObjectCfi> {
    let data = if m.path == "[vdso]" {
        // The vDSO has no file; its mapping is a complete ELF image.
        let len = m.end.checked_sub(m.start).filter(|&n| n <= MAX_VDSO_BYTES)?;
        let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        f.read_exact_at(&mut buf, m.start).ok()?;
        buf
    } else {
        m.candidates(pid)
            .iter()
            .find_map(|p| crate::target::elf::read_file(p).ok())?
    };
    match ObjectCfi::parse(&data) {
        Ok(c) => Some(c),
        Err(e) => {
            log::debug!("no CFI for {}: {e:#}", m.path);
            None
        }
    }
}
