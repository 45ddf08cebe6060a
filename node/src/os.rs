//! What differs between Unix and Windows, in one place: positional file I/O, file modes and
//! owners, and what a full disk looks like.
//!
//! On Windows there are no uids or mode bits: a file's owner is taken to be this process's user
//! and modes read as "writable by its owner only". Access there rests on the ACLs of the user's
//! profile, where the cache lives by default. The node's control socket and the checks built on
//! uids (`cache::trust`, `control`) are Unix-only; `get` runs its own node on Windows.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// Reads and writes at an offset, without moving a shared cursor: `pread`/`pwrite` on Unix,
/// `ReadFile`/`WriteFile` with an offset on Windows.
pub trait FileAt {
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

#[cfg(unix)]
impl FileAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

#[cfg(windows)]
impl FileAt for File {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt as _;
        while !buf.is_empty() {
            match self.seek_read(buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "failed to fill whole buffer")),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt as _;
        while !buf.is_empty() {
            match self.seek_write(buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer")),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// True when a write failed for want of space (ENOSPC, EDQUOT; ERROR_DISK_FULL and
/// ERROR_HANDLE_DISK_FULL on Windows).
pub fn is_disk_full(e: &io::Error) -> bool {
    #[cfg(unix)]
    let raw = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
    #[cfg(windows)]
    let raw = matches!(e.raw_os_error(), Some(112) | Some(39));
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded || raw
}

/// Raises this process's limit on open files to its hard limit (at most 65,536) and returns the
/// limit now in force; `None` where there is no such limit (Windows). A node holds a descriptor
/// for every peer connection, and the usual soft limit (1,024) is less than a large swarm needs.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        // macOS reports an unlimited hard limit and refuses more than OPEN_MAX (10,240).
        for want in [hard.min(65_536), hard.min(10_240)] {
            if want <= soft {
                break;
            }
            if setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
                return Some(want);
            }
        }
        Some(soft)
    }
    #[cfg(windows)]
    None
}

/// This process's effective uid (0 on Windows, which has none).
pub fn euid() -> u32 {
    #[cfg(unix)]
    return nix::unistd::geteuid().as_raw();
    #[cfg(windows)]
    return 0;
}

/// The uid owning a file (on Windows, this process's).
pub fn owner(m: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    return std::os::unix::fs::MetadataExt::uid(m);
    #[cfg(windows)]
    {
        let _ = m;
        euid()
    }
}

/// A file's permission bits (on Windows: 0o755 or 0o644, 0o555 or 0o444 when read-only).
pub fn mode(m: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    return std::os::unix::fs::PermissionsExt::mode(&m.permissions());
    #[cfg(windows)]
    {
        let base = if m.is_dir() { 0o755 } else { 0o644 };
        if m.permissions().readonly() { base & 0o555 } else { base }
    }
}

/// Creates one directory with `mode` (before the umask; ignored on Windows).
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    dir_mode(&mut fs::DirBuilder::new(), mode).create(path)
}

/// Creates a directory and its parents with `mode` (before the umask; ignored on Windows).
pub fn create_dir_all(path: &Path, mode: u32) -> io::Result<()> {
    dir_mode(fs::DirBuilder::new().recursive(true), mode).create(path)
}

fn dir_mode(b: &mut fs::DirBuilder, mode: u32) -> &mut fs::DirBuilder {
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(b, mode);
    #[cfg(windows)]
    let _ = mode;
    b
}

/// Files `o` creates get `mode` (before the umask; ignored on Windows).
pub fn create_mode(o: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(o, mode);
    #[cfg(windows)]
    let _ = mode;
    o
}

/// Sets an open file's mode, whatever the umask did (nothing on Windows).
pub fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    return f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(windows)]
    {
        let _ = (f, mode);
        Ok(())
    }
}

/// True for a Unix socket (never on Windows).
pub fn is_socket(t: &fs::FileType) -> bool {
    #[cfg(unix)]
    return std::os::unix::fs::FileTypeExt::is_socket(t);
    #[cfg(windows)]
    {
        let _ = t;
        false
    }
}
