//! Whom a process trusts on its own machine: the owners of a cache's state directory and of
//! the files and socket in it.
//!
//! A cache may sit in a folder other users can write (a shared `1777` or group cache). A node
//! state file or socket planted there by another user must never receive a token or be obeyed,
//! so a node refuses a state dir others can write, and a caller delegates to a node only when
//! the node's state dir, `node.json` and socket belong to a uid it trusts: root, itself, or the
//! owner of the cache root (who can replace every blob of the cache anyway).

use crate::os;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Why a path in a cache's state dir is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Owned by a uid this process does not trust.
    #[error("'{}' belongs to uid {owner}, not to root, to you (uid {me}) or to the cache's owner: another user may have planted it", .path.display())]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's uid.
        me: u32,
    },
    /// Writable by users this process does not trust.
    #[error("'{}' can be written by other users (mode {mode:o}): run `chmod go-w '{}'`, or use a cache dir only trusted users can write", .path.display(), .path.display())]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not what it should be (a symlink, a regular file where a socket belongs, ...).
    #[error("'{}' is not a {expected}", .path.display())]
    Kind {
        /// The path.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// Cannot be read or created.
    #[error("cannot use '{}': {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl TrustError {
    /// True when the path simply does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// This process's effective uid.
pub fn euid() -> u32 {
    os::euid()
}

/// A group named by name or number (`--control-group`).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    #[cfg(windows)]
    return Err(format!("groups are a Unix feature: '{}'", swarm_protocol::repo::Printable(name)));
    #[cfg(unix)]
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("there is no group '{}' on this machine", swarm_protocol::repo::Printable(name))),
        Err(e) => Err(format!("cannot look up group '{}': {e}", swarm_protocol::repo::Printable(name))),
    }
}

/// The uids whose state files a process trusts in the cache at `cache_root`.
pub fn trusted_uids(cache_root: &Path) -> Vec<u32> {
    let mut uids = vec![0, euid()];
    if let Ok(m) = fs::metadata(cache_root) {
        uids.push(os::owner(&m));
    }
    uids
}

fn meta(path: &Path) -> Result<fs::Metadata, TrustError> {
    fs::symlink_metadata(path).map_err(|source| TrustError::Io { path: path.to_path_buf(), source })
}

/// Checks that `path` is of the kind `is_kind` accepts (symlinks never are) and owned by one
/// of `trusted`.
pub fn check_owned(
    path: &Path,
    trusted: &[u32],
    expected: &'static str,
    is_kind: fn(&fs::FileType) -> bool,
) -> Result<fs::Metadata, TrustError> {
    let m = meta(path)?;
    if !is_kind(&m.file_type()) {
        return Err(TrustError::Kind { path: path.to_path_buf(), expected });
    }
    if !trusted.contains(&os::owner(&m)) {
        return Err(TrustError::Owner { path: path.to_path_buf(), owner: os::owner(&m), me: euid() });
    }
    Ok(m)
}

/// Checks a directory: owned by one of `trusted`, and writable by nobody else.
pub fn check_dir(path: &Path, trusted: &[u32]) -> Result<(), TrustError> {
    let m = check_owned(path, trusted, "directory", fs::FileType::is_dir)?;
    let mode = os::mode(&m);
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable { path: path.to_path_buf(), mode: mode & 0o7777 });
    }
    Ok(())
}

/// The state dir of a node serving `cache_root`, created (mode 0755) if needed, and checked: a
/// node keeps its identity, its signed-manifest cache and its control socket there, so nobody
/// but its own uid (or root) may be able to write it. Its parent `.locks` must belong to such a
/// uid too; it may be writable by a group (shared caches, umask 002): whatever another user
/// could put in place of the state dir would be owned by that user, and neither the node
/// ([`read_state_file`]) nor a caller (the control client) trusts such files.
pub fn secure_state_dir(cache_root: &Path) -> Result<PathBuf, TrustError> {
    let state = crate::cache::HubCache::new(cache_root.to_path_buf()).swarm_dir();
    let locks = state.parent().map(Path::to_path_buf).unwrap_or_else(|| cache_root.to_path_buf());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::Io { path, source }
    };
    fs::create_dir_all(&locks).map_err(io(&locks))?;
    match os::create_dir(&state, 0o755) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&state)(e)),
    }
    let me = [0, euid()];
    check_owned(&locks, &me, "directory", fs::FileType::is_dir)?;
    check_dir(&state, &me)?;
    Ok(state)
}

/// Writes a file of the node's state (a chunk manifest, an access record) atomically, writable
/// by its owner only whatever the umask, so that no group member can change what the node will
/// sign or serve.
pub fn write_state_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    os::create_dir_all(dir, 0o755)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = os::create_mode(fs::OpenOptions::new().write(true).create(true).truncate(true), 0o644).open(&tmp)?;
    os::set_mode(&f, 0o644)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Reads a file of the node's state only if root or this process's uid owns it and nobody else
/// can write it (checked on the open file): one that another user planted or could change is
/// ignored, as if absent.
pub fn read_state_file(path: &Path) -> Option<Vec<u8>> {
    let mut f = fs::File::open(path).ok()?;
    let m = f.metadata().ok()?;
    let owner = os::owner(&m);
    let mine = m.is_file() && (owner == 0 || owner == euid()) && os::mode(&m) & 0o022 == 0;
    if !mine {
        tracing::warn!(path = %path.display(), owner, "ignoring a state file another user owns or can write");
        return None;
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out).ok()?;
    Some(out)
}

/// True for a Unix socket.
pub fn is_socket(t: &fs::FileType) -> bool {
    os::is_socket(t)
}

/// True for a regular file.
pub fn is_file(t: &fs::FileType) -> bool {
    t.is_file()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = secure_state_dir(tmp.path()).expect("fresh state dir is fine");
        assert_eq!(fs::metadata(&state).expect("meta").permissions().mode() & 0o777, 0o755);
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = secure_state_dir(tmp.path()).expect_err("world-writable state dir");
        assert!(matches!(e, TrustError::Writable { .. }), "{e}");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        // A .locks shared with a group (umask 002, group caches) is fine: what matters is who
        // owns what is in it.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(tmp.path().join(".locks"), fs::Permissions::from_mode(0o2775)).expect("chmod");
        secure_state_dir(tmp.path()).expect("group-writable .locks");
    }

    #[test]
    fn state_files_others_can_change_are_ignored() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("sub/manifest.json");
        write_state_file(&path, b"{}").expect("write");
        assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o644);
        assert_eq!(read_state_file(&path).as_deref(), Some(&b"{}"[..]));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).expect("chmod");
        assert_eq!(read_state_file(&path), None, "a group member could have changed it");
    }

    #[test]
    fn symlinks_and_strangers_are_not_trusted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("node.json");
        fs::write(&file, b"{}").expect("write");
        let link = tmp.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        check_owned(&file, &[euid()], "regular file", is_file).expect("own file");
        assert!(matches!(check_owned(&link, &[euid()], "regular file", is_file), Err(TrustError::Kind { .. })));
        let stranger = euid().wrapping_add(1);
        assert!(matches!(check_owned(&file, &[stranger], "regular file", is_file), Err(TrustError::Owner { .. })));
        assert!(
            check_owned(&tmp.path().join("none"), &[euid()], "regular file", is_file).is_err_and(|e| e.is_missing())
        );
    }
}
