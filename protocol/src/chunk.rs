//! Chunk arithmetic: how every node cuts a file of a given length, with no negotiation.
//!
//! The rule follows Dragonfly's: `len / 500`, rounded up to a power of two and clamped to
//! 4–64 MiB. A 1 GiB file is 256 chunks of 4 MiB (enough parallel ranges to fill a fast link
//! and fine-grained resume); a 100 GiB file is 1,600 chunks of 64 MiB (a manifest of ~50 KiB).
//! Files of at most 4 MiB are a single chunk.

use std::ops::Range;

/// Smallest chunk size: 4 MiB.
pub const MIN_CHUNK_SIZE: u64 = 4 << 20;
/// Largest chunk size: 64 MiB.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Target number of chunks per file before clamping.
pub const TARGET_CHUNKS: u64 = 500;

/// The chunk size for a file of `len` bytes: a power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
pub fn chunk_size_for(len: u64) -> u64 {
    len.div_ceil(TARGET_CHUNKS)
        .checked_next_power_of_two()
        .unwrap_or(MAX_CHUNK_SIZE)
        .clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
}

/// How a file of a given length is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    /// File length in bytes.
    pub len: u64,
    /// Chunk size in bytes (a power of two; the last chunk may be shorter).
    pub chunk_size: u64,
}

impl ChunkLayout {
    /// The layout every node uses for a file of `len` bytes.
    pub fn for_len(len: u64) -> Self {
        Self { len, chunk_size: chunk_size_for(len) }
    }

    /// Number of chunks. An empty file has one (empty) chunk, so that it too has a manifest entry
    /// and a "done" state.
    pub fn count(&self) -> u32 {
        let n = self.len.div_ceil(self.chunk_size).max(1);
        // chunk_size >= 4 MiB, so a u32 count covers files up to 16 PiB.
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Byte range of chunk `index`, or `None` when the index is out of range.
    pub fn range(&self, index: u32) -> Option<Range<u64>> {
        if index >= self.count() {
            return None;
        }
        let start = u64::from(index) * self.chunk_size;
        Some(start..(start + self.chunk_size).min(self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_of_typical_files() {
        assert_eq!(chunk_size_for(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(1 << 30), 4 << 20);
        assert_eq!(chunk_size_for(10 << 30), 32 << 20);
        assert_eq!(chunk_size_for(100 << 30), 64 << 20);
        assert_eq!(chunk_size_for(u64::MAX), MAX_CHUNK_SIZE);
    }

    #[test]
    fn small_and_empty_files_are_one_chunk() {
        assert_eq!(ChunkLayout::for_len(0).count(), 1);
        assert_eq!(ChunkLayout::for_len(0).range(0), Some(0..0));
        assert_eq!(ChunkLayout::for_len(MIN_CHUNK_SIZE).count(), 1);
        assert_eq!(ChunkLayout::for_len(MIN_CHUNK_SIZE + 1).count(), 2);
    }

    proptest! {
        #[test]
        fn chunks_tile_the_file_exactly(len in 0u64..(1u64 << 40)) {
            let layout = ChunkLayout::for_len(len);
            prop_assert!(layout.chunk_size.is_power_of_two());
            let mut next = 0;
            for i in 0..layout.count() {
                let r = layout.range(i).expect("index in range");
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start || len == 0);
                prop_assert!(r.end - r.start <= layout.chunk_size);
                next = r.end;
            }
            prop_assert_eq!(next, len);
            prop_assert_eq!(layout.range(layout.count()), None);
        }

        #[test]
        fn chunk_size_is_monotonic(a in 0u64..u64::MAX / 2, b in 0u64..u64::MAX / 2) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(chunk_size_for(lo) <= chunk_size_for(hi));
        }
    }
}
