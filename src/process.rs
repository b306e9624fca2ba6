//! Settings of the whole process, made once at its start.

/// What [`no_transparent_huge_pages`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// Transparent huge pages are off for this process.
    Off,
    /// `MIMALLOC_ALLOW_THP` is set: the allocator decides, as it documents.
    LeftToAllocator,
    /// The kernel refused (or this is not Linux): nothing changed.
    Unchanged,
}

/// Turns transparent huge pages off for this process, unless the operator
/// set `MIMALLOC_ALLOW_THP` (then mimalloc reads it and decides).
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so where
/// the kernel allows them (THP `madvise` or `always`) the first touch of
/// each 2 MiB of heap faults in and zeroes a whole huge page, however
/// little of it is used. Memory grows fastest in a surge, when thousands
/// of connections open at once: zeroing huge pages was 19 % of the
/// service's CPU while 20,000 buyers arrived, and each open connection
/// took 29 KiB of resident memory instead of 17 (docs/bench/surge-17.md).
/// Redis advises the same for its own process.
///
/// Call it first thing in `main`: it applies to pages touched from then on.
#[must_use]
pub fn no_transparent_huge_pages() -> HugePages {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return HugePages::LeftToAllocator;
    }
    disable_thp()
}

#[cfg(target_os = "linux")]
fn disable_thp() -> HugePages {
    let off: libc::c_ulong = 1;
    let unused: libc::c_ulong = 0;
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
    // a flag of this process; no memory is passed to the kernel.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, off, unused, unused, unused) };
    if rc == 0 {
        HugePages::Off
    } else {
        HugePages::Unchanged
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_thp() -> HugePages {
    HugePages::Unchanged
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The flag the kernel keeps for the process, as PR_GET_THP_DISABLE
    /// reports it.
    fn thp_disabled() -> bool {
        let unused: libc::c_ulong = 0;
        // SAFETY: integer arguments only; reads a flag of this process.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, unused, unused, unused, unused) == 1 }
    }

    #[test]
    fn turns_huge_pages_off_for_the_process_unless_the_allocator_is_told_otherwise() {
        match no_transparent_huge_pages() {
            HugePages::Off => assert!(thp_disabled()),
            HugePages::LeftToAllocator => {
                assert!(std::env::var_os("MIMALLOC_ALLOW_THP").is_some());
            }
            HugePages::Unchanged => panic!("the kernel refused PR_SET_THP_DISABLE"),
        }
    }
}
