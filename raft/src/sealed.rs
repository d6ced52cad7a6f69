//! A value kept in one sealed file (magic, format, CRC-32; see `scoregrid_shard::durable`),
//! encoded with the wire codec and written atomically: the Raft vote, the committed log id and
//! the map snapshot.

use scoregrid_shard::durable::{seal, unseal, write_atomically};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// The format every sealed value of this crate (and the log's header) is written in; [`read`]
/// is where an older one would be migrated. 2: the model records of the map grew (checksums,
/// staging reports, retention); files of format 1 are refused with a message, not misread.
pub const FORMAT: u32 = 2;

pub(crate) fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The value in `path`, or `None` when there is no such file.
///
/// # Errors
/// The file cannot be read, or is not a sealed `magic` file of [`FORMAT`] holding a `T`.
pub fn read<T: DeserializeOwned>(path: &Path, magic: &[u8; 8]) -> std::io::Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (format, payload) =
        unseal(&bytes, magic).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if format != FORMAT {
        return Err(invalid(format!(
            "{}: format {format} is not supported",
            path.display()
        )));
    }
    scoregrid_wire::codec::decode(payload)
        .map(Some)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// Writes `value` to `path` atomically.
///
/// # Errors
/// It does not encode, or the file cannot be written.
pub fn write<T: Serialize>(path: &Path, magic: &[u8; 8], value: &T) -> std::io::Result<()> {
    let payload = scoregrid_wire::codec::encode(value).map_err(invalid)?;
    write_atomically(path, &seal(magic, FORMAT, &payload))
}
