//! The control plane of a node with a data directory, through its real request interface:
//! staging is invisible until activation, activation waits for every partition the node must
//! hold, corrupt or mismatched input is refused without touching what is served, retention
//! deletes old versions from RAM and disk, and a restarted node serves its active version from
//! disk.

use scoregrid_node::store::Store;
use scoregrid_node::{Control, Node};
use scoregrid_shard::file::encode;
use scoregrid_shard::{
    BuiltModel, ModelBuilder, ModelLayout, ModelSink, ModelVersion, PartitionCount, PartitionId,
    RowRef,
};
use scoregrid_wire::message::{Inventory, StageChunk};
use scoregrid_wire::{FetchCustomer, NodeError, NodeId, Request, Response};

fn model(version: &str, scale: f32) -> BuiltModel {
    let mut b = ModelBuilder::new(ModelLayout {
        version: ModelVersion::new(version).unwrap(),
        dim: 2,
        partitions: PartitionCount::new(4).unwrap(),
        segment_products_max: 3,
    });
    for i in 0..30u64 {
        b.add_customer(i, &[i as f32 * scale, 1.0], &[], RowRef(i))
            .unwrap();
        b.add_product(i, 1, &[1.0, 2.0], true, RowRef(i)).unwrap();
        b.add_pool_entry(i % 2, i, 0.5, RowRef(i)).unwrap();
    }
    b.finish().unwrap()
}

fn node(dir: &std::path::Path) -> Node {
    let store = Store::open(dir).unwrap();
    let all: Vec<PartitionId> = (0..4).map(PartitionId).collect();
    Node::with_control(NodeId(1), Control::new(store, all, 1))
}

fn stage(node: &Node, built: &BuiltModel, partitions: usize) {
    assert_eq!(
        node.handle(Request::StageDirectory(Box::new(built.directory.clone()))),
        Response::Done
    );
    for p in built.partitions.iter().take(partitions) {
        match send_file(node, p.version(), p.id(), &encode(p).bytes, 97) {
            Response::Staged(s) => assert_eq!((s.partition, &s.version), (p.id(), p.version())),
            other => panic!("{other:?}"),
        }
    }
}

fn chunk(
    version: &ModelVersion,
    partition: PartitionId,
    file: &[u8],
    offset: usize,
    piece: usize,
) -> Request {
    let end = (offset + piece).min(file.len());
    Request::StageChunk(StageChunk {
        version: version.clone(),
        partition,
        file_bytes: file.len() as u64,
        checksum: u32::from_le_bytes(file[file.len() - 4..].try_into().unwrap()),
        offset: offset as u64,
        bytes: file[offset..end].to_vec(),
    })
}

/// Sends a partition file in pieces of `piece` bytes; returns the last answer.
fn send_file(
    node: &Node,
    version: &ModelVersion,
    partition: PartitionId,
    file: &[u8],
    piece: usize,
) -> Response {
    let mut offset = 0;
    loop {
        let response = node.handle(chunk(version, partition, file, offset, piece));
        offset = (offset + piece).min(file.len());
        match response {
            Response::StageProgress { received } if offset < file.len() => {
                assert_eq!(received, offset as u64);
            }
            last => return last,
        }
    }
}

fn customer_vector(node: &Node, version: &str, customer: u64) -> Response {
    node.handle(Request::FetchCustomer(FetchCustomer {
        version: ModelVersion::new(version).unwrap(),
        customer,
    }))
}

fn refusal(response: Response) -> String {
    match response {
        Response::Error(NodeError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A staged version is served to requests that name it once it is complete (so that the
/// cluster-wide flip finds every node ready), and becomes the active one only on activation.
#[test]
fn staged_versions_serve_once_complete_and_are_active_only_once_activated() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let v1 = model("v1", 1.0);
    stage(&node, &v1, 3);
    assert!(matches!(
        customer_vector(&node, "v1", 5),
        Response::Error(NodeError::UnknownVersion(_))
    ));
    let message = refusal(node.handle(Request::Activate(ModelVersion::new("v1").unwrap())));
    assert!(message.contains("1 partitions not staged yet"), "{message}");
    stage(&node, &v1, 4);
    assert!(matches!(
        customer_vector(&node, "v1", 5),
        Response::Customer(Some(_))
    ));
    match node.handle(Request::Status) {
        Response::Status(s) => assert_eq!(s.active, None, "complete, not active yet"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        node.handle(Request::Activate(ModelVersion::new("v1").unwrap())),
        Response::Done
    );
    assert!(matches!(
        customer_vector(&node, "v1", 5),
        Response::Customer(Some(_))
    ));
    // A peer can read a partition back in ranges: the same file, checksum included.
    let file = encode(&v1.partitions[2]).bytes;
    let read = node.handle(Request::ReadPartition(
        scoregrid_wire::message::ReadPartition {
            version: ModelVersion::new("v1").unwrap(),
            partition: PartitionId(2),
            offset: 10,
            length: 20,
        },
    ));
    assert_eq!(
        read,
        Response::PartitionFile(scoregrid_wire::message::PartitionFile {
            bytes: file[10..30].to_vec(),
            file_bytes: file.len() as u64,
        })
    );
    match node.handle(Request::Status) {
        Response::Status(s) => {
            assert_eq!(s.active, Some(ModelVersion::new("v1").unwrap()));
            assert!(s.staging.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_partitions_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let v1 = model("v1", 1.0);
    let mut bytes = encode(&v1.partitions[0]).bytes;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let v = v1.directory.version.clone();
    let message = refusal(send_file(&node, &v, PartitionId(0), &bytes, 64));
    assert!(message.contains("checksum mismatch"), "{message}");
    let message = refusal(send_file(&node, &v, PartitionId(0), b"junk-junk", 64));
    assert!(message.contains("bad magic"), "{message}");
    // A file that decodes but is not the partition it was sent as.
    let other = encode(&v1.partitions[1]).bytes;
    let message = refusal(send_file(&node, &v, PartitionId(0), &other, 64));
    assert!(message.contains("holds partition"), "{message}");
    // Pieces must come in order.
    let good = encode(&v1.partitions[0]).bytes;
    assert!(matches!(
        node.handle(chunk(&v, PartitionId(0), &good, 0, 50)),
        Response::StageProgress { received: 50 }
    ));
    let message = refusal(node.handle(chunk(&v, PartitionId(0), &good, 100, 50)));
    assert!(message.contains("expected one at 50"), "{message}");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.inventory(&v).unwrap(),
        Inventory::default(),
        "nothing kept under a real name"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models/v-v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers.len() <= 1,
        "at most the open upload: {leftovers:?}"
    );
}

#[test]
fn retention_drops_old_versions_and_a_restart_serves_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = node(dir.path());
        for (name, scale) in [("v1", 1.0), ("v2", 2.0), ("v3", 3.0)] {
            stage(&node, &model(name, scale), 4);
            assert_eq!(
                node.handle(Request::Activate(ModelVersion::new(name).unwrap())),
                Response::Done
            );
        }
        // One version retained beside the active one: v1 is gone, v2 still answers.
        assert!(matches!(
            customer_vector(&node, "v1", 5),
            Response::Error(NodeError::UnknownVersion(_))
        ));
        assert!(matches!(
            customer_vector(&node, "v2", 5),
            Response::Customer(Some(_))
        ));
        let store = Store::open(dir.path()).unwrap();
        let versions: Vec<String> = store
            .versions()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(versions, ["v2", "v3"]);
        // Roll back to v2, then forward again.
        assert_eq!(
            node.handle(Request::Activate(ModelVersion::new("v2").unwrap())),
            Response::Done
        );
        assert_eq!(node.active(), Some(ModelVersion::new("v2").unwrap()));
        assert_eq!(
            node.handle(Request::Activate(ModelVersion::new("v3").unwrap())),
            Response::Done
        );
    }
    let restarted = node(dir.path());
    assert_eq!(
        restarted.restore().unwrap(),
        Some(ModelVersion::new("v3").unwrap())
    );
    match customer_vector(&restarted, "v3", 5) {
        Response::Customer(Some(profile)) => assert_eq!(profile.vector, vec![15.0, 1.0]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_node_without_a_data_directory_refuses_staging() {
    let node = Node::new(NodeId(9));
    let message = refusal(node.handle(Request::Activate(ModelVersion::new("v1").unwrap())));
    assert!(message.contains("no data directory"), "{message}");
}

/// A partition file corrupted on disk does not stop a restart: it is set aside, reported
/// missing, served by its other replicas meanwhile, and adopted back from a peer's copy.
#[test]
fn a_corrupt_partition_file_is_set_aside_and_fetched_back() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = model("v1", 1.0);
    {
        let node = node(dir.path());
        stage(&node, &v1, 4);
        assert_eq!(
            node.handle(Request::Activate(ModelVersion::new("v1").unwrap())),
            Response::Done
        );
    }
    let victim = v1
        .partitions
        .iter()
        .find(|p| !p.customers().is_empty())
        .unwrap();
    let path = dir
        .path()
        .join(format!("models/v-v1/p{:05}.part", victim.id().0));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x08;
    std::fs::write(&path, bytes).unwrap();

    let restarted = node(dir.path());
    assert_eq!(
        restarted.restore().unwrap(),
        Some(ModelVersion::new("v1").unwrap())
    );
    assert_eq!(
        restarted.missing_partitions(),
        Some((ModelVersion::new("v1").unwrap(), vec![victim.id()]))
    );
    assert!(
        path.with_extension("corrupt").exists(),
        "the corrupt file is kept aside"
    );
    let customer = victim.customers().ids()[0];
    assert!(matches!(
        customer_vector(&restarted, "v1", customer),
        Response::Error(NodeError::BadRequest(_))
    ));

    // A peer's copy is refused if it is not the partition this node lacks...
    let wrong = model("v2", 2.0);
    assert!(
        restarted
            .adopt_partition(&encode(&wrong.partitions[0]).bytes)
            .is_err()
    );
    // ...and taken if it is.
    assert_eq!(
        restarted.adopt_partition(&encode(victim).bytes),
        Ok(victim.id())
    );
    assert_eq!(restarted.missing_partitions(), None);
    assert!(matches!(
        customer_vector(&restarted, "v1", customer),
        Response::Customer(Some(_))
    ));
    assert!(path.exists(), "written back to disk");
}

/// Requests decoded from the network are checked before the node scores with them: a vector of
/// the wrong length or holding NaN, k of 0, and a deadline already passed are each refused with
/// a typed error naming the fault, never a panic or a meaningless ranking.
#[test]
fn malformed_or_late_scoring_requests_are_refused() {
    use scoregrid_shard::{Affinities, ScoringWeights, SegmentKey};
    use scoregrid_wire::{ScoreSegments, SegmentTake};
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path());
    let v1 = model("v1", 1.0);
    stage(&node, &v1, 4);
    let request = |vector: Vec<f32>, k: u32| {
        Request::ScoreSegments(ScoreSegments {
            version: ModelVersion::new("v1").unwrap(),
            vector: Some(vector),
            affinities: Affinities::default(),
            weights: ScoringWeights::default(),
            category: None,
            segments: vec![SegmentTake {
                key: SegmentKey {
                    container: 0,
                    number: 0,
                },
                take: 3,
            }],
            k,
            after: None,
        })
    };
    let bad = |response: Response| match response {
        Response::Error(NodeError::BadRequest(m)) => m,
        other => panic!("expected a bad request, got {other:?}"),
    };
    assert!(bad(node.handle(request(vec![1.0], 5))).contains("values"));
    assert!(bad(node.handle(request(vec![f32::NAN, 1.0], 5))).contains("finite"));
    assert!(bad(node.handle(request(vec![1.0, 1.0], 0))).contains("k = 0"));
    assert!(matches!(
        node.handle(request(vec![1.0, 1.0], 5)),
        Response::Segments(_)
    ));
    let past = std::time::Instant::now() - std::time::Duration::from_millis(1);
    assert_eq!(
        node.handle_until(request(vec![1.0, 1.0], 5), Some(past)),
        Response::Error(NodeError::DeadlineExceeded)
    );
}

/// A node restarted in the middle of a load keeps every partition it had finished (and says so
/// to a rerun), deletes the piece of the one it had not, and completes the version from the
/// rest without being sent the finished ones again.
#[test]
fn a_restart_mid_load_resumes_from_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = model("v1", 1.0);
    let v = v1.directory.version.clone();
    let files: Vec<Vec<u8>> = v1.partitions.iter().map(|p| encode(p).bytes).collect();
    {
        let node = node(dir.path());
        for (i, file) in files.iter().enumerate().take(2) {
            assert!(matches!(
                send_file(&node, &v, PartitionId(i as u32), file, 40),
                Response::Staged(_)
            ));
        }
        // Half of partition 2, then the process dies.
        assert!(matches!(
            node.handle(chunk(&v, PartitionId(2), &files[2], 0, files[2].len() / 2)),
            Response::StageProgress { .. }
        ));
    }
    let node = node(dir.path());
    let sums: Vec<(PartitionId, u32)> = (0..2)
        .map(|i| {
            let f = &files[i];
            (
                PartitionId(i as u32),
                u32::from_le_bytes(f[f.len() - 4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        node.handle(Request::StagedInventory(v.clone())),
        Response::Inventory(Inventory {
            directory: None,
            partitions: sums,
        })
    );
    let names: Vec<String> = std::fs::read_dir(dir.path().join("models/v-v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".part")),
        "no leftovers: {names:?}"
    );
    // A rerun: finished partitions are answered at once, the rest sent, the directory last.
    assert!(matches!(
        node.handle(chunk(&v, PartitionId(0), &files[0], 0, 10)),
        Response::Staged(_)
    ));
    for (i, file) in files.iter().enumerate().skip(2) {
        assert!(matches!(
            send_file(&node, &v, PartitionId(i as u32), file, 1000),
            Response::Staged(_)
        ));
    }
    assert_eq!(
        node.handle(Request::StageDirectory(Box::new(v1.directory.clone()))),
        Response::Done
    );
    assert_eq!(node.handle(Request::Activate(v.clone())), Response::Done);
    assert!(matches!(
        customer_vector(&node, "v1", 5),
        Response::Customer(Some(_))
    ));
    // Staging the directory of a hosted version again is a no-op.
    assert_eq!(
        node.handle(Request::StageDirectory(Box::new(v1.directory.clone()))),
        Response::Done
    );
}

/// A node that follows a map keeps what the map lists and the active version; others leave RAM
/// and disk. A retired version kept on disk serves again after a restart (a rollback).
#[test]
fn versions_the_map_no_longer_lists_leave_ram_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["v1", "v2", "v3"];
    {
        let store = Store::open(dir.path()).unwrap();
        let all: Vec<PartitionId> = (0..4).map(PartitionId).collect();
        let node = Node::with_control(
            NodeId(1),
            Control::new(store, all, scoregrid_node::control::RETAINED_BY_MAP),
        );
        for (i, name) in names.iter().enumerate() {
            stage(&node, &model(name, i as f32 + 1.0), 4);
            assert_eq!(
                node.handle(Request::Activate(ModelVersion::new(name).unwrap())),
                Response::Done
            );
        }
        let listed: Vec<ModelVersion> = ["v2", "v3"]
            .iter()
            .map(|n| ModelVersion::new(n).unwrap())
            .collect();
        node.keep_only(&listed, std::time::Duration::ZERO);
        assert!(matches!(
            customer_vector(&node, "v1", 5),
            Response::Error(NodeError::UnknownVersion(_))
        ));
        let on_disk: Vec<String> = Store::open(dir.path())
            .unwrap()
            .versions()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(on_disk, ["v2", "v3"]);
    }
    let restarted = node(dir.path());
    restarted.restore().unwrap();
    // v2 is not in RAM after the restart; a rollback reads it back from disk.
    assert_eq!(
        restarted.handle(Request::Activate(ModelVersion::new("v2").unwrap())),
        Response::Done
    );
    match customer_vector(&restarted, "v2", 5) {
        Response::Customer(Some(profile)) => assert_eq!(profile.vector, vec![10.0, 1.0]),
        other => panic!("{other:?}"),
    }
}
