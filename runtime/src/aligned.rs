//! 64-byte aligned byte buffers.

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// A heap buffer whose start is 64-byte aligned.
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf { blocks: vec![Block([0; 64]); len.div_ceil(64).max(1)], len }
    }
    pub fn from_slice(s: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(s.len());
        b.as_mut_slice().copy_from_slice(s);
        b
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.blocks.as_ptr() as *const u8
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.blocks.as_mut_ptr() as *mut u8
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `blocks` holds at least `len` initialized bytes.
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
