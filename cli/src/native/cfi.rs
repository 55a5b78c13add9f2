//! Per-object CFI: a sorted FDE index over .eh_frame (+ .debug_frame) and
//! the x86-64 rows reduced to what the unwinder evaluates.

use std::collections::HashMap;

use anyhow::{Context, Result};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Register,
    RegisterRule, UnwindContext, UnwindSection, UnwindTableRow,
};
use object::{Object, ObjectSection, ObjectSegment};

type R<'a> = EndianSlice<'a, LittleEndian>;

pub const RA: u16 = 16;
pub const RSP: u16 = 7;
/// Callee-saved registers (rbx, rbp, r12-r15): the only ones whose values
/// survive a call, so the only ones a later CFA rule can depend on.
pub const CALLEE_SAVED: [u16; 6] = [3, 6, 12, 13, 14, 15];

/// Where a register's caller value is, relative to the CFA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    Same,
    Undefined,
    AtCfa(i64),
    ValCfa(i64),
    InReg(u16),
    /// Expressions and the like: the value is lost rather than guessed.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub cfa_reg: u16,
    pub cfa_off: i64,
    pub ra: Saved,
    /// Indexed like `CALLEE_SAVED`.
    pub callee: [Saved; 6],
}

impl Rule {
    /// None for a CFA given by an expression (PLT stubs, signal frames):
    /// evaluating it needs memory and registers we may not have.
    pub fn from_row(row: &UnwindTableRow<usize>) -> Option<Rule> {
        let (cfa_reg, cfa_off) = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => (register.0, *offset),
            CfaRule::Expression(_) => return None,
        };
        let mut callee = [Saved::Same; 6];
        for (slot, reg) in callee.iter_mut().zip(CALLEE_SAVED) {
            // No rule for a callee-saved register means the function never
            // touched it, which the x86-64 psABI makes "same value".
            *slot = match convert(&row.register(Register(reg))) {
                Saved::Undefined => Saved::Same,
                s => s,
            };
        }
        Some(Rule {
            cfa_reg,
            cfa_off,
            ra: convert(&row.register(Register(RA))),
            callee,
        })
    }
}

fn convert(r: &RegisterRule<usize>) -> Saved {
    match r {
        RegisterRule::Undefined => Saved::Undefined,
        RegisterRule::SameValue => Saved::Same,
        RegisterRule::Offset(n) => Saved::AtCfa(*n),
        RegisterRule::ValOffset(n) => Saved::ValCfa(*n),
        RegisterRule::Register(r) => Saved::InReg(r.0),
        _ => Saved::Unknown,
    }
}

#[derive(Clone, Copy, Debug)]
struct Fde {
    start: u64,
    end: u64,
    debug_frame: bool,
    offset: usize,
}

pub struct ObjectCfi {
    eh_frame: Vec<u8>,
    debug_frame: Vec<u8>,
    bases: BaseAddresses,
    /// PT_LOAD (file offset, file size, vaddr): turns mapping offsets into
    /// the addresses the CFI speaks of.
    segments: Vec<(u64, u64, u64)>,
    index: Vec<Fde>,
    rows: HashMap<u64, Option<Rule>>,
    ctx: Box<UnwindContext<usize>>,
}

/// Enough distinct pcs for a busy server; beyond it the cache starts over
/// rather than growing without bound.
const ROW_CACHE_MAX: usize = 1 << 16;

impl ObjectCfi {
    pub fn parse(data: &[u8]) -> Result<ObjectCfi> {
        let file = object::File::parse(data).context("parsing ELF")?;
        let sect = |name: &str| file.section_by_name(name);
        let eh_frame = sect(".eh_frame")
            .and_then(|s| s.data().ok().map(<[u8]>::to_vec))
            .unwrap_or_default();
        let debug_frame = sect(".debug_frame")
            .and_then(|s| crate::target::elf::section_bytes(&s).ok().map(|d| d.into_owned()))
            .unwrap_or_default();
        let mut bases = BaseAddresses::default();
        if let Some(s) = sect(".eh_frame") {
            bases = bases.set_eh_frame(s.address());
        }
        if let Some(s) = sect(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(s.address());
        }
        if let Some(s) = sect(".text") {
            bases = bases.set_text(s.address());
        }
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect();
        let mut cfi = ObjectCfi {
            eh_frame,
            debug_frame,
            bases,
            segments,
            index: Vec::new(),
            rows: HashMap::new(),
            ctx: Box::new(UnwindContext::new()),
        };
        cfi.build_index();
        Ok(cfi)
    }

    /// At most one entry per FDE, and an FDE takes at least 8 bytes of the
    /// section: the sections' sizes bound the index.
    fn build_index(&mut self) {
        let mut eh = Vec::new();
        index_section(
            &EhFrame::new(&self.eh_frame, LittleEndian),
            &self.bases,
            false,
            &mut eh,
        );
        eh.sort_by_key(|f| f.start);
        let mut dbg = Vec::new();
        let mut df = DebugFrame::new(&self.debug_frame, LittleEndian);
        df.set_address_size(8);
        index_section(&df, &self.bases, true, &mut dbg);
        // .eh_frame wins where both describe a function: it is what the
        // C++ runtime itself trusts.
        dbg.retain(|f| lookup(&eh, f.start).is_none());
        eh.extend(dbg);
        eh.sort_by_key(|f| f.start);
        self.index = eh;
    }

    #[cfg(test)]
    pub fn fde_count(&self) -> usize {
        self.index.len()
    }

    /// ELF virtual address for a file offset inside a PT_LOAD segment.
    pub fn vaddr_for_offset(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(o, sz, _)| off >= *o && off - o < *sz)
            .and_then(|(o, _, va)| (off - o).checked_add(*va))
    }

    pub fn rule_for(&mut self, svma: u64) -> Option<Rule> {
        if let Some(r) = self.rows.get(&svma) {
            return *r;
        }
        let r = self.compute(svma);
        if self.rows.len() >= ROW_CACHE_MAX {
            self.rows.clear();
        }
        self.rows.insert(svma, r);
        r
    }

    fn compute(&mut self, svma: u64) -> Option<Rule> {
        let fde = lookup(&self.index, svma)?;
        if fde.debug_frame {
            let mut df = DebugFrame::new(&self.debug_frame, LittleEndian);
            df.set_address_size(8);
            row(&df, &self.bases, &mut self.ctx, fde.offset, svma)
        } else {
            let eh = EhFrame::new(&self.eh_frame, LittleEndian);
            row(&eh, &self.bases, &mut self.ctx, fde.offset, svma)
        }
    }
}

fn lookup(index: &[Fde], svma: u64) -> Option<Fde> {
    let i = index.partition_point(|f| f.start <= svma);
    let f = index.get(i.checked_sub(1)?)?;
    (svma < f.end).then_some(*f)
}

fn index_section<'a, S: UnwindSection<R<'a>>>(
    sec: &S,
    bases: &BaseAddresses,
    debug_frame: bool,
    out: &mut Vec<Fde>,
) {
    let mut entries = sec.entries(bases);
    // A malformed entry ends the walk; what was read before it stays usable.
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        out.push(Fde {
            start: fde.initial_address(),
            end: fde.initial_address().saturating_add(fde.len()),
            debug_frame,
            offset: fde.offset(),
        });
    }
}

fn row<'a, S: UnwindSection<R<'a>>>(
    sec: &S,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    offset: usize,
    svma: u64,
) -> Option<Rule> {
    let fde = sec
        .fde_from_offset(bases, S::Offset::from(offset), S::cie_from_offset)
        .ok()?;
    let row = fde.unwind_info_for_address(sec, bases, ctx, svma).ok()?;
    Rule::from_row(row)
}
