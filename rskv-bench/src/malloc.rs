//! The allocator set-up of a run's process.
//!
//! glibc's malloc raises its mmap threshold to the size of any mapped chunk that is freed (up to
//! 32 MiB) and its trim threshold to twice that, per process. After that, memory a thread frees
//! stays resident in its arena until the arena's free top exceeds the raised trim threshold. The
//! stores' maintenance and compaction threads allocate and free batches of work every pass, so in
//! R2Kv runs RSS stood 6-12 MiB above what the stores hold. Fixing both thresholds at glibc's
//! starting value of 128 KiB turns the adjustment off: freed memory goes back to the kernel and RSS
//! follows the stores' own memory. Both stores of a comparison run under the same set-up.

/// glibc's starting mmap threshold, kept fixed (and the trim threshold with it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THRESHOLD: libc::c_int = 128 << 10;

/// Fixes glibc's mmap and trim thresholds unless `defaults` (see the module docs). Call before
/// the run allocates anything of size.
pub fn setup(defaults: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !defaults {
        // SAFETY: mallopt only changes the allocator's tuning parameters; it is called before
        // the run's threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = defaults;
}

/// What [`setup`] did, for the run's result.
pub fn describe(defaults: bool) -> String {
    if cfg!(all(target_os = "linux", target_env = "gnu")) && !defaults {
        "glibc malloc, mmap and trim thresholds fixed at 128 KiB".to_string()
    } else if cfg!(target_env = "gnu") {
        "glibc malloc, default (dynamic) thresholds".to_string()
    } else {
        "the platform's malloc, untouched".to_string()
    }
}
