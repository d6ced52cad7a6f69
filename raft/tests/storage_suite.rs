//! openraft's own storage test suite (`openraft::testing::Suite`) against the log store and the
//! state machine, each built on a fresh temporary data directory: every case of the suite must
//! pass on the real files.

use openraft::testing::{StoreBuilder, Suite};
use scoregrid_raft::TypeConfig;
use scoregrid_raft::log_store::LogStore;
use scoregrid_raft::state_machine::StateMachine;
use scoregrid_raft::types::StorageError;

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let io = |e: std::io::Error| StorageError::from(openraft::StorageIOError::write(&e));
        let dir = tempfile::tempdir().map_err(io)?;
        let raft = dir.path().join("raft");
        let (log, _) = LogStore::open(&raft).map_err(io)?;
        let state_machine = StateMachine::open(&raft).map_err(io)?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes_on_disk() {
    Suite::test_all(OnDisk).expect("openraft's storage suite");
}
