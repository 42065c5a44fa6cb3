//! Aligned memory for log pages and I/O buffers.
//!
//! Invariants: an [`AlignedBuf`] owns `len` bytes at an address aligned to `align` (a power of
//! two, at least 8), zero-initialised at allocation; it is `Send + Sync` because it is plain owned
//! memory. Its length is always the length the caller asked for: the allocation behind it may be
//! larger (whole huge pages, one alignment unit for `len == 0`), but nothing outside this module
//! ever sees those extra bytes, so a buffer read from or written to a file moves exactly `len`
//! bytes (a rounded length once made recovery ask a snapshot file for more than it held). Log frames and O_DIRECT buffers are both `AlignedBuf`s aligned to the device sector size
//! (4096), so any of them can be handed to the disk as is.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// An owned, zeroed, aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    /// The length asked for (what `len`, `as_slice` and I/O see).
    len: usize,
    /// The allocation: at least `len` bytes.
    layout: Layout,
    /// Whether the memory is an anonymous mapping of its own (large buffers) rather than a
    /// heap allocation.
    mapped: bool,
}

// SAFETY: AlignedBuf exclusively owns its allocation (like a Box<[u8]>); no interior sharing.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the owned bytes (mutation needs &mut).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align`. `len == 0` allocates one alignment unit so
    /// the pointer is always real (the buffer is still empty).
    ///
    /// Buffers of 2 MiB or more (log frames, index tables) are anonymous mappings aligned to
    /// 2 MiB and advised to use transparent huge pages: the kernel hands them out zeroed and
    /// lazily, so untouched memory costs no RSS, and random accesses over hundreds of MiB do not
    /// miss the TLB on nearly every operation. (The global allocator would memset them, touching
    /// every page before the advice could apply.)
    ///
    /// # Panics
    /// If `align` is not a power of two or the allocation fails (out of memory), like `Vec`.
    #[must_use]
    pub fn zeroed(len: usize, align: usize) -> Self {
        let align = align.max(8);
        if len >= HUGE_PAGE && align <= HUGE_PAGE {
            if let Some(buf) = Self::mapped(len) {
                return buf;
            }
        }
        let layout = Layout::from_size_align(len.max(align), align).expect("valid buffer layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self {
            ptr,
            len,
            layout,
            mapped: false,
        }
    }

    /// Like [`AlignedBuf::zeroed`] with 4 KiB alignment, but from 64 KiB up always an
    /// anonymous mapping of its own (under 2 MiB one of exactly the buffer's 4 KiB pages,
    /// without huge pages), so that memory the buffer never touches, or gives back with
    /// [`AlignedBuf::discard`], costs no RSS whatever the allocator would have done: what log
    /// frames and the read cache's frames are made of.
    #[must_use]
    pub fn zeroed_lazy(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if (LAZY_FROM..HUGE_PAGE).contains(&len) {
            let size = len.next_multiple_of(4096);
            // SAFETY: an anonymous private mapping at an address of the kernel's choosing
            // touches no existing memory.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                if let (Some(ptr), Ok(layout)) = (
                    NonNull::new(p.cast::<u8>()),
                    Layout::from_size_align(size, 4096),
                ) {
                    return Self {
                        ptr,
                        len,
                        layout,
                        mapped: true,
                    };
                }
            }
        }
        Self::zeroed(len, 4096)
    }

    #[cfg(target_os = "linux")]
    fn mapped(asked: usize) -> Option<Self> {
        let len = asked.next_multiple_of(HUGE_PAGE);
        let total = len + HUGE_PAGE;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        // SAFETY: both trimmed ranges lie inside the mapping just created and outside the
        // aligned range kept.
        unsafe {
            if aligned > start {
                libc::munmap(p, aligned - start);
            }
            let end = aligned + len;
            if start + total > end {
                libc::munmap(end as *mut libc::c_void, start + total - end);
            }
        }
        advise_huge_pages(aligned as *mut u8, len);
        let layout = Layout::from_size_align(len, HUGE_PAGE).ok()?;
        Some(Self {
            ptr: NonNull::new(aligned as *mut u8)?,
            len: asked,
            layout,
            mapped: true,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn mapped(_len: usize) -> Option<Self> {
        None
    }

    /// Length in bytes: the length asked for, never the rounded allocation.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        // SAFETY: ptr is valid for layout.size() >= len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    #[must_use]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AlignedBuf {
    /// Gives the buffer's memory back to the kernel while keeping the allocation: every byte
    /// reads as zero afterwards, and the memory costs no RSS until it is written again (on
    /// Linux, `madvise(MADV_DONTNEED)` of the whole 4 KiB pages inside the buffer, with the
    /// bytes outside them zeroed by hand; elsewhere, the bytes are zeroed).
    ///
    /// # Safety
    /// No other thread may access the buffer while this runs (a concurrent write could be
    /// lost, a concurrent read could see either contents), and no device I/O may be in flight
    /// on it.
    pub unsafe fn discard(&self) {
        let start = self.ptr.as_ptr() as usize;
        let end = start + self.len;
        #[cfg(target_os = "linux")]
        {
            let first = start.next_multiple_of(4096);
            let last = end & !4095;
            if last > first {
                // SAFETY: [first, last) is whole pages inside this live allocation (ours
                // alone), and the caller guarantees nobody accesses it meanwhile; private
                // anonymous memory reads back as zeros after MADV_DONTNEED.
                let r = unsafe {
                    libc::madvise(
                        first as *mut libc::c_void,
                        last - first,
                        libc::MADV_DONTNEED,
                    )
                };
                if r == 0 {
                    // SAFETY: the edges are inside the buffer, accessed by nobody else.
                    unsafe {
                        std::ptr::write_bytes(start as *mut u8, 0, first - start);
                        std::ptr::write_bytes(last as *mut u8, 0, end - last);
                    }
                    return;
                }
            }
        }
        // SAFETY: the whole buffer, accessed by nobody else meanwhile.
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
}

/// Zero-initialised 8-byte words accessed only as atomics, whose memory can be given back to
/// the kernel ([`AtomicWords::discard`]) while shared: what the read cache's frames are.
pub struct AtomicWords {
    buf: AlignedBuf,
}

impl AtomicWords {
    /// `n` zeroed words (lazily backed by the kernel when large).
    #[must_use]
    pub fn zeroed(n: usize) -> Self {
        Self {
            buf: AlignedBuf::zeroed_lazy(n * 8),
        }
    }

    /// The words.
    #[must_use]
    pub fn words(&self) -> &[crate::sync::AtomicU64] {
        // SAFETY: the buffer is 4096-aligned, `n * 8` bytes, zero-initialised, owned by
        // `self` and only ever accessed through these atomics (and `discard`, below);
        // AtomicU64 has the size and alignment of u64 and every bit pattern is valid.
        unsafe {
            std::slice::from_raw_parts(
                self.buf.as_ptr().cast::<crate::sync::AtomicU64>(),
                self.buf.len() / 8,
            )
        }
    }

    /// Every word reads as zero afterwards, and the memory costs no RSS until written again.
    /// Callers discard words nobody uses any more; if a thread did touch them meanwhile, it
    /// would see old values or zeros (the kernel swaps whole pages of words under it), each a
    /// valid `AtomicU64`, so this is memory safe either way.
    pub fn discard(&self) {
        #[cfg(target_os = "linux")]
        {
            let start = self.buf.as_ptr() as usize;
            let len = self.buf.len() & !4095;
            if len > 0 {
                // SAFETY: whole pages at the start of this live allocation (4096-aligned),
                // which only atomics access (see above): MADV_DONTNEED replaces each page
                // with zeros at once, never a word in part.
                let r =
                    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                if r == 0 {
                    for w in &self.words()[len / 8..] {
                        w.store(0, crate::sync::Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
        for w in self.words() {
            w.store(0, crate::sync::Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for AtomicWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicWords")
            .field("bytes", &self.buf.len())
            .finish()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: ptr/size are exactly the range kept from the mapping made in `mapped`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
            return;
        }
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

/// Buffers from this size up are mappings of their own in [`AlignedBuf::zeroed_lazy`].
const LAZY_FROM: usize = 64 << 10;

/// Size of a transparent huge page on x86-64 and aarch64 (4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back `[ptr, ptr + len)` with transparent huge pages. Advice only: where
/// THP is off or unsupported the call fails and nothing changes.
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: madvise with MADV_HUGEPAGE only changes how the kernel backs the range, never
        // its contents; the range belongs to one live allocation of the caller.
        let _ = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(test)]
mod huge_tests {
    use super::*;

    #[test]
    fn large_buffers_are_mapped_zeroed_and_aligned() {
        let mut b = AlignedBuf::zeroed(5 << 20, 4096);
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(b.as_slice().iter().step_by(4096).all(|&x| x == 0));
        b.as_mut_slice()[(5 << 20) - 1] = 1;
    }

    #[test]
    fn the_length_is_the_one_asked_for_whatever_the_allocation() {
        // Around the huge-page threshold and between multiples of it (3 MiB lies in a 4 MiB
        // mapping): the slice, and so every read or write of the buffer, is exactly `len`.
        for len in [
            0,
            1,
            4096,
            HUGE_PAGE - 4096,
            HUGE_PAGE,
            3 << 20,
            (4 << 20) + 4096,
        ] {
            let mut b = AlignedBuf::zeroed(len, 4096);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_slice().len(), len);
            assert_eq!(b.as_mut_slice().len(), len);
            assert_eq!(b.is_empty(), len == 0);
        }
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

/// Hints the CPU to load the cache line at `p` (no effect where unsupported; never faults, so
/// `p` may point anywhere).
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
