//! Aligned memory for log pages and I/O buffers.
//!
//! Invariants: an [`AlignedBuf`] owns `len` bytes at an address aligned to `align` (a power of
//! two, at least 8), zero-initialised at allocation; it is `Send + Sync` because it is plain owned
//! memory. Log frames and O_DIRECT buffers are both `AlignedBuf`s aligned to the device sector size
//! (4096), so any of them can be handed to the disk as is.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// An owned, zeroed, aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf exclusively owns its allocation (like a Box<[u8]>); no interior sharing.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the owned bytes (mutation needs &mut).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align`. `len == 0` allocates one alignment unit so
    /// the pointer is always real.
    ///
    /// # Panics
    /// If `align` is not a power of two or the allocation fails (out of memory), like `Vec`.
    #[must_use]
    pub fn zeroed(len: usize, align: usize) -> Self {
        let align = align.max(8);
        let layout = Layout::from_size_align(len.max(align), align).expect("valid buffer layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the buffer is empty (never: see [`AlignedBuf::zeroed`]).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Base pointer, valid for `len()` bytes while `self` lives.
    #[must_use]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable base pointer, valid for `len()` bytes while `self` lives.
    #[must_use]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The bytes, mutably.
    #[must_use]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated by alloc_zeroed with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len())
            .field("align", &self.layout.align())
            .finish()
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two).
#[must_use]
pub const fn align_up(n: u64, align: u64) -> u64 {
    (n + align - 1) & !(align - 1)
}

/// Rounds `n` down to a multiple of `align` (a power of two).
#[must_use]
pub const fn align_down(n: u64, align: u64) -> u64 {
    n & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(10_000, 4096);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9_999] = 7;
        assert_eq!(b.as_slice()[9_999], 7);
        assert_eq!(align_up(4097, 4096), 8192);
        assert_eq!(align_down(8191, 4096), 4096);
    }
}
