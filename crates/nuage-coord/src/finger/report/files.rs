//! The users' own files (`.plan`, `.project`, …), read only where anyone could read
//! them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Most bytes shown of one user file (`.plan`, `.project`, `.pgpkey`, `.forward`).
pub const MAX_USER_FILE_BYTES: u64 = 64 << 10;

/// Whether anyone may reach into `dir`: it and every directory above it are
/// searchable by others (as `nobody` needs to open a file inside).
fn searchable_by_all(dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .ancestors()
            .all(|d| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 != 0))
}

/// The file `dir/name` if anyone may read it: a regular file reached without a symbolic
/// link (opened with `O_NOFOLLOW`, and checked to be the file examined), readable by
/// others, in a directory anyone may reach; at most [`MAX_USER_FILE_BYTES`] of it.
pub(super) fn read_public_file(dir: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !searchable_by_all(dir) {
        return None;
    }
    let path = dir.join(name);
    let link_meta = std::fs::symlink_metadata(&path).ok()?;
    if !link_meta.file_type().is_file() || link_meta.mode() & 0o004 == 0 {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .ok()?;
    let meta = file.metadata().ok()?;
    // The file opened must be the one checked (no swap in between).
    if meta.dev() != link_meta.dev() || meta.ino() != link_meta.ino() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_USER_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}
