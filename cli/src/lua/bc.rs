//! LuaJIT bytecode: instruction fields and the opcode properties that
//! `lj_debug_slotname` / `lj_debug_funcname` look at (operand A mode, metamethod).

/// One instruction (`BCIns`), host byte order.
pub type BcIns = u32;

pub fn op(i: BcIns) -> u8 {
    (i & 0xff) as u8
}
pub fn a(i: BcIns) -> u32 {
    (i >> 8) & 0xff
}
pub fn b(i: BcIns) -> u32 {
    i >> 24
}
pub fn c(i: BcIns) -> u32 {
    (i >> 16) & 0xff
}
pub fn d(i: BcIns) -> u32 {
    i >> 16
}

/// What operand A of an instruction is (`BCMode` restricted to A's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AMode {
    None,
    Dst,
    Base,
    Var,
    Rbase,
    Uv,
}

/// Which metamethod an instruction may invoke; only "call" names a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mm {
    None,
    Call,
    Other,
}

macro_rules! bcdef {
    ($($name:ident: $a:ident, $mm:ident;)*) => {
        /// LuaJIT 2.1 opcodes. Numbering is per build: see `ObjLayout::ops`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($name),* }

        impl Op {
            /// `BCDEF` order of LuaJIT 2.1 (`lj_bc.h`), i.e. its opcode numbers.
            pub const LUAJIT_21: &'static [Op] = &[$(Op::$name),*];

            pub fn a_mode(self) -> AMode {
                match self { $(Op::$name => AMode::$a),* }
            }

            pub fn mm(self) -> Mm {
                match self { $(Op::$name => Mm::$mm),* }
            }
        }
    };
}

// Generated from BCDEF in lj_bc.h of luajit2-2.1-20230119: (name, A mode, metamethod).
bcdef! {
    Islt: Var, Other;
    Isge: Var, Other;
    Isle: Var, Other;
    Isgt: Var, Other;
    Iseqv: Var, Other;
    Isnev: Var, Other;
    Iseqs: Var, Other;
    Isnes: Var, Other;
    Iseqn: Var, Other;
    Isnen: Var, Other;
    Iseqp: Var, Other;
    Isnep: Var, Other;
    Istc: Dst, None;
    Isfc: Dst, None;
    Ist: None, None;
    Isf: None, None;
    Istype: Var, None;
    Isnum: Var, None;
    Mov: Dst, None;
    Not: Dst, None;
    Unm: Dst, Other;
    Len: Dst, Other;
    Addvn: Dst, Other;
    Subvn: Dst, Other;
    Mulvn: Dst, Other;
    Divvn: Dst, Other;
    Modvn: Dst, Other;
    Addnv: Dst, Other;
    Subnv: Dst, Other;
    Mulnv: Dst, Other;
    Divnv: Dst, Other;
    Modnv: Dst, Other;
    Addvv: Dst, Other;
    Subvv: Dst, Other;
    Mulvv: Dst, Other;
    Divvv: Dst, Other;
    Modvv: Dst, Other;
    Pow: Dst, Other;
    Cat: Dst, Other;
    Kstr: Dst, None;
    Kcdata: Dst, None;
    Kshort: Dst, None;
    Knum: Dst, None;
    Kpri: Dst, None;
    Knil: Base, None;
    Uget: Dst, None;
    Usetv: Uv, None;
    Usets: Uv, None;
    Usetn: Uv, None;
    Usetp: Uv, None;
    Uclo: Rbase, None;
    Fnew: Dst, Other;
    Tnew: Dst, Other;
    Tdup: Dst, Other;
    Gget: Dst, Other;
    Gset: Var, Other;
    Tgetv: Dst, Other;
    Tgets: Dst, Other;
    Tgetb: Dst, Other;
    Tgetr: Dst, Other;
    Tsetv: Var, Other;
    Tsets: Var, Other;
    Tsetb: Var, Other;
    Tsetm: Base, Other;
    Tsetr: Var, Other;
    Callm: Base, Call;
    Call: Base, Call;
    Callmt: Base, Call;
    Callt: Base, Call;
    Iterc: Base, Call;
    Itern: Base, Call;
    Varg: Base, None;
    Isnext: Base, None;
    Retm: Base, None;
    Ret: Rbase, None;
    Ret0: Rbase, None;
    Ret1: Rbase, None;
    Fori: Base, None;
    Jfori: Base, None;
    Forl: Base, None;
    Iforl: Base, None;
    Jforl: Base, None;
    Iterl: Base, None;
    Iiterl: Base, None;
    Jiterl: Base, None;
    Loop: Rbase, None;
    Iloop: Rbase, None;
    Jloop: Rbase, None;
    Jmp: Rbase, None;
    Funcf: Rbase, None;
    Ifuncf: Rbase, None;
    Jfuncf: Rbase, None;
    Funcv: Rbase, None;
    Ifuncv: Rbase, None;
    Jfuncv: Rbase, None;
    Funcc: Rbase, None;
    Funccw: Rbase, None;
}
