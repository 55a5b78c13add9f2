//! Reading another process's memory. The target keeps running while we read,
//! so any read may fail or return stale bytes; callers treat both as "unknown".

use std::{fs::File, os::unix::fs::FileExt};

use anyhow::Context;

/// Largest single read: a garbage length must not turn into a huge allocation.
pub const MAX_READ: usize = 64 << 20;

/// A readable address space. `read` fills all of `buf` or returns false.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    fn read_bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if len > MAX_READ {
            return None;
        }
        let mut buf = vec![0; len];
        self.read(addr, &mut buf).then_some(buf)
    }

    fn read_u8(&self, addr: u64) -> Option<u8> {
        self.read_array::<1>(addr).map(|b| b[0])
    }

    fn read_u32(&self, addr: u64) -> Option<u32> {
        self.read_array(addr).map(u32::from_ne_bytes)
    }

    fn read_i32(&self, addr: u64) -> Option<i32> {
        self.read_array(addr).map(i32::from_ne_bytes)
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        self.read_array(addr).map(u64::from_ne_bytes)
    }

    fn read_array<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let mut buf = [0; N];
        self.read(addr, &mut buf).then_some(buf)
    }
}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        (**self).read(addr, buf)
    }
}

/// `/proc/PID/mem`: pread needs no ptrace stop, so the target never pauses.
#[derive(Debug)]
pub struct ProcMem {
    pid: u32,
    file: File,
}

impl ProcMem {
    pub fn open(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/mem");
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(Self { pid, file })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        // pread offsets are signed; the kernel rejects the upper half anyway.
        if addr > i64::MAX as u64 || addr.checked_add(buf.len() as u64).is_none() {
            return false;
        }
        self.file.read_exact_at(buf, addr).is_ok()
    }
}

/// Little helpers over a buffer already read: out-of-range offsets give None.
pub fn buf_u32(buf: &[u8], off: u64) -> Option<u32> {
    buf_array(buf, off).map(u32::from_ne_bytes)
}

pub fn buf_i32(buf: &[u8], off: u64) -> Option<i32> {
    buf_array(buf, off).map(i32::from_ne_bytes)
}

pub fn buf_u64(buf: &[u8], off: u64) -> Option<u64> {
    buf_array(buf, off).map(u64::from_ne_bytes)
}

pub fn buf_u8(buf: &[u8], off: u64) -> Option<u8> {
    buf.get(usize::try_from(off).ok()?).copied()
}

fn buf_array<const N: usize>(buf: &[u8], off: u64) -> Option<[u8; N]> {
    let start = usize::try_from(off).ok()?;
    buf.get(start..start.checked_add(N)?)?.try_into().ok()
}
