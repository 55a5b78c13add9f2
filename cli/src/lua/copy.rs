//! A copy of part of another process's memory, read as if it were the
//! process: `ljprobe heap` copies the mappings that hold the Lua heap while
//! the target is stopped, lets it run, and walks the copy at leisure.

use super::Memory;

#[derive(Debug, Default)]
pub struct MemCopy {
    /// Disjoint regions sorted by start address.
    regions: Vec<(u64, Vec<u8>)>,
}

impl MemCopy {
    /// Adds the bytes copied from `start`. Regions must not overlap.
    pub fn add(&mut self, start: u64, bytes: Vec<u8>) {
        let at = self.regions.partition_point(|(s, _)| *s < start);
        self.regions.insert(at, (start, bytes));
    }

    pub fn bytes(&self) -> u64 {
        self.regions.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

impl Memory for MemCopy {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let i = self.regions.partition_point(|(s, _)| *s <= addr);
        let Some((start, bytes)) = i.checked_sub(1).and_then(|i| self.regions.get(i)) else { return false };
        let Ok(off) = usize::try_from(addr - start) else { return false };
        match bytes.get(off..).and_then(|b| b.get(..buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_regions_only() {
        let mut m = MemCopy::default();
        m.add(0x2000, vec![2; 16]);
        m.add(0x1000, (0..16).collect());
        assert_eq!(m.read_u8(0x1003), Some(3));
        assert_eq!(m.read_bytes(0x100e, 2), Some(vec![14, 15]));
        assert_eq!(m.read_bytes(0x100f, 2), None, "a read across a region's end fails");
        assert_eq!(m.read_u8(0xfff), None);
        assert_eq!(m.read_u8(0x2010), None);
        assert_eq!(m.read_u8(0x200f), Some(2));
        assert_eq!(m.bytes(), 32);
    }
}
