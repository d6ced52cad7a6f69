//! The codec: every message survives encode -> frame -> read -> decode bit for bit (proptest over
//! all variants, ids at the ends of the range, any f32 bit pattern), and frames that lie about
//! their length or end early are typed errors, refused before the lie costs memory.
//!
//! This test binary counts the largest allocation made on each thread (a wrapper around the
//! system allocator), so "refused without allocating" is measured, not assumed.

use futures_util::FutureExt;
use proptest::prelude::*;
use scoregrid_shard::{
    Affinities, ContainerEntry, Directory, ModelVersion, PartitionCount, PartitionId, RankKey,
    RankedItem, ScoringWeights, SegmentKey, SegmentSummary,
};
use scoregrid_wire::codec::{self, CodecError, FramePart};
use scoregrid_wire::message::{
    Inventory, NodeStatus, PartitionFile, ReadPartition, StageChunk, Staged, StagingStatus,
};
use scoregrid_wire::{
    CustomerProfile, FRAME_BYTES_MAX_DEFAULT, FetchCustomer, NodeError, ProductScore, Request,
    Response, ScoreProducts, ScoreProductsReply, ScoreSegments, ScoreSegmentsReply, SegmentTake,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

// ---- allocation probe ----

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    let _ = LARGEST.try_with(|largest| {
        if bytes > largest.get() {
            largest.set(bytes);
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = f();
    (result, LARGEST.with(Cell::get))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- strategies ----

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        (u64::MAX - 1_000)..=u64::MAX,
        any::<u64>(),
    ]
}

/// Any bit pattern (NaNs with payloads, infinities, subnormals), with the awkward ones pinned.
fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(-0.0f32),
        Just(0.0f32),
        Just(f32::NAN),
        Just(f32::from_bits(0x7fc0_1234)),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MIN_POSITIVE / 2.0),
        any::<u32>().prop_map(f32::from_bits),
    ]
}

/// Finite values, signed zeros and subnormals included (what a customer's weights may be).
fn finite_float() -> impl Strategy<Value = f32> {
    float().prop_map(|f| if f.is_finite() { f } else { 0.5 })
}

fn floats() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(float(), 0..16)
}

fn version() -> impl Strategy<Value = ModelVersion> {
    const CHARACTERS: &[u8] = b"ABCXYZabcxyz0189._-";
    prop::collection::vec(prop::sample::select(CHARACTERS), 1..=64).prop_map(|bytes| {
        ModelVersion::new(std::str::from_utf8(&bytes).expect("ascii")).expect("valid version")
    })
}

fn segment_key() -> impl Strategy<Value = SegmentKey> {
    (id(), any::<u32>()).prop_map(|(container, number)| SegmentKey { container, number })
}

fn rank_key() -> impl Strategy<Value = RankKey> {
    (float(), id()).prop_map(|(score, product)| RankKey { score, product })
}

fn directory() -> impl Strategy<Value = Directory> {
    let summary = (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec((any::<u32>(), any::<u32>()), 0..4),
    )
        .prop_map(
            |(products, in_stock, in_stock_by_category)| SegmentSummary {
                products,
                in_stock,
                in_stock_by_category,
            },
        );
    let entry =
        prop::collection::vec(summary, 0..4).prop_map(|segments| ContainerEntry { segments });
    (
        version(),
        any::<u32>(),
        1..=PartitionCount::MAX,
        prop::collection::hash_map(id(), entry, 0..4),
    )
        .prop_map(|(version, dim, partitions, containers)| Directory {
            version,
            dim,
            partitions: PartitionCount::new(partitions).expect("in range"),
            containers,
        })
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    let staging =
        (version(), any::<u32>(), any::<bool>()).prop_map(|(version, partitions, directory)| {
            StagingStatus {
                version,
                partitions,
                directory,
            }
        });
    (
        id(),
        prop::option::of(version()),
        prop::collection::vec(version(), 0..4),
        prop::collection::vec(staging, 0..4),
    )
        .prop_map(|(node, active, hosted, staging)| NodeStatus {
            node: scoregrid_wire::NodeId(node),
            active,
            hosted,
            staging,
        })
}

/// Fails to compile when a variant is added to `Request` or `Response`: give it a strategy in
/// `request()` / `response()`, then add it here.
#[allow(dead_code)]
fn every_variant_has_a_strategy(request: &Request, response: &Response) {
    match request {
        Request::FetchCustomer(_)
        | Request::ScoreSegments(_)
        | Request::ScoreProducts(_)
        | Request::Status
        | Request::FetchDirectory(_)
        | Request::StageDirectory(_)
        | Request::StageChunk(_)
        | Request::StagedInventory(_)
        | Request::Activate(_)
        | Request::ReadPartition(_)
        | Request::Raft(_)
        | Request::Cluster(_) => {}
    }
    match response {
        Response::Customer(_)
        | Response::Segments(_)
        | Response::Products(_)
        | Response::Status(_)
        | Response::Directory(_)
        | Response::Staged(_)
        | Response::StageProgress { .. }
        | Response::Inventory(_)
        | Response::Done
        | Response::PartitionFile(_)
        | Response::Raft(_)
        | Response::Cluster(_)
        | Response::Error(_) => {}
    }
}

fn request() -> impl Strategy<Value = Request> {
    let fetch = (version(), id()).prop_map(|(version, customer)| {
        Request::FetchCustomer(FetchCustomer { version, customer })
    });
    let segments = (
        version(),
        prop::option::of(floats()),
        prop::collection::vec((any::<u32>(), finite_float()), 0..8),
        (float(), float()),
        prop::option::of(any::<u32>()),
        prop::collection::vec((segment_key(), any::<u32>()), 0..8),
        any::<u32>(),
        prop::option::of(rank_key()),
    )
        .prop_map(
            |(version, vector, affinities, (affinity, pool), category, segments, k, after)| {
                Request::ScoreSegments(ScoreSegments {
                    version,
                    vector,
                    affinities: Affinities::new(affinities),
                    weights: ScoringWeights { affinity, pool },
                    category,
                    segments: segments
                        .into_iter()
                        .map(|(key, take)| SegmentTake { key, take })
                        .collect(),
                    k,
                    after,
                })
            },
        );
    let products = (version(), floats(), prop::collection::vec(id(), 0..16)).prop_map(
        |(version, vector, products)| {
            Request::ScoreProducts(ScoreProducts {
                version,
                vector,
                products,
            })
        },
    );
    let control = prop_oneof![
        Just(Request::Status),
        version().prop_map(Request::FetchDirectory),
        directory().prop_map(|directory| Request::StageDirectory(Box::new(directory))),
        (
            version(),
            any::<u32>(),
            any::<(u64, u32, u64)>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(version, partition, (file_bytes, checksum, offset), bytes)| {
                    Request::StageChunk(StageChunk {
                        version,
                        partition: PartitionId(partition),
                        file_bytes,
                        checksum,
                        offset,
                        bytes,
                    })
                }
            ),
        version().prop_map(Request::StagedInventory),
        version().prop_map(Request::Activate),
        (version(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
            |(version, partition, offset, length)| {
                Request::ReadPartition(ReadPartition {
                    version,
                    partition: PartitionId(partition),
                    offset,
                    length,
                })
            }
        ),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Request::Raft),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Request::Cluster),
    ];
    prop_oneof![fetch, segments, products, control]
}

fn response() -> impl Strategy<Value = Response> {
    let customer = prop::option::of(
        (
            floats(),
            prop::collection::vec(any::<u32>(), 0..8),
            floats(),
        )
            .prop_map(|(vector, category_ids, category_weights)| CustomerProfile {
                vector,
                category_ids,
                category_weights,
            }),
    )
    .prop_map(Response::Customer);
    let segments = (
        prop::collection::vec(
            (id(), float(), any::<u32>()).prop_map(|(product, score, category)| RankedItem {
                product,
                score,
                category,
            }),
            0..16,
        ),
        prop::collection::vec(segment_key(), 0..8),
        id(),
    )
        .prop_map(|(items, missing, scored)| {
            Response::Segments(ScoreSegmentsReply {
                items,
                missing,
                scored,
            })
        });
    let products = (
        prop::collection::vec(
            (id(), float()).prop_map(|(product, score)| ProductScore { product, score }),
            0..16,
        ),
        prop::collection::vec(id(), 0..16),
    )
        .prop_map(|(scores, missing)| Response::Products(ScoreProductsReply { scores, missing }));
    let error = prop_oneof![
        version().prop_map(NodeError::UnknownVersion),
        ".{0,40}".prop_map(NodeError::BadRequest),
        ".{0,40}".prop_map(NodeError::Refused),
        (any::<u64>(), any::<u64>())
            .prop_map(|(sender, receiver)| NodeError::StaleEpoch { sender, receiver }),
        ".{0,40}".prop_map(NodeError::NotAllowed),
        Just(NodeError::DeadlineExceeded),
    ]
    .prop_map(Response::Error);
    let control = prop_oneof![
        node_status().prop_map(Response::Status),
        directory().prop_map(|directory| Response::Directory(Box::new(directory))),
        (version(), any::<u32>(), any::<u32>()).prop_map(|(version, partition, checksum)| {
            Response::Staged(Staged {
                version,
                partition: PartitionId(partition),
                checksum,
            })
        }),
        Just(Response::Done),
        (prop::collection::vec(any::<u8>(), 0..64), any::<u64>()).prop_map(
            |(bytes, file_bytes)| Response::PartitionFile(PartitionFile { bytes, file_bytes })
        ),
        any::<u64>().prop_map(|received| Response::StageProgress { received }),
        (
            prop::option::of(any::<u32>()),
            prop::collection::vec((any::<u32>(), any::<u32>()), 0..8)
        )
            .prop_map(|(directory, partitions)| Response::Inventory(Inventory {
                directory,
                partitions: partitions
                    .into_iter()
                    .map(|(p, c)| (PartitionId(p), c))
                    .collect(),
            })),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Response::Raft),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Response::Cluster),
    ];
    prop_oneof![customer, segments, products, error, control]
}

/// Encode, frame, read the frame back, decode, and compare. `bit_exact`: re-encoding the decoded
/// value must give the same bytes (exact for every f32, NaN payloads and -0.0 included, which
/// `==` cannot check) and its debug form must match; values holding a `HashMap` (a directory)
/// re-encode in another order, and hold no float, so they are compared with `==` instead.
fn assert_round_trip<T: Serialize + DeserializeOwned + Debug + PartialEq>(
    value: &T,
    bit_exact: bool,
) -> Result<(), TestCaseError> {
    let fail = |error: CodecError| TestCaseError::fail(error.to_string());
    let bytes = codec::encode(value).map_err(fail)?;
    let frame = codec::encode_frame(value, FRAME_BYTES_MAX_DEFAULT).map_err(fail)?;
    let payload = codec::read_frame(&mut &frame[..], FRAME_BYTES_MAX_DEFAULT)
        .now_or_never()
        .ok_or_else(|| TestCaseError::fail("reading from memory must not wait"))?
        .map_err(fail)?;
    prop_assert_eq!(&payload, &bytes);
    let decoded: T = codec::decode(&payload).map_err(fail)?;
    if bit_exact {
        let again = codec::encode(&decoded).map_err(fail)?;
        prop_assert_eq!(again, bytes);
        prop_assert_eq!(format!("{decoded:?}"), format!("{value:?}"));
    } else {
        prop_assert_eq!(&decoded, value);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Proves every request variant survives the codec bit for bit.
    #[test]
    fn requests_round_trip(request in request()) {
        let bit_exact = !matches!(request, Request::StageDirectory(_));
        assert_round_trip(&request, bit_exact)?;
    }

    /// Proves every response variant survives the codec bit for bit.
    #[test]
    fn responses_round_trip(response in response()) {
        let bit_exact = !matches!(response, Response::Directory(_));
        assert_round_trip(&response, bit_exact)?;
    }

    /// Proves a frame cut anywhere is a typed error (never a panic, never a short payload), and
    /// the whole frame reads back.
    #[test]
    fn a_frame_cut_anywhere_is_an_error(response in response(), cut in any::<prop::sample::Index>()) {
        let frame = codec::encode_frame(&response, FRAME_BYTES_MAX_DEFAULT).expect("encodes");
        let cut = cut.index(frame.len());
        let result = codec::read_frame(&mut &frame[..cut], FRAME_BYTES_MAX_DEFAULT)
            .now_or_never()
            .expect("reading from memory must not wait");
        let is_truncated = matches!(result, Err(CodecError::Truncated { .. }));
        prop_assert!(is_truncated, "cut at {} of {}: {:?}", cut, frame.len(), result);
        let whole = codec::read_frame(&mut &frame[..], FRAME_BYTES_MAX_DEFAULT)
            .now_or_never()
            .expect("reading from memory must not wait");
        prop_assert!(whole.is_ok());
    }
}

/// Proves affinities that would make a node index out of bounds or rank by NaN are refused when
/// the request is decoded, with a message naming the fault.
#[test]
fn malformed_affinities_are_refused_at_decode() {
    #[derive(Serialize)]
    struct Fields {
        ids: Vec<u32>,
        weights: Vec<f32>,
    }
    for (fields, expected) in [
        (
            Fields {
                ids: vec![1, 2, 3],
                weights: vec![0.5],
            },
            "3 category ids but 1 weights",
        ),
        (
            Fields {
                ids: vec![2, 1],
                weights: vec![0.5, 0.5],
            },
            "not strictly ascending",
        ),
        (
            Fields {
                ids: vec![1],
                weights: vec![f32::NAN],
            },
            "not finite",
        ),
    ] {
        let bytes = codec::encode(&fields).expect("encodes");
        let error = codec::decode::<Affinities>(&bytes)
            .expect_err("refused")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
}

/// Proves -0.0 and a NaN payload come back with their exact bits (the ranking folds -0.0 on
/// purpose; the wire must not do it behind its back).
#[test]
fn float_bit_patterns_survive() {
    let key = RankKey {
        score: -0.0,
        product: u64::MAX,
    };
    let back: RankKey = codec::decode(&codec::encode(&key).expect("encodes")).expect("decodes");
    assert_eq!(back.score.to_bits(), (-0.0f32).to_bits());
    let nan = f32::from_bits(0x7fc0_1234);
    let back: f32 = codec::decode(&codec::encode(&nan).expect("encodes")).expect("decodes");
    assert_eq!(back.to_bits(), 0x7fc0_1234);
}

/// Proves a length prefix of 4 GiB is refused at once, naming both numbers, before anything is
/// allocated for the payload: the reader then yields nothing (the writer stays open), so waiting
/// for the payload would hang past the 1 s timeout, and the largest allocation is measured.
#[test]
fn a_prefix_over_the_bound_is_refused_before_allocating() {
    let runtime = runtime();
    let (mut writer, mut reader) = tokio::io::duplex(64);
    runtime
        .block_on(writer.write_all(&u32::MAX.to_le_bytes()))
        .expect("prefix written");
    let (result, largest) = largest_allocation(|| {
        runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(1),
                codec::read_frame(&mut reader, FRAME_BYTES_MAX_DEFAULT),
            )
            .await
        })
    });
    let error = result
        .expect("refused at once, not waiting for the payload")
        .expect_err("a 4 GiB frame must be refused");
    let message = error.to_string();
    assert!(
        matches!(
            error,
            CodecError::FrameTooLarge {
                frame_bytes: 4_294_967_295,
                frame_bytes_max: FRAME_BYTES_MAX_DEFAULT
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("4294967295") && message.contains("16777216"),
        "{message}"
    );
    assert!(largest < 64 * 1024, "allocated {largest} bytes");
    drop(writer);
}

/// Proves a prefix within the bound that lies (16 MiB announced, 10 bytes sent) costs only what
/// arrived, not what was announced, and is reported as a truncated payload.
#[test]
fn a_lying_prefix_costs_only_what_arrives() {
    let mut frame = FRAME_BYTES_MAX_DEFAULT.to_le_bytes().to_vec();
    frame.extend_from_slice(&[1; 10]);
    let (result, largest) = largest_allocation(|| {
        codec::read_frame(&mut &frame[..], FRAME_BYTES_MAX_DEFAULT)
            .now_or_never()
            .expect("reading from memory must not wait")
    });
    assert!(
        matches!(
            result,
            Err(CodecError::Truncated {
                part: FramePart::Payload,
                bytes_expected: 16_777_216,
                bytes_received: 10
            })
        ),
        "{result:?}"
    );
    assert!(
        largest < 1024 * 1024,
        "allocated {largest} bytes for 10 received"
    );
}

/// Proves an empty stream and a cut length prefix are typed errors naming what was received.
#[test]
fn a_cut_prefix_is_an_error() {
    for received in 0..4 {
        let bytes = [7u8; 3];
        let result = codec::read_frame(&mut &bytes[..received], 100)
            .now_or_never()
            .expect("reading from memory must not wait");
        assert!(
            matches!(
                result,
                Err(CodecError::Truncated { part: FramePart::LengthPrefix, bytes_expected: 4, bytes_received })
                    if bytes_received == received as u64
            ),
            "{result:?}"
        );
    }
}

/// Proves the bound is inclusive on reading and that `write_frame` refuses an oversized payload
/// before writing a byte.
#[test]
fn the_bound_is_inclusive_and_checked_before_writing() {
    let payload = vec![3u8; 100];
    let mut written = Vec::new();
    codec::write_frame(&mut written, &payload, 100)
        .now_or_never()
        .expect("writing to memory must not wait")
        .expect("a frame of exactly the bound is written");
    let read = codec::read_frame(&mut &written[..], 100)
        .now_or_never()
        .expect("reading from memory must not wait")
        .expect("and read back");
    assert_eq!(read, payload);
    let refused = codec::read_frame(&mut &written[..], 99)
        .now_or_never()
        .expect("reading from memory must not wait");
    assert!(matches!(
        refused,
        Err(CodecError::FrameTooLarge {
            frame_bytes: 100,
            frame_bytes_max: 99
        })
    ));

    let mut untouched = Vec::new();
    let refused = codec::write_frame(&mut untouched, &payload, 99)
        .now_or_never()
        .expect("writing to memory must not wait");
    assert!(matches!(
        refused,
        Err(CodecError::FrameTooLarge {
            frame_bytes: 100,
            frame_bytes_max: 99
        })
    ));
    assert!(untouched.is_empty());
}
