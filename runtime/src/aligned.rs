//! 64-byte aligned byte buffers.

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// Buffers from this size on are anonymous mappings the kernel is asked to back with huge
/// pages (Linux's transparent huge pages in `madvise` mode): a run's scratch memory (the
/// arena) is tens of megabytes for a transformer at its bound, and with 4 KiB pages its
/// kernels' strided walks miss the TLB.
const HUGE_FROM: usize = 2 << 20;

enum Storage {
    Heap(Vec<Block>),
    Mapped(memmap2::MmapMut),
}

/// A zero-initialized buffer whose start is 64-byte aligned.
pub struct AlignedBuf {
    storage: Storage,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len >= HUGE_FROM {
            if let Ok(m) = memmap2::MmapMut::map_anon(len) {
                // Advice only: where huge pages are off, the mapping works as it is.
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return AlignedBuf { storage: Storage::Mapped(m), len };
            }
        }
        AlignedBuf { storage: Storage::Heap(vec![Block([0; 64]); len.div_ceil(64).max(1)]), len }
    }
    pub fn from_slice(s: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(s.len());
        b.as_mut_slice().copy_from_slice(s);
        b
    }
    pub fn as_ptr(&self) -> *const u8 {
        match &self.storage {
            Storage::Heap(v) => v.as_ptr() as *const u8,
            Storage::Mapped(m) => m.as_ptr(),
        }
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.storage {
            Storage::Heap(v) => v.as_mut_ptr() as *mut u8,
            Storage::Mapped(m) => m.as_mut_ptr(),
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the storage holds at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
