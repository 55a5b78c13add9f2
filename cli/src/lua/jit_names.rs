//! LuaJIT's own names for what the trace compiler reports, as its `jit.v`
//! module prints them: trace errors (`lj_traceerr.h`), bytecodes (`lj_bc.h`)
//! and fast functions (`lj_ffdef.h`), in the numbering of OpenResty's LuaJIT
//! 2.1 (2.1-20230119). Copied from that build's `jit/vmdef.lua`, which its
//! build generates from those headers; a build with other numbers needs its
//! own tables.

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

/// Fast function ids (`ffid`) to names; 0 and 1 are Lua and C functions.
pub const FAST_FUNCTIONS: &[&str] = &[
    "Lua", "C", "assert", "type", "next", "pairs", "ipairs_aux", "ipairs", "getmetatable",
    "setmetatable", "getfenv", "setfenv", "rawget", "rawset", "rawequal", "unpack", "select",
    "tonumber", "tostring", "error", "pcall", "xpcall", "loadfile", "load", "loadstring", "dofile",
    "gcinfo", "collectgarbage", "newproxy", "print", "coroutine.status", "coroutine.running",
    "coroutine.isyieldable", "coroutine.create", "coroutine.yield", "coroutine.resume",
    "coroutine.wrap_aux", "coroutine.wrap", "thread.exdata", "thread.exdata2", "math.abs",
    "math.floor", "math.ceil", "math.sqrt", "math.log10", "math.exp", "math.sin", "math.cos",
    "math.tan", "math.asin", "math.acos", "math.atan", "math.sinh", "math.cosh", "math.tanh",
    "math.frexp", "math.modf", "math.log", "math.atan2", "math.pow", "math.fmod", "math.ldexp",
    "math.min", "math.max", "math.random", "math.randomseed", "bit.tobit", "bit.bnot", "bit.bswap",
    "bit.lshift", "bit.rshift", "bit.arshift", "bit.rol", "bit.ror", "bit.band", "bit.bor",
    "bit.bxor", "bit.tohex", "string.byte", "string.char", "string.sub", "string.rep",
    "string.reverse", "string.lower", "string.upper", "string.dump", "string.find", "string.match",
    "string.gmatch_aux", "string.gmatch", "string.gsub", "string.format", "table.maxn",
    "table.insert", "table.concat", "table.clone", "table.isarray", "table.nkeys", "table.isempty",
    "table.sort", "table.new", "table.clear", "io.method.close", "io.method.read",
    "io.method.write", "io.method.flush", "io.method.seek", "io.method.setvbuf", "io.method.lines",
    "io.method.__gc", "io.method.__tostring", "io.open", "io.popen", "io.tmpfile", "io.close",
    "io.read", "io.write", "io.flush", "io.input", "io.output", "io.lines", "io.type", "os.execute",
    "os.remove", "os.rename", "os.tmpname", "os.getenv", "os.exit", "os.clock", "os.date",
    "os.time", "os.difftime", "os.setlocale", "debug.getregistry", "debug.getmetatable",
    "debug.setmetatable", "debug.getfenv", "debug.setfenv", "debug.getinfo", "debug.getlocal",
    "debug.setlocal", "debug.getupvalue", "debug.setupvalue", "debug.upvalueid",
    "debug.upvaluejoin", "debug.sethook", "debug.gethook", "debug.debug", "debug.traceback",
    "jit.on", "jit.off", "jit.flush", "jit.status", "jit.security", "jit.attach", "jit.prngstate",
    "jit.util.funcinfo", "jit.util.funcbc", "jit.util.funck", "jit.util.funcuvname",
    "jit.util.traceinfo", "jit.util.traceir", "jit.util.tracek", "jit.util.tracesnap",
    "jit.util.tracemc", "jit.util.traceexitstub", "jit.util.ircalladdr", "jit.opt.start",
    "jit.profile.start", "jit.profile.stop", "jit.profile.dumpstack", "ffi.meta.__index",
    "ffi.meta.__newindex", "ffi.meta.__eq", "ffi.meta.__len", "ffi.meta.__lt", "ffi.meta.__le",
    "ffi.meta.__concat", "ffi.meta.__call", "ffi.meta.__add", "ffi.meta.__sub", "ffi.meta.__mul",
    "ffi.meta.__div", "ffi.meta.__mod", "ffi.meta.__pow", "ffi.meta.__unm", "ffi.meta.__tostring",
    "ffi.meta.__pairs", "ffi.meta.__ipairs", "ffi.clib.__index", "ffi.clib.__newindex",
    "ffi.clib.__gc", "ffi.callback.free", "ffi.callback.set", "ffi.cdef", "ffi.new", "ffi.cast",
    "ffi.typeof", "ffi.typeinfo", "ffi.istype", "ffi.sizeof", "ffi.alignof", "ffi.offsetof",
    "ffi.errno", "ffi.string", "ffi.copy", "ffi.fill", "ffi.abi", "ffi.metatype", "ffi.gc",
    "ffi.load", "buffer.method.free", "buffer.method.reset", "buffer.method.skip",
    "buffer.method.set", "buffer.method.put", "buffer.method.putf", "buffer.method.get",
    "buffer.method.putcdata", "buffer.method.reserve", "buffer.method.commit", "buffer.method.ref",
    "buffer.method.encode", "buffer.method.decode", "buffer.method.__gc",
    "buffer.method.__tostring", "buffer.method.__len", "buffer.new", "buffer.encode",
    "buffer.decode",
];

/// `GCtrace.linktype` (`LJ_TRLINK_*`) as `jit.v` names it.
pub const LINK_TYPES: &[&str] =
    &["none", "root", "loop", "tail-recursion", "up-recursion", "down-recursion", "interpreter", "return", "stitch"];
