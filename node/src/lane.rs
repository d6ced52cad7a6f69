//! [`StagingLane`]: the one thread a node stages partition pieces on, at a lower scheduling
//! priority than the threads that answer reads.
//!
//! Staging a piece writes it to disk and, for the last piece of a file, reads the file back,
//! verifies and decodes it: CPU work proportional to the bytes a load sends. On the tokio
//! blocking pool that work ran at the same priority as scoring and, on a machine whose cores
//! are all serving, a load as fast as the nodes took it multiplied readers' p99 by hundreds
//! (BENCHMARKS.md 3c). On its own thread with a positive nice value, the kernel gives staging
//! the cores readers leave idle and preempts it when a read wakes up; the loader waits for each
//! piece's reply before sending the next, so a slower lane slows the whole stream of pieces
//! (and the QUIC work of receiving them) down with it.

use scoregrid_wire::{NodeError, Response};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Pieces waiting for the lane at most: a loader keeps `load.parallelism` copies in flight per
/// node, each with one piece outstanding, so this is never reached by one loader.
pub const LANE_QUEUE_MAX: usize = 64;

type Work = Box<dyn FnOnce() + Send + 'static>;

/// A handle to the lane's thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct StagingLane {
    jobs: mpsc::SyncSender<Work>,
    node: String,
}

/// Why a lane could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("cannot start the staging thread: {0}")]
    Spawn(std::io::Error),
    #[error("node.staging_nice {0}: a nice value is from -20 to 19")]
    Nice(i32),
}

impl StagingLane {
    /// Starts the lane's thread at `nice` (0: the priority of the rest of the process; 19: the
    /// lowest). A nice value the process may not take (a negative one without privileges) is
    /// logged and the thread runs at the process's own.
    ///
    /// # Errors
    /// [`LaneError::Nice`] for a value outside -20..=19, [`LaneError::Spawn`] if no thread starts.
    pub fn start(node: &str, nice: i32) -> Result<Self, LaneError> {
        if !(-20..=19).contains(&nice) {
            return Err(LaneError::Nice(nice));
        }
        let (jobs, queue) = mpsc::sync_channel::<Work>(LANE_QUEUE_MAX);
        let name = node.to_string();
        std::thread::Builder::new()
            .name("staging-lane".into())
            .spawn(move || {
                if let Err(error) = set_thread_nice(nice) {
                    tracing::warn!(node = %name, nice, %error, "cannot lower the staging thread's priority; it runs at the process's own");
                }
                for work in queue {
                    work();
                }
            })
            .map_err(LaneError::Spawn)?;
        Ok(Self {
            jobs,
            node: node.to_string(),
        })
    }

    /// Runs `work` on the lane and answers its response; a refusal at once when
    /// [`LANE_QUEUE_MAX`] pieces are waiting already.
    pub fn run(
        &self,
        work: impl FnOnce() -> Response + Send + 'static,
    ) -> impl Future<Output = Response> + Send + 'static {
        let (answer, answered) = oneshot::channel();
        let queued = self.jobs.try_send(Box::new(move || {
            // The caller may have gone (its deadline passed): the piece is staged anyway, and
            // a retry of it is answered from what is on disk.
            let _ = answer.send(work());
        }));
        let node = self.node.clone();
        async move {
            if let Err(error) = queued {
                let why = match error {
                    mpsc::TrySendError::Full(_) => {
                        format!("{LANE_QUEUE_MAX} pieces are waiting to be staged: retry later")
                    }
                    mpsc::TrySendError::Disconnected(_) => "the staging thread has stopped".into(),
                };
                metrics::counter!("scoregrid_node_staging_refused_total", "node" => node)
                    .increment(1);
                return Response::Error(NodeError::Refused(why));
            }
            answered.await.unwrap_or_else(|_| {
                Response::Error(NodeError::Refused(
                    "the staging thread failed on this piece".into(),
                ))
            })
        }
    }
}

/// Sets the calling thread's nice value (Linux: priorities are per thread).
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_nice() -> i32 {
        // SAFETY: as above; getpriority returns the value or -1 with errno (nice -1 is not
        // used by these tests).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test]
    async fn work_runs_on_a_thread_at_the_lane_nice_value() {
        let lane = StagingLane::start("n1", 7).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen_by_lane = seen.clone();
        let response = lane
            .run(move || {
                *seen_by_lane.lock().unwrap() = Some(thread_nice());
                Response::Done
            })
            .await;
        assert!(matches!(response, Response::Done), "{response:?}");
        // The process started at nice 0 in the test harness; the lane is 7 above it.
        let base = thread_nice();
        assert_eq!(*seen.lock().unwrap(), Some((base + 7).min(19)));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let lane = StagingLane::start("n1", 0).unwrap();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let first = lane.run(move || {
            let _ = blocked.recv();
            Response::Done
        });
        let waiting: Vec<_> = (0..LANE_QUEUE_MAX + 1)
            .map(|_| lane.run(|| Response::Done))
            .collect();
        // The first job may or may not have left the queue yet: at least one of the rest is
        // refused, and the refusal says why.
        let mut waiting = waiting.into_iter();
        let last = waiting.next_back().unwrap();
        match last.await {
            Response::Error(NodeError::Refused(why)) => {
                assert!(why.contains("retry later"), "{why}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        release.send(()).unwrap();
        assert!(matches!(first.await, Response::Done));
        drop(waiting);
    }

    #[test]
    fn a_nice_value_out_of_range_is_refused() {
        assert!(matches!(
            StagingLane::start("n1", 20),
            Err(LaneError::Nice(20))
        ));
    }
}
