//! The Raft log and vote on a voter's (or learner's) disk, in `<data_dir>/raft/`:
//!
//! ```text
//! log        "SGRDRLOG" | format u32 | records...
//!            record: payload length u32 | crc32 of payload u32 | payload (a LogRecord, bincode)
//! vote       sealed (magic "SGRDVOTE", format, crc32): the last vote granted
//! committed  sealed (magic "SGRDCOMT"): the last committed log id, to re-apply after a restart
//! ```
//!
//! Appends go to the end of `log` and are fsynced before openraft is told they are durable, so a
//! vote or an acknowledged entry is never forgotten. Truncation and purging are rare (a
//! conflicting follower, a snapshot), so they rewrite the whole file atomically. At start the
//! file is read record by record; the first record that is cut short or fails its checksum ends
//! the log (a torn write from a crash): that tail is dropped, the file truncated to the last good
//! record, and a warning logged, never a crash. The whole log is held in memory as well: the map
//! changes rarely, and a snapshot purges what it covers.
//!
//! The file I/O is synchronous on openraft's storage task: a map change writes a few hundred
//! bytes and one fsync, which costs less than a hop to the blocking pool would save.

use crate::sealed::invalid as io_error;
use crate::types::{Entry, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use scoregrid_shard::durable::{crc32, write_atomically};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const LOG_MAGIC: &[u8; 8] = b"SGRDRLOG";
const VOTE_MAGIC: &[u8; 8] = b"SGRDVOTE";
const COMMITTED_MAGIC: &[u8; 8] = b"SGRDCOMT";
/// The log's format (the same number as the sealed files'); [`LogStore::open`] is where an
/// older one would be migrated.
const FORMAT: u32 = crate::sealed::FORMAT;
const HEADER_BYTES: usize = 12;
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record accepted when reading: a length above it is a corrupt tail, not an
/// allocation. A record is one command (the largest, a bootstrap of 1024 nodes, is ~100 KiB).
pub const RECORD_BYTES_MAX: u32 = 16 << 20;

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Entry(Entry),
    /// Everything up to this log id is purged (covered by a snapshot).
    Purged(LogId<u64>),
}

/// What [`LogStore::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub entries: usize,
    /// Bytes of a torn or corrupt tail that were dropped.
    pub dropped_bytes: u64,
    /// Why the tail was dropped.
    pub dropped_reason: Option<String>,
}

struct Inner {
    dir: PathBuf,
    log: File,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId<u64>>,
    vote: Option<Vote>,
    committed: Option<LogId<u64>>,
}

/// The log store openraft writes through; cheap to clone (its reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn encode_record(record: &LogRecord) -> std::io::Result<Vec<u8>> {
    let payload = scoregrid_wire::codec::encode(record).map_err(io_error)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= RECORD_BYTES_MAX)
        .ok_or_else(|| io_error(format!("log record of {} bytes", payload.len())))?;
    let mut bytes = Vec::with_capacity(payload.len() + RECORD_HEADER_BYTES);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Parses the records of a log file; returns them and the length of the good prefix, and why
/// the rest (a torn or corrupt tail) was dropped.
///
/// # Errors
/// A record that passes its checksum but does not decode: not a torn write but a log of
/// another build, which must not be cut short as if it were one.
fn parse(bytes: &[u8]) -> Result<(Vec<LogRecord>, usize, Option<String>), String> {
    let mut records = Vec::new();
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEADER_BYTES {
            return Ok((records, at, Some("a record header cut short".into())));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > RECORD_BYTES_MAX || rest.len() - RECORD_HEADER_BYTES < len as usize {
            return Ok((
                records,
                at,
                Some(format!("a record of {len} bytes cut short")),
            ));
        }
        let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len as usize];
        if crc32(payload) != crc {
            return Ok((records, at, Some("a record failing its checksum".into())));
        }
        match scoregrid_wire::codec::decode::<LogRecord>(payload) {
            Ok(record) => records.push(record),
            Err(error) => {
                return Err(format!(
                    "the record at byte {at} passes its checksum but does not decode ({error}): \
                     a log written by another build of scoregrid?"
                ));
            }
        }
        at += RECORD_HEADER_BYTES + len as usize;
    }
    Ok((records, at, None))
}

fn header() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES);
    bytes.extend_from_slice(LOG_MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, dropping a torn or corrupt tail.
    ///
    /// # Errors
    /// The folder or files cannot be created, read or written; a `log` whose header is not
    /// ours; a vote or committed file that is corrupt (those are written atomically, so
    /// corruption there is damage, not a crash: the node must not vote again blindly).
    pub fn open(dir: &Path) -> std::io::Result<(Self, Recovery)> {
        fs::create_dir_all(dir)?;
        let _ = scoregrid_shard::durable::remove_temporary_files(dir);
        let path = dir.join("log");
        let mut recovery = Recovery::default();
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        match fs::read(&path) {
            Ok(bytes) => {
                if bytes.len() < HEADER_BYTES || bytes[..HEADER_BYTES] != header()[..] {
                    return Err(io_error(format!(
                        "{}: not a scoregrid Raft log of format {FORMAT}",
                        path.display()
                    )));
                }
                let (records, good, reason) =
                    parse(&bytes).map_err(|why| io_error(format!("{}: {why}", path.display())))?;
                for record in records {
                    match record {
                        LogRecord::Entry(entry) => {
                            entries.insert(entry.log_id.index, entry);
                        }
                        LogRecord::Purged(id) => {
                            entries.retain(|&index, _| index > id.index);
                            last_purged = Some(id);
                        }
                    }
                }
                if good < bytes.len() {
                    recovery.dropped_bytes = (bytes.len() - good) as u64;
                    recovery.dropped_reason = reason;
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(good as u64)?;
                    file.sync_all()?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&path, &header())?;
            }
            Err(e) => return Err(e),
        }
        recovery.entries = entries.len();
        let vote = crate::sealed::read(&dir.join("vote"), VOTE_MAGIC)?;
        let committed: Option<Option<LogId<u64>>> =
            crate::sealed::read(&dir.join("committed"), COMMITTED_MAGIC)?;
        let committed = committed.flatten();
        let log = OpenOptions::new().append(true).open(&path)?;
        let store = Self {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                log,
                entries,
                last_purged,
                vote,
                committed,
            })),
        };
        Ok((store, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as it was before the failed write:
        // every write updates memory only after the disk.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl LogStore {
    /// The id of the last entry in the log (or of the last one purged).
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(inner.last_purged)
    }

    /// Appends `entries` to the file and fsyncs it; only then are they readable.
    ///
    /// # Errors
    /// An entry does not encode, or the file cannot be written or synced.
    pub fn write_entries(&self, entries: Vec<Entry>) -> std::io::Result<()> {
        let mut inner = self.lock();
        let mut bytes = Vec::new();
        for entry in &entries {
            bytes.extend(encode_record(&LogRecord::Entry(entry.clone()))?);
        }
        inner.log.write_all(&bytes)?;
        inner.log.sync_data()?;
        for entry in entries {
            inner.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }
}

impl Inner {
    /// Rewrites the whole log: the purge marker and the entries kept.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let path = self.dir.join("log");
        let mut bytes = header();
        if let Some(id) = self.last_purged {
            bytes.extend(encode_record(&LogRecord::Purged(id))?);
        }
        for entry in self.entries.values() {
            bytes.extend(encode_record(&LogRecord::Entry(entry.clone()))?);
        }
        write_atomically(&path, &bytes)?;
        self.log = OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_log_id = self.last_log_id();
        Ok(LogState {
            last_purged_log_id: self.lock().last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.lock();
        crate::sealed::write(&inner.dir.join("vote"), VOTE_MAGIC, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        crate::sealed::write(&inner.dir.join("committed"), COMMITTED_MAGIC, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.write_entries(entries.into_iter().collect()) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                // The entries may be half on disk: the next open drops a torn tail. Tell
                // openraft, which stops this member rather than acknowledge what is not durable.
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(StorageIOError::write_logs(&error).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let removed = inner.entries.split_off(&log_id.index);
        if let Err(error) = inner.rewrite() {
            inner.entries.extend(removed);
            return Err(StorageIOError::write_logs(&error).into());
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let kept = inner.entries.split_off(&(log_id.index + 1));
        let purged = std::mem::replace(&mut inner.entries, kept);
        let previous = inner.last_purged.replace(log_id);
        if let Err(error) = inner.rewrite() {
            inner.last_purged = previous;
            inner.entries.extend(purged);
            return Err(StorageIOError::write_logs(&error).into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect()
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn a_restarted_store_has_its_entries_vote_and_purge_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, recovery) = LogStore::open(dir.path()).unwrap();
        assert_eq!(recovery, Recovery::default());
        store.write_entries(entries(1..=10)).unwrap();
        store.save_vote(&Vote::new(3, 2)).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 8))).await.unwrap();
        store.purge(log_id(1, 1, 4)).await.unwrap();
        store.truncate(log_id(1, 1, 9)).await.unwrap();
        drop(store);
        let (mut store, recovery) = LogStore::open(dir.path()).unwrap();
        assert_eq!(recovery.entries, 4);
        assert_eq!(indexes(&store), vec![5, 6, 7, 8]);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 8)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 8)));
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_log_goes_on_from_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (store, _) = LogStore::open(dir.path()).unwrap();
        store.write_entries(entries(1..=5)).unwrap();
        drop(store);
        let whole = fs::read(&path).unwrap();
        // Every cut inside the last record, as a crash during its write would leave.
        let (_, good_before_last, _) = parse(&whole[..whole.len() - 1]).unwrap();
        for cut in good_before_last..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let (store, recovery) = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&store), vec![1, 2, 3, 4], "cut at {cut}");
            assert_eq!(recovery.dropped_bytes, (cut - good_before_last) as u64);
            // Appending after recovery continues the log cleanly.
            store.write_entries(entries(5..=5)).unwrap();
            drop(store);
            let (store, recovery) = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&store), vec![1, 2, 3, 4, 5], "cut at {cut}");
            assert_eq!(recovery.dropped_bytes, 0);
            drop(store);
            fs::write(&path, &whole).unwrap();
        }
    }

    /// A record that passes its checksum but does not decode is not a torn write: the log is
    /// refused with the reason, never cut short (it may be a log of another build).
    #[test]
    fn an_undecodable_record_refuses_the_log_instead_of_cutting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (store, _) = LogStore::open(dir.path()).unwrap();
        store.write_entries(entries(1..=3)).unwrap();
        drop(store);
        let mut bytes = fs::read(&path).unwrap();
        let payload = [0xffu8; 5];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        fs::write(&path, &bytes).unwrap();
        let error = LogStore::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("does not decode"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "the log is left as it was");
    }

    #[test]
    fn a_flipped_byte_ends_the_log_at_the_record_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (store, _) = LogStore::open(dir.path()).unwrap();
        store.write_entries(entries(1..=6)).unwrap();
        drop(store);
        let whole = fs::read(&path).unwrap();
        let record = (whole.len() - HEADER_BYTES) / 6;
        let mut broken = whole.clone();
        broken[HEADER_BYTES + 3 * record + RECORD_HEADER_BYTES + 1] ^= 0x40;
        fs::write(&path, &broken).unwrap();
        let (store, recovery) = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3]);
        assert!(
            recovery
                .dropped_reason
                .as_deref()
                .unwrap()
                .contains("checksum"),
            "{recovery:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_and_a_corrupt_vote_too() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("log"), b"something else entirely").unwrap();
        let error = LogStore::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("not a scoregrid Raft log"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vote"), b"SGRDVOTE garbage garbage").unwrap();
        let error = LogStore::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("vote"), "{error}");
    }
}
