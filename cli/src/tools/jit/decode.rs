//! Turning what the kernel copied at an abort into LuaJIT's own words and
//! places, the way its `jit.v` module prints an abort event.

use serde::Serialize;

use crate::lua::{
    jit_names::{BYTECODES, NYI_BYTECODE, TRACE_ERRORS},
    jit_state::proto_of_pc,
    ProcMem, Resolver,
};

/// A place in Lua source: `file:line`, in the function defined at `func_line`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Where {
    pub file: String,
    pub line: u32,
    pub func_line: u32,
}

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The instruction at `pc` of `proto` (found from `pc` when 0).
pub fn place(res: &mut Resolver<ProcMem>, proto: u64, pc: u64) -> Option<Where> {
    let proto = if proto == 0 { proto_of_pc(res.memory(), res.layout(), pc)? } else { proto };
    let p = res.place(proto, Some(pc))?;
    Some(Where { file: p.file, line: p.at.unwrap_or(p.line), func_line: p.line })
}

/// A GC64 `TValue`'s bits: a number (any double that is not a tagged value),
/// or a GC object of type tag `itype` at the low 47 bits.
enum Value {
    Number(f64),
    Gc { itype: u32, addr: u64 },
}

/// `LJ_TISNUM` in GC64: type tags above it are not numbers.
const TISNUM: u32 = 0xfffe_ffff;
/// `~LJ_TFUNC`.
const TFUNC: u32 = !8;

fn value(raw: u64) -> Value {
    let itype = ((raw as i64) >> 47) as u32;
    if itype <= TISNUM {
        Value::Number(f64::from_bits(raw))
    } else {
        Value::Gc { itype, addr: raw & ((1 << 47) - 1) }
    }
}

/// Why a trace aborted: `luajit` exactly as `jit.v` prints it, `reason`
/// with bytecode numbers named.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Reason {
    pub code: Option<u32>,
    pub luajit: String,
    pub reason: String,
}

pub fn reason(res: &mut Resolver<ProcMem>, error: u64, errinfo: u64) -> Reason {
    let code = match value(error) {
        Value::Number(n) if n.fract() == 0.0 && (0.0..TRACE_ERRORS.len() as f64).contains(&n) => n as usize,
        // Not a TraceError: a Lua error thrown while recording (`LJ_TRERR_RECERR`).
        _ => 0,
    };
    let fmt = TRACE_ERRORS[code];
    let info = match value(errinfo) {
        Value::Number(n) => format_number(n),
        Value::Gc { itype, addr } if itype == TFUNC => res.func_label(addr).unwrap_or_else(|| "?".into()),
        Value::Gc { .. } => "?".into(),
    };
    let luajit = fmt.replace("%d", &info).replace("%s", &info);
    let reason = if code == NYI_BYTECODE {
        let name = info.parse::<usize>().ok().and_then(|n| BYTECODES.get(n)).copied().unwrap_or("?");
        match gloss(name) {
            Some(g) => format!("NYI: bytecode {name} ({g})"),
            None => format!("NYI: bytecode {name}"),
        }
    } else {
        luajit.clone()
    };
    Reason { code: u32::try_from(code).ok(), luajit, reason }
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// What the bytecodes LuaJIT 2.1 cannot compile do, for a reader who does
/// not know the opcode names.
fn gloss(bytecode: &str) -> Option<&'static str> {
    Some(match bytecode {
        "FNEW" => "closure creation",
        "UCLO" => "closing upvalues",
        "VARG" => "vararg access",
        "TSETM" => "table constructor with multiple results",
        "CAT" => "string concatenation",
        "ITERN" | "ISNEXT" => "pairs/next iteration",
        "CALLT" | "CALLMT" => "tail call",
        _ => return None,
    })
}

/// The reason codes of the penalty cache, named.
pub fn reason_name(code: u16) -> String {
    TRACE_ERRORS.get(usize::from(code)).map_or_else(|| format!("error {code}"), |f| f.replace(" %d", "").replace(" %s", ""))
}
