//! Logical addresses in the hybrid log.
//!
//! An [`Address`] is a 48-bit byte offset into the log's single logical address space; the
//! page it falls in depends on the log's page size, so the split into (page, offset) is done by
//! the log (`PageGeometry`), not by the type. Address 0 is never a record: the log starts at its
//! first page's offset 64 (`Address::FIRST_VALID`), so 0 doubles as "no address"
//! ([`Address::INVALID`]).

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageGeometry {
    /// log2 of the page size in bytes.
    pub page_bits: u32,
    /// Number of in-memory page frames.
    pub frames: u64,
}

impl PageGeometry {
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
    pub const fn frame(&self, page: u64) -> usize {
        (page % self.frames) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_splits_addresses() {
        let g = PageGeometry {
            page_bits: 12,
            frames: 16,
        };
        let a = Address::new(5 * 4096 + 100);
        assert_eq!(g.page(a), 5);
        assert_eq!(g.offset(a), 100);
        assert_eq!(g.page_start(5), Address::new(5 * 4096));
        assert_eq!(g.frame(21), 5);
        assert_eq!(Address::new(u64::MAX), Address::MAX);
    }
}
