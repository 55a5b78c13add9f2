//! GCstr objects: names, and chunknames turned into source labels.

use super::{layout::ObjLayout, mem::Memory};

/// Longest string read whole. Identifiers and paths are far shorter; a longer
/// length means garbage, or a string chunk whose source is its own name.
pub const MAX_STR: u32 = 4096;

/// `LUA_IDSIZE` (luaconf.h): LuaJIT's bound on a shortened source name.
const LUA_IDSIZE: usize = 60;

/// Length of the GCstr at `addr`, if it looks like one.
fn str_len<M: Memory>(mem: &M, l: &ObjLayout, addr: u64) -> Option<u32> {
    if addr == 0 || mem.read_u8(addr.checked_add(l.gct)?)? != l.gct_str {
        return None;
    }
    mem.read_u32(addr.checked_add(l.str_len)?)
}

/// The whole string, if it is at most `MAX_STR` bytes.
pub fn read_str<M: Memory>(mem: &M, l: &ObjLayout, addr: u64) -> Option<String> {
    let len = str_len(mem, l, addr)?;
    if len > MAX_STR {
        return None;
    }
    let bytes = mem.read_bytes(addr.checked_add(l.str_data)?, len as usize)?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Source label of a chunkname: a file path without its '@' (whole, unlike
/// LuaJIT, as a profile wants full paths), else what `lj_debug_shortname` shows.
pub fn chunk_label<M: Memory>(mem: &M, l: &ObjLayout, addr: u64, firstline: i32) -> Option<String> {
    let len = str_len(mem, l, addr)? as usize;
    let data = addr.checked_add(l.str_data)?;
    if len == 0 {
        return Some(shorten(&[], 0, firstline));
    }
    if mem.read_u8(data)? == b'@' {
        let path_len = len - 1;
        if path_len <= MAX_STR as usize {
            let path = mem.read_bytes(data.checked_add(1)?, path_len)?;
            return Some(String::from_utf8_lossy(&path).into_owned());
        }
        // Too long to be worth reading: keep the tail, as LuaJIT does.
        let keep = LUA_IDSIZE - 4;
        let tail = mem.read_bytes(data.checked_add(len as u64 - keep as u64)?, keep)?;
        return Some(format!("...{}", String::from_utf8_lossy(&tail)));
    }
    let head = mem.read_bytes(data, len.min(LUA_IDSIZE))?;
    Some(shorten(&head, len, firstline))
}

/// `lj_debug_shortname` for '='-names and string chunks, given the first bytes
/// (`head`, at least `LUA_IDSIZE` of them unless the string is shorter) and
/// the full length. Control characters are dropped: labels are single-line.
pub fn shorten(head: &[u8], total_len: usize, firstline: i32) -> String {
    if let Some(rest) = head.strip_prefix(b"=") {
        let kept: Vec<u8> = rest.iter().take(LUA_IDSIZE - 1).copied().filter(|&b| b >= b' ').collect();
        return String::from_utf8_lossy(&kept).into_owned();
    }
    let mut len = 0;
    while len < LUA_IDSIZE - 12 && len < head.len() && head[len] >= b' ' {
        len += 1;
    }
    // firstline == ~0 marks LuaJIT's built-in Lua code (`lj_debug_shortname` does the same test).
    let builtin = firstline == -1;
    let mut out = String::from(if builtin { "[builtin:" } else { "[string \"" });
    if len < total_len {
        len = len.min(LUA_IDSIZE - 15);
        out.push_str(&String::from_utf8_lossy(&head[..len]));
        out.push_str("...");
    } else {
        out.push_str(&String::from_utf8_lossy(&head[..len]));
    }
    out.push_str(if builtin { "]" } else { "\"]" });
    out
}
