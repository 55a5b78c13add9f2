//! Edges written the way a person names what holds an object:
//! `.retained`, `["app.services.leak"]`, `[42]`, `<upvalue cache of app/m.lua:12>`.

use std::collections::HashMap;

use super::{
    edges::{tv_gc, tv_itype, Edge},
    objects::{Obj, Vm},
};
use crate::lua::{
    gcstr::{chunk_label, read_str},
    proto::{ProtoDebug, ProtoHeader},
    Memory,
};

/// Keys longer than this are cut in labels.
const MAX_KEY: usize = 40;

/// Names of prototypes' upvalues and where they are defined, read once each.
#[derive(Default)]
pub struct Names {
    protos: HashMap<u64, (String, Vec<String>)>,
}

impl Names {
    /// The label of `edge` from `parent`; `exact` keeps every key as it is,
    /// otherwise numbers and the keys of big tables fold into `[#]` / `[*]`
    /// so a flame graph of paths stays small.
    pub fn label<M: Memory>(&mut self, vm: &Vm<'_, M>, parent: &Obj, edge: Edge, exact: bool, big: bool) -> String {
        match edge {
            Edge::Index(i) if exact => format!("[{i}]"),
            Edge::Index(_) => "[#]".into(),
            Edge::Key(key) => key_label(vm, key, exact, big),
            Edge::KeyOf => "<key>".into(),
            Edge::Metatable => "<metatable>".into(),
            Edge::Env => "<env>".into(),
            Edge::Prototype => "<prototype>".into(),
            Edge::Upvalue(i) => {
                let (place, names) = self.proto(vm, parent);
                match names.get(i as usize).filter(|n| !n.is_empty()) {
                    Some(n) => format!("<upvalue {n} of {place}>"),
                    None => format!("<upvalue #{i} of {place}>"),
                }
            }
            Edge::CUpvalue(i) => format!("<C upvalue #{i}>"),
            Edge::Value => String::new(),
            Edge::Stack(i) if exact => format!("<stack slot {i}>"),
            Edge::Stack(_) => "<stack>".into(),
            Edge::Constant => "<constant>".into(),
        }
    }

    /// `file:line` and upvalue names of a Lua function's prototype.
    fn proto<M: Memory>(&mut self, vm: &Vm<'_, M>, func: &Obj) -> (String, Vec<String>) {
        let l = vm.l;
        let pt = vm.mem.read_u64(func.addr + l.func_pc).unwrap_or(0).wrapping_sub(l.proto_size);
        self.protos
            .entry(pt)
            .or_insert_with(|| {
                let Some(h) = ProtoHeader::read(vm.mem, l, pt) else { return ("?".into(), Vec::new()) };
                let file = chunk_label(vm.mem, l, h.chunkname, h.firstline).unwrap_or_else(|| "?".into());
                let names = ProtoDebug::read(vm.mem, l, &h)
                    .map(|d| (0..u32::from(h.sizeuv)).map(|i| d.uvname(i).unwrap_or("").to_string()).collect())
                    .unwrap_or_default();
                (format!("{file}:{}", h.firstline), names)
            })
            .clone()
    }

    /// `file:line` of a Lua function, for labels of functions themselves.
    pub fn function_place<M: Memory>(&mut self, vm: &Vm<'_, M>, func: &Obj) -> String {
        self.proto(vm, func).0
    }
}

fn key_label<M: Memory>(vm: &Vm<'_, M>, key: u64, exact: bool, big: bool) -> String {
    let itype = tv_itype(key);
    if itype < 0xFFFF_FFF2 {
        // A number (GC64 keeps doubles as they are).
        if !exact {
            return "[#]".into();
        }
        let n = f64::from_bits(key);
        return if n.fract() == 0.0 && n.abs() < 1e15 { format!("[{}]", n as i64) } else { format!("[{n}]") };
    }
    if !exact && big {
        return "[*]".into();
    }
    match itype {
        0xFFFF_FFFE => "[false]".into(),
        0xFFFF_FFFD => "[true]".into(),
        0xFFFF_FFFC => "[lightuserdata]".into(),
        0xFFFF_FFFB => match tv_gc(key).and_then(|s| read_str(vm.mem, vm.l, s)) {
            Some(s) if is_identifier(&s) => format!(".{s}"),
            Some(s) => format!("[\"{}\"]", cut(&s)),
            None => "[string]".into(),
        },
        0xFFFF_FFF4 => "[table]".into(),
        0xFFFF_FFF7 => "[function]".into(),
        0xFFFF_FFF9 => "[thread]".into(),
        0xFFFF_FFF3 => "[userdata]".into(),
        0xFFFF_FFF5 => "[cdata]".into(),
        _ => "[?]".into(),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= MAX_KEY
}

fn cut(s: &str) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() || c == '"' { '.' } else { c }).collect();
    if clean.chars().count() <= MAX_KEY {
        clean
    } else {
        format!("{}...", clean.chars().take(MAX_KEY).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_cut_keys() {
        assert!(is_identifier("retained"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier("app.services.leak"));
        assert!(!is_identifier("1x"));
        assert_eq!(cut("a\"b"), "a.b");
        assert_eq!(cut(&"x".repeat(50)).len(), MAX_KEY + 3);
    }
}
