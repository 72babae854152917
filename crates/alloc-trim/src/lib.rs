//! certrotd's one foreign call, kept out of the main crate (which forbids `unsafe`): glibc's
//! `malloc_trim`. A daemon that renews a node's keys a few times a year spends its life idle, but
//! a rotation's key generation and TLS probes run on several threads, and glibc keeps each
//! thread's arena at its high-water mark after the memory is freed. Trimming after a rotation
//! returns those pages, so the idle daemon is as small after a rotation as before it.

/// Returns the allocator's free memory to the kernel (every arena, and free pages in the middle of
/// a heap, as glibc ≥ 2.8 does). Returns whether any memory was released. A no-op outside glibc.
pub fn trim() -> bool {
    imp::trim()
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
