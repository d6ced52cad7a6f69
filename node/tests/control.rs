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
use scoregrid_wire::message::StagePartition;
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
        match node.handle(Request::StagePartition(StagePartition {
            bytes: encode(p).bytes,
        })) {
            Response::Staged(s) => assert_eq!((s.partition, &s.version), (p.id(), p.version())),
            other => panic!("{other:?}"),
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
    // A peer can read a partition back: the same file, checksum included.
    let read = node.handle(Request::ReadPartition(
        scoregrid_wire::message::ReadPartition {
            version: ModelVersion::new("v1").unwrap(),
            partition: PartitionId(2),
        },
    ));
    assert_eq!(
        read,
        Response::PartitionFile(scoregrid_wire::message::PartitionFile {
            bytes: encode(&v1.partitions[2]).bytes
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
    let message = refusal(node.handle(Request::StagePartition(StagePartition { bytes })));
    assert!(message.contains("checksum mismatch"), "{message}");
    let message = refusal(node.handle(Request::StagePartition(StagePartition {
        bytes: b"junk".to_vec(),
    })));
    assert!(message.contains("bad magic"), "{message}");
    assert!(
        Store::open(dir.path())
            .unwrap()
            .versions()
            .unwrap()
            .is_empty(),
        "nothing written"
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
