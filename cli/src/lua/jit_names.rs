//! LuaJIT's own names for what the trace compiler reports, as its `jit.v`
//! module prints them: trace errors (`lj_traceerr.h`) and bytecodes
//! (`lj_bc.h`), the same in OpenResty's LuaJIT 2.1 (2.1-20230119) and
//! upstream 2.1. Copied from those builds' `jit/vmdef.lua`, which their build
//! generates from the headers. Fast functions differ between the two: their
//! names are in each build's layout file (`ObjLayout::fast_function`).

/// `TraceError` numbers to messages; `%d` / `%s` take `J->errinfo`.
pub const TRACE_ERRORS: &[&str] = &[
    "error thrown or hook called during recording", "trace too short", "trace too long",
    "trace too deep", "too many snapshots", "blacklisted", "retry recording", "NYI: bytecode %d",
    "leaving loop in root trace", "inner loop in root trace", "loop unroll limit reached",
    "bad argument type", "JIT compilation disabled for function", "call unroll limit reached",
    "down-recursion, restarting", "NYI: unsupported variant of FastFunc %s",
    "NYI: return to lower frame", "store with nil or NaN key", "missing metamethod",
    "looping index lookup", "NYI: mixed sparse/dense table", "symbol not in cache",
    "NYI: unsupported C type conversion", "NYI: unsupported C function type",
    "guard would always fail", "too many PHIs", "persistent type instability",
    "failed to allocate mcode memory", "machine code too long", "hit mcode limit (retrying)",
    "too many spill slots", "inconsistent register allocation",
    "NYI: cannot assemble IR instruction %d", "NYI: PHI shuffling too complex",
    "NYI: register coalescing too complex",
];

/// `LJ_TRERR_NYIBC`: the message's argument is a bytecode number.
pub const NYI_BYTECODE: usize = 7;

/// Bytecode numbers to names (`BCDEF` order).
pub const BYTECODES: &[&str] = &[
    "ISLT", "ISGE", "ISLE", "ISGT", "ISEQV", "ISNEV", "ISEQS", "ISNES", "ISEQN", "ISNEN", "ISEQP",
    "ISNEP", "ISTC", "ISFC", "IST", "ISF", "ISTYPE", "ISNUM", "MOV", "NOT", "UNM", "LEN", "ADDVN",
    "SUBVN", "MULVN", "DIVVN", "MODVN", "ADDNV", "SUBNV", "MULNV", "DIVNV", "MODNV", "ADDVV",
    "SUBVV", "MULVV", "DIVVV", "MODVV", "POW", "CAT", "KSTR", "KCDATA", "KSHORT", "KNUM", "KPRI",
    "KNIL", "UGET", "USETV", "USETS", "USETN", "USETP", "UCLO", "FNEW", "TNEW", "TDUP", "GGET",
    "GSET", "TGETV", "TGETS", "TGETB", "TGETR", "TSETV", "TSETS", "TSETB", "TSETM", "TSETR",
    "CALLM", "CALL", "CALLMT", "CALLT", "ITERC", "ITERN", "VARG", "ISNEXT", "RETM", "RET", "RET0",
    "RET1", "FORI", "JFORI", "FORL", "IFORL", "JFORL", "ITERL", "IITERL", "JITERL", "LOOP", "ILOOP",
    "JLOOP", "JMP", "FUNCF", "IFUNCF", "JFUNCF", "FUNCV", "IFUNCV", "JFUNCV", "FUNCC", "FUNCCW",
];

/// `GCtrace.linktype` (`LJ_TRLINK_*`) as `jit.v` names it.
pub const LINK_TYPES: &[&str] =
    &["none", "root", "loop", "tail-recursion", "up-recursion", "down-recursion", "interpreter", "return", "stitch"];
