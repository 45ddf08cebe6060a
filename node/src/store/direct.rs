//! Chunk data to disk and back without the page cache (`O_DIRECT`, Linux), where the file system
//! takes it.
//!
//! Why: a buffered write allocates a page-cache page for every 4 KiB it writes. On bare metal
//! that costs about 0.3 CPU-s per GiB; on a VM whose host takes freed memory back (virtio-balloon
//! free page reporting) each new page is a fault to the host, and it cost 5 to 7.5 CPU-s per GiB
//! on the 2-core VM of the README, two thirds of a swarm node's CPU. A direct write costs
//! about 0.05 CPU-s per GiB there. Reads of chunk data (the whole-file hash, serving peers) go
//! direct too, or they would allocate those pages anyway. The cost: a file just downloaded is
//! not in memory, so the first load of the model reads it from disk. `--page-cache` (or
//! [`set_enabled`]`(false)`) turns this off.
//!
//! Direct I/O wants the buffer's address, the file offset and the length aligned to the device's
//! block; 4 KiB ([`ALIGN`]) covers the devices in use. [`AlignedBuf`] gives such buffers.
//! [`DataFile`] sends the aligned part of each read or write through its `O_DIRECT` descriptor
//! and the rest (a file's last partial block, a caller with unaligned bytes) through an ordinary
//! one. Linux keeps the two coherent: a direct write drops the cached pages of its range, and a
//! direct read writes dirty ones back first. A file system that refuses `O_DIRECT` at open or at
//! the first I/O (`EINVAL`) gets buffered I/O for that file, and nothing else changes.

use crate::os::FileAt as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Mutex;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The alignment direct I/O gets: buffer address, file offset and length.
pub const ALIGN: usize = 4096;

static ENABLED: AtomicBool = AtomicBool::new(cfg!(target_os = "linux"));

/// Turns direct I/O on or off for files opened from now on (on by default on Linux; elsewhere
/// there is none).
pub fn set_enabled(on: bool) {
    ENABLED.store(on && cfg!(target_os = "linux"), Relaxed);
}

/// A zeroed byte buffer whose start is [`ALIGN`]ed, without unsafe code: a window into a
/// slightly longer vector.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, starting at an aligned address.
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN - 1];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len }
    }

    /// Shortens the buffer to its first `len` bytes (no-op if it is not longer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A buffer of `len` bytes for a caller that overwrites what it reads back: one handed back
    /// with [`Self::recycle`] if there is one of that length (its bytes are then stale, not
    /// zero), else a new one.
    ///
    /// Why: the write buffer of every chunk and the read buffers of every whole-file hash step
    /// were new allocations. Each was zeroed and, above glibc's mmap threshold, faulted in page
    /// by page: about 2 MiB of memset per 4 MiB chunk received from a peer.
    pub fn reused(len: usize) -> Self {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().position(|b| b.len == len) {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                Self::new(len)
            }
        }
    }

    /// Hands the buffer back for [`Self::reused`]. Kept while the pool holds less than
    /// [`POOL_BYTES`]; dropped otherwise.
    pub fn recycle(mut self) {
        if self.raw.is_empty() {
            return;
        }
        // Its whole length again, if it was truncated.
        self.len = self.raw.len() - (ALIGN - 1);
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = pool.iter().map(|b| b.raw.len()).sum();
        if held + self.raw.len() <= POOL_BYTES {
            pool.push(self);
        }
    }
}

/// Buffers handed back for reuse ([`AlignedBuf::recycle`]).
static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());
/// The most the pool keeps: the write buffers of 16 chunks in flight, or 8 whole-file hash steps.
pub const POOL_BYTES: usize = 16 << 20;

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A file read and written at offsets, directly where the bytes allow it.
#[derive(Debug)]
pub struct DataFile {
    buffered: File,
    direct: Option<File>,
    /// Cleared when the file system refuses a direct read or write.
    direct_ok: AtomicBool,
    /// Bytes read or written directly so far (tests check that aligned bytes go direct).
    #[cfg(test)]
    direct_bytes: AtomicU64,
}

impl DataFile {
    /// Opens `path` with `opts` (which may create or truncate it), and a direct descriptor beside.
    pub fn open(path: &Path, opts: &OpenOptions) -> io::Result<Self> {
        let buffered = opts.open(path)?;
        Ok(Self::with_direct(buffered, path, true))
    }

    /// Opens `path` for reading.
    pub fn open_read(path: &Path) -> io::Result<Self> {
        let buffered = File::open(path)?;
        Ok(Self::with_direct(buffered, path, false))
    }

    fn with_direct(buffered: File, path: &Path, write: bool) -> Self {
        let direct = if ENABLED.load(Relaxed) { open_direct(path, write) } else { None };
        let direct_ok = AtomicBool::new(direct.is_some());
        Self {
            buffered,
            direct,
            direct_ok,
            #[cfg(test)]
            direct_bytes: AtomicU64::new(0),
        }
    }

    /// The ordinary descriptor (for sizing and reserving space).
    pub fn file(&self) -> &File {
        &self.buffered
    }

    /// Whether reads and writes go direct where aligned (false after a refusal).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct_ok.load(Relaxed)
    }

    /// Bytes read or written around the page cache so far.
    #[cfg(test)]
    pub(crate) fn direct_bytes(&self) -> u64 {
        self.direct_bytes.load(Relaxed)
    }

    fn count_direct(&self, _n: usize) {
        #[cfg(test)]
        self.direct_bytes.fetch_add(_n as u64, Relaxed);
    }

    /// How many of the `len` bytes at `ptr`, for file offset `offset`, can go direct.
    fn direct_len(&self, offset: u64, ptr: *const u8, len: usize) -> usize {
        let aligned = offset.is_multiple_of(ALIGN as u64) && (ptr as usize).is_multiple_of(ALIGN);
        if aligned && self.is_direct() { len / ALIGN * ALIGN } else { 0 }
    }

    /// Whether `e` is the file system refusing direct I/O; if so, buffered I/O from now on.
    fn refused(&self, e: &io::Error) -> bool {
        let refused = e.raw_os_error() == Some(libc::EINVAL);
        if refused && self.direct_ok.swap(false, Relaxed) {
            tracing::debug!(error = %e, "direct I/O refused; this file goes through the page cache");
        }
        refused
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let k = self.direct_len(offset, buf.as_ptr(), buf.len());
        if let (true, Some(d)) = (k > 0, &self.direct) {
            match d.write_all_at(&buf[..k], offset) {
                Ok(()) => {
                    self.count_direct(k);
                    return self.buffered.write_all_at(&buf[k..], offset + k as u64);
                }
                Err(e) if self.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(buf, offset)
    }

    /// Fills `buf` from `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let k = self.direct_len(offset, buf.as_ptr(), buf.len());
        if let (true, Some(d)) = (k > 0, &self.direct) {
            match d.read_exact_at(&mut buf[..k], offset) {
                Ok(()) => {
                    self.count_direct(k);
                    return self.buffered.read_exact_at(&mut buf[k..], offset + k as u64);
                }
                Err(e) if self.refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.buffered.read_exact_at(buf, offset)
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path, write: bool) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new().read(true).write(write).custom_flags(libc::O_DIRECT).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path, _: bool) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_buffer_is_aligned_and_zeroed_at_any_length() {
        for len in [0, 1, 4095, 4096, 100_000, 512 << 10] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert!((b.as_ptr() as usize).is_multiple_of(ALIGN));
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn a_recycled_buffer_comes_back_whole_for_its_length_until_the_pool_is_full() {
        // A length no other test uses: the pool is shared by the process.
        let len = 3 * ALIGN + 5;
        let mut b = AlignedBuf::reused(len);
        b[0] = 7;
        let at = b.as_ptr();
        b.truncate(10);
        b.recycle();
        let again = AlignedBuf::reused(len);
        assert_eq!(again.as_ptr(), at, "the recycled buffer was not the one handed out");
        assert_eq!(again.len(), len, "a truncated buffer comes back at its whole length");
        assert!((again.as_ptr() as usize).is_multiple_of(ALIGN));
        assert!(AlignedBuf::reused(len).iter().all(|&x| x == 0), "a second one is new, and zeroed");
        // More than the pool keeps: the extra ones are dropped, not kept.
        let pooled = || POOL.lock().expect("pool").iter().map(|b| b.raw.len()).sum::<usize>();
        (0..6).map(|_| AlignedBuf::new(POOL_BYTES / 4)).for_each(AlignedBuf::recycle);
        assert!(pooled() <= POOL_BYTES, "the pool holds {} bytes", pooled());
        assert!(pooled() >= POOL_BYTES / 2, "the pool kept only {} bytes", pooled());
    }

    /// Every mix of aligned and unaligned offsets, buffers and lengths reads back what was
    /// written, whichever descriptor carried each part.
    #[test]
    fn bytes_read_back_as_written_through_both_descriptors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let size = 3 * ALIGN as u64 * 64 + 1234;
        let f = DataFile::open(&path, OpenOptions::new().read(true).write(true).create(true)).expect("open");
        f.file().set_len(size).expect("size");
        let want: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        // Aligned chunks, the file's unaligned tail, and a piece at an unaligned offset.
        let pieces = [(0u64, 64 * ALIGN), (64 * ALIGN as u64, 128 * ALIGN + 1234), (100, 5000)];
        for (at, len) in pieces {
            let mut b = AlignedBuf::new(len);
            b.copy_from_slice(&want[at as usize..at as usize + len]);
            f.write_all_at(&b, at).expect("write");
        }
        // An unaligned source buffer.
        f.write_all_at(&want[1..ALIGN + 1], 1).expect("unaligned write");
        let mut back = AlignedBuf::new(size as usize);
        f.read_exact_at(&mut back, 0).expect("read");
        assert!(back[..] == want[..], "the bytes read back differ from those written");
        let mut part = vec![0u8; 777];
        f.read_exact_at(&mut part, 64 * ALIGN as u64 + 3).expect("unaligned read");
        assert_eq!(part[..], want[64 * ALIGN + 3..64 * ALIGN + 3 + 777]);
        if f.direct.is_some() {
            // Where the file system takes O_DIRECT, the aligned parts went around the page
            // cache: the three aligned writes' whole blocks and the full read's.
            assert!(f.is_direct(), "the file system refused aligned direct I/O");
            let aligned = (64 + 128) * ALIGN as u64;
            assert_eq!(f.direct_bytes(), aligned + size / ALIGN as u64 * ALIGN as u64);
        }
    }
}
