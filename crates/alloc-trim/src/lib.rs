//! certrotd's only foreign calls, kept out of the main crate (which forbids `unsafe`): glibc's
//! `malloc_trim` and `madvise(MADV_PAGEOUT)`. A daemon that renews a node's keys a few times a year
//! spends its life idle, but a rotation's key generation and TLS probes run on several threads and
//! through code the idle loop never runs again: glibc keeps each thread's arena at its high-water
//! mark after the memory is freed, and the code pages the rotation touched stay mapped. After a
//! rotation the daemon gives both back, so it is as small idle after a rotation as before it.

/// Returns the allocator's free memory to the kernel (every arena, and free pages in the middle of
/// a heap, as glibc ≥ 2.8 does). Returns whether any memory was released. A no-op outside glibc.
pub fn trim() -> bool {
    imp::trim()
}

/// Asks the kernel to reclaim the resident pages of this process's read-only file mappings (its
/// code and constant data, and its libraries'): they are clean copies of files on disk, read back
/// on the next touch. Returns the bytes advised (0 where `MADV_PAGEOUT`, Linux 5.4, is missing).
pub fn page_out_code() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    maps.lines()
        .filter_map(read_only_file_mapping)
        .map(|(start, len)| if pageout::advise(start, len) { len } else { 0 })
        .sum()
}

/// `start-end perms offset dev inode path` → (start, length) of a mapping of a file that is not
/// writable (so every page of it is clean and can be dropped without losing anything).
fn read_only_file_mapping(line: &str) -> Option<(usize, usize)> {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next()?, f.next()?);
    let (_offset, _dev, inode) = (f.next()?, f.next()?, f.next()?);
    let path = f.next()?;
    if inode == "0" || !path.starts_with('/') || perms.contains('w') || !perms.contains('p') {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    let (start, end) = (
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    );
    (end > start).then_some((start, end - start))
}

#[cfg(target_os = "linux")]
mod pageout {
    unsafe extern "C" {
        /// `int madvise(void *addr, size_t length, int advice)`.
        fn madvise(addr: *mut core::ffi::c_void, length: usize, advice: i32) -> i32;
    }
    /// `<linux/mman.h>`: reclaim the pages now.
    const MADV_PAGEOUT: i32 = 21;

    pub fn advise(start: usize, len: usize) -> bool {
        // SAFETY: the range is a whole mapping /proc/self/maps listed, page aligned. MADV_PAGEOUT
        // changes no contents: the mapping is private, not writable and backed by a file, so its
        // pages are clean and the kernel reads them back from the file when they are touched
        // again. A mapping that went away meanwhile makes the call fail with ENOMEM, harmlessly.
        unsafe { madvise(start as *mut core::ffi::c_void, len, MADV_PAGEOUT) == 0 }
    }
}

#[cfg(not(target_os = "linux"))]
mod pageout {
    pub fn advise(_start: usize, _len: usize) -> bool {
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    unsafe extern "C" {
        /// glibc, `<malloc.h>`: `int malloc_trim(size_t pad)`.
        fn malloc_trim(pad: usize) -> i32;
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes no pointer, only a padding size, and works on the allocator's
        // own free lists under the allocator's locks; it is callable from any thread at any time
        // and leaves every live allocation untouched.
        unsafe { malloc_trim(0) != 0 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_clean_file_mappings_are_paged_out() {
        let m = super::read_only_file_mapping;
        assert_eq!(
            m("55d0a000-55d0b000 r-xp 00001000 fd:00 1234 /usr/bin/certrotd"),
            Some((0x55d0a000, 0x1000))
        );
        // Writable, anonymous, shared, or no path: never.
        assert_eq!(
            m("55d0a000-55d0b000 rw-p 00001000 fd:00 1234 /usr/bin/certrotd"),
            None
        );
        assert_eq!(m("7f00-8f00 r--p 00000000 00:00 0"), None);
        assert_eq!(m("7f00-8f00 r--s 00000000 fd:00 99 /dev/shm/x"), None);
        assert_eq!(m("7f00-8f00 r-xp 00000000 00:00 0 [vdso]"), None);
    }

    #[test]
    fn code_pages_are_given_back_and_come_back_when_touched() {
        let before = rss_file_kib();
        let advised = super::page_out_code();
        let after = rss_file_kib();
        assert!(advised > 0, "nothing was paged out");
        assert!(
            after < before,
            "file-backed RSS {before} KiB -> {after} KiB"
        );
        // Still runs: the pages fault back in.
        assert!(super::page_out_code() > 0);
    }

    fn rss_file_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn free_pages_below_a_live_block_are_given_back() {
        std::thread::spawn(|| {
            // 16 MiB in 4 KiB blocks, then all freed but the last: the live block at the top of
            // the heap keeps glibc's own trimming from releasing anything, so only trim() can.
            let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4096]).collect();
            let last = blocks.pop();
            drop(blocks);
            let released = super::trim();
            drop(last);
            assert_eq!(released, cfg!(all(target_os = "linux", target_env = "gnu")));
        })
        .join()
        .unwrap();
    }
}
