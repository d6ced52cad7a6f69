//! Durable small files: every file scoregrid keeps across restarts (partition files, a node's
//! directories and `ACTIVE` marker, the Raft vote, log and snapshots) is written through
//! [`write_atomically`], and the small ones are framed by [`seal`] / [`unseal`].
//!
//! A crash at any point leaves either the old file or the new one under the real name, never
//! half of one: the bytes go to a temporary file of a name no other writer uses, are fsynced,
//! renamed over the real name, and the directory is fsynced so that the rename itself survives.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Suffix of temporary files: a folder scan can recognise (and delete) leftovers of a crash.
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// Bytes of a sealed file around its payload: magic (8), format (4), crc32 (4).
pub const SEAL_BYTES: usize = 16;

/// A temporary name beside `path` that no other writer in any process uses at the same time:
/// the process id and a per-process sequence number tell two writers of the same file apart.
pub fn temporary_path(path: &Path) -> PathBuf {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(
        ".{name}.{}.{sequence}{TEMPORARY_SUFFIX}",
        std::process::id()
    ))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the folder.
///
/// # Errors
/// The I/O error of the first step that failed; the temporary file is removed then.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_path(path);
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&tmp);
        return Err(error);
    }
    sync_parent(path)
}

/// Fsyncs the folder holding `path`, so that a file created, renamed or removed in it stays so
/// after a crash.
///
/// # Errors
/// The folder cannot be opened or synced.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// The CRC-32 (IEEE) every scoregrid file and record is checked with.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// `magic | format u32 | payload | crc32 of everything before it`, little-endian.
pub fn seal(magic: &[u8; 8], format: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + SEAL_BYTES);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&format.to_le_bytes());
    bytes.extend_from_slice(payload);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Why sealed bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a {expected} file (bad magic or too short)")]
    Magic { expected: String },
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
}

/// The format and payload of bytes written by [`seal`] with `magic`.
///
/// # Errors
/// [`SealError`] when the magic or the checksum does not match.
pub fn unseal<'a>(bytes: &'a [u8], magic: &[u8; 8]) -> Result<(u32, &'a [u8]), SealError> {
    if bytes.len() < SEAL_BYTES || &bytes[..8] != magic {
        return Err(SealError::Magic {
            expected: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != trailer {
        return Err(SealError::Checksum);
    }
    let format = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    Ok((format, &body[12..]))
}

/// Removes the leftovers of interrupted [`write_atomically`] calls in `dir` (files ending in
/// [`TEMPORARY_SUFFIX`]); returns how many were removed.
///
/// # Errors
/// The folder cannot be listed or a leftover cannot be removed.
pub fn remove_temporary_files(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let leftover = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(TEMPORARY_SUFFIX));
        if leftover && path.is_file() {
            fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_round_trips_and_every_flipped_byte_is_refused() {
        let sealed = seal(b"SGRDTEST", 3, b"payload");
        assert_eq!(unseal(&sealed, b"SGRDTEST"), Ok((3, &b"payload"[..])));
        for i in 0..sealed.len() {
            let mut broken = sealed.clone();
            broken[i] ^= 0x10;
            assert!(unseal(&broken, b"SGRDTEST").is_err(), "byte {i}");
        }
        for len in 0..sealed.len() {
            assert!(unseal(&sealed[..len], b"SGRDTEST").is_err(), "length {len}");
        }
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        fs::write(dir.path().join(".x.bin.1.2.tmp"), b"half").unwrap();
        assert_eq!(remove_temporary_files(dir.path()).unwrap(), 1);
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }
}
