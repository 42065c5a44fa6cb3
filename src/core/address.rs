//! Logical addresses in the hybrid log.
//!
//! An [`Address`] is a 48-bit byte offset into the log's single logical address space; the
//! page it falls in depends on the log's page size, so the split into (page, offset) is done by
//! the log (`PageGeometry`), not by the type. Address 0 is never a record: the log starts at its
//! first page's offset 64 (`Address::FIRST_VALID`), so 0 doubles as "no address"
//! ([`Address::INVALID`]).
#![forbid(unsafe_code)]

/// Bits of an address.
pub const ADDRESS_BITS: u32 = 48;

/// A logical log address (48 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Address(u64);

impl Address {
    /// The null address.
    pub const INVALID: Address = Address(0);
    /// The first address a record can have.
    pub const FIRST_VALID: Address = Address(64);
    /// The largest address.
    pub const MAX: Address = Address((1 << ADDRESS_BITS) - 1);
    /// Mask of the address bits.
    pub const MASK: u64 = (1 << ADDRESS_BITS) - 1;

    /// An address from its raw value; bits above 48 are dropped.
    #[must_use]
    pub const fn new(raw: u64) -> Self {
        Address(raw & Self::MASK)
    }

    /// The raw value.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether this is [`Address::INVALID`].
    #[must_use]
    pub const fn is_invalid(self) -> bool {
        self.0 == 0
    }

    /// This address plus `bytes`.
    #[must_use]
    pub const fn add(self, bytes: u64) -> Self {
        Address::new(self.0 + bytes)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Page size and buffer geometry of a hybrid log.
///
/// The frame of a page is `page % frames`, computed without a division instruction (it sits
/// between the index load and the record load of every operation): page numbers have at most
/// [`PAGE_NUMBER_BITS`] bits, so a multiply by a precomputed reciprocal and a shift give the
/// exact quotient (Granlund and Montgomery, "Division by invariant integers using
/// multiplication", 1994, theorem 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageGeometry {
    /// log2 of the page size in bytes.
    pub page_bits: u32,
    /// Number of in-memory page frames.
    pub frames: u64,
    /// `ceil(2^shift / frames)`.
    magic: u64,
    /// `PAGE_NUMBER_BITS + ceil(log2(frames))`.
    shift: u32,
}

/// Bits of a page number: 48-bit addresses over pages of at least 2^12 bytes.
pub const PAGE_NUMBER_BITS: u32 = 48 - 12;

impl PageGeometry {
    /// The geometry of `frames` (at least 1) pages of `2^page_bits` (at least 2^12) bytes.
    #[must_use]
    pub fn new(page_bits: u32, frames: u64) -> Self {
        debug_assert!(page_bits >= 12 && frames >= 1);
        let frames = frames.max(1);
        let shift = PAGE_NUMBER_BITS + (64 - (frames - 1).leading_zeros());
        // m * frames - 2^shift < frames <= 2^ceil(log2 frames): the theorem's condition. m is
        // below 2^(PAGE_NUMBER_BITS + 1) + 1, so it fits a u64.
        let magic = (1u128 << shift).div_ceil(u128::from(frames)) as u64;
        PageGeometry {
            page_bits,
            frames,
            magic,
            shift,
        }
    }

    /// Bytes in one page.
    #[must_use]
    pub const fn page_size(&self) -> u64 {
        1 << self.page_bits
    }

    /// The page an address falls in.
    #[must_use]
    pub const fn page(&self, a: Address) -> u64 {
        a.0 >> self.page_bits
    }

    /// The offset of an address in its page.
    #[must_use]
    pub const fn offset(&self, a: Address) -> u64 {
        a.0 & (self.page_size() - 1)
    }

    /// The first address of `page`.
    #[must_use]
    pub const fn page_start(&self, page: u64) -> Address {
        Address::new(page << self.page_bits)
    }

    /// The frame that holds `page` while it is in memory.
    #[must_use]
    #[inline]
    pub const fn frame(&self, page: u64) -> usize {
        debug_assert!(page >> PAGE_NUMBER_BITS == 0);
        let q = ((page as u128 * self.magic as u128) >> self.shift) as u64;
        (page - q * self.frames) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_splits_addresses() {
        let g = PageGeometry::new(12, 16);
        let a = Address::new(5 * 4096 + 100);
        assert_eq!(g.page(a), 5);
        assert_eq!(g.offset(a), 100);
        assert_eq!(g.page_start(5), Address::new(5 * 4096));
        assert_eq!(g.frame(21), 5);
        assert_eq!(Address::new(u64::MAX), Address::MAX);
    }

    #[test]
    fn frame_is_the_remainder() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let max_page = (1u64 << PAGE_NUMBER_BITS) - 1;
        let frame_counts =
            (1..=300).chain([1000, 4095, 4096, 4097, 65_535, 1 << 20, (1 << 31) + 11]);
        for frames in frame_counts {
            let g = PageGeometry::new(12, frames);
            let mut pages = vec![0, 1, frames - 1, frames, frames + 1, max_page, max_page - 1];
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                pages.push(x & max_page);
                pages.push(x % (frames * 4));
            }
            for p in pages {
                assert_eq!(g.frame(p) as u64, p % frames, "page {p}, {frames} frames");
            }
        }
    }
}
