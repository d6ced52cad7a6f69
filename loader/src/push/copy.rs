//! One partition copy to one replica: the file in pieces, each acknowledged before the next is
//! sent (the node's backpressure), restarted from the start on a failure a retry can cure.

use super::progress::Progress;
use scoregrid_shard::{ModelVersion, PartitionId};
use scoregrid_wire::admin::AdminCalls;
use scoregrid_wire::message::StageChunk;
use scoregrid_wire::{NodeClient, NodeError, RpcError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A bound on the bytes a load sends per second, over all nodes: staging shares the nodes'
/// cores with readers, and this is how an operator keeps it from crowding them out. Each piece
/// waits for its turn; turns are spaced by the piece's size at the rate.
pub(crate) struct Pacer {
    bytes_per_second: f64,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    pub(crate) fn new(bytes_per_second: u64) -> Option<Self> {
        (bytes_per_second > 0).then(|| Self {
            bytes_per_second: bytes_per_second as f64,
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    async fn wait(&self, bytes: usize) {
        let start = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Tries of one copy before it counts as failed for this round.
const COPY_ATTEMPTS: u32 = 3;

/// A partition file as the loader encoded it: in RAM, or in the spool folder on disk.
pub(crate) struct EncodedFile {
    pub(crate) body: Body,
    pub(crate) bytes: u64,
    pub(crate) checksum: u32,
}

pub(crate) enum Body {
    Memory(Arc<[u8]>),
    Disk(PathBuf),
}

/// Reads the pieces of one file: from RAM, or from its spool file (which the build just wrote,
/// so the page cache serves it).
enum Pieces<'a> {
    Memory(&'a [u8]),
    Disk(std::fs::File, &'a PathBuf),
}

impl Pieces<'_> {
    fn open(file: &EncodedFile) -> Result<Pieces<'_>, String> {
        Ok(match &file.body {
            Body::Memory(bytes) => Pieces::Memory(bytes),
            Body::Disk(path) => Pieces::Disk(
                std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
                path,
            ),
        })
    }

    fn read(&self, offset: usize, end: usize) -> Result<Vec<u8>, String> {
        match self {
            Pieces::Memory(bytes) => Ok(bytes[offset..end].to_vec()),
            Pieces::Disk(file, path) => {
                use std::os::unix::fs::FileExt;
                let mut piece = vec![0u8; end - offset];
                file.read_exact_at(&mut piece, offset as u64)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(piece)
            }
        }
    }
}

/// Whether another try of the same copy, at once, can succeed: a stream failed, or the node
/// lost the upload (it restarted, or evicted it) and asks for the file from the start. A node
/// that does not answer in time is not asked again this round ([`gone`]).
fn retriable(error: &RpcError) -> bool {
    match error {
        RpcError::Remote {
            error: NodeError::Refused(message),
            ..
        } => message.contains("restart the file") || message.contains("retry later"),
        RpcError::Transport { .. } => true,
        _ => false,
    }
}

/// Whether the node looks gone (no answer, no connection): the rest of its copies wait for the
/// next round, by which time the map says whether it is down.
pub(crate) fn gone(error: &RpcError) -> bool {
    matches!(error, RpcError::Timeout(_) | RpcError::Unreachable(..))
}

/// One partition copy to send: the file, where to, and how.
pub(crate) struct Copy<'a> {
    pub(crate) client: &'a dyn NodeClient,
    pub(crate) version: &'a ModelVersion,
    pub(crate) partition: PartitionId,
    pub(crate) file: &'a EncodedFile,
    pub(crate) chunk_bytes: usize,
    pub(crate) progress: &'a Progress,
    pub(crate) pacer: Option<&'a Pacer>,
}

impl Copy<'_> {
    /// Stages the file on the node.
    ///
    /// # Errors
    /// The node's refusal (a file it found invalid), or the last error after [`COPY_ATTEMPTS`]
    /// tries of a retriable one.
    pub(crate) async fn send(&self) -> Result<(), RpcError> {
        let mut attempt = 1;
        loop {
            match self.send_once().await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < COPY_ATTEMPTS && retriable(&error) => {
                    tracing::debug!(node = %self.client.node(), partition = %self.partition, %error, attempt, "partition copy failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn send_once(&self) -> Result<(), RpcError> {
        let (client, partition, file) = (self.client, self.partition, self.file);
        let total = file.bytes as usize;
        let refused = |message: String| RpcError::Remote {
            node: client.node(),
            error: NodeError::Refused(message),
        };
        let local =
            |message: String| refused(format!("the loader cannot read its own copy: {message}"));
        let pieces = Pieces::open(file).map_err(local)?;
        let mut offset = 0usize;
        loop {
            let end = (offset + self.chunk_bytes).min(total);
            if let Some(pacer) = self.pacer {
                pacer.wait(end - offset).await;
            }
            let bytes = pieces.read(offset, end).map_err(local)?;
            let reply = client
                .stage_chunk(StageChunk {
                    version: self.version.clone(),
                    partition,
                    file_bytes: total as u64,
                    checksum: file.checksum,
                    offset: offset as u64,
                    bytes,
                })
                .await?;
            self.progress.bytes((end - offset) as u64);
            match reply {
                Some(staged)
                    if staged.partition == partition && staged.checksum == file.checksum =>
                {
                    // A node that had it already answers the first piece: count the rest as done.
                    self.progress.bytes((total - end) as u64);
                    return Ok(());
                }
                Some(staged) => {
                    return Err(refused(format!(
                        "staged partition {} with checksum {:08x}, expected {partition} with {:08x}",
                        staged.partition, staged.checksum, file.checksum
                    )));
                }
                None if end < total => offset = end,
                None => {
                    return Err(refused(format!(
                        "partition {partition}: all {total} bytes sent and the node did not confirm them; restart the file"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;
    use std::time::Duration;
    use tokio::time::Instant;

    /// Pieces leave at the rate, whoever asks: 1 MB/s spaces 100 kB pieces 100 ms apart, on
    /// tokio's paused clock (virtual time, so the test measures the schedule, not the machine).
    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_pieces_by_their_size() {
        assert!(Pacer::new(0).is_none(), "0 means unbounded");
        let pacer = Pacer::new(1_000_000).expect("a pacer");
        let started = Instant::now();
        let mut at = Vec::new();
        for _ in 0..4 {
            pacer.wait(100_000).await;
            at.push(started.elapsed());
        }
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 100, 200, 300]);
        // Idle time is not saved up for a burst later.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = Instant::now();
        pacer.wait(100_000).await;
        pacer.wait(100_000).await;
        assert_eq!(now.elapsed().as_millis(), 100);
    }
}
