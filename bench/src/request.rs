//! The requests one connection sends: a fixed URI for `/healthz`, or recommend URIs written
//! into a reused buffer with ids drawn by a per-connection SplitMix64 stream.

use crate::error::BenchError;
use crate::options::{RequestKeys, Target};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Uri};
use std::fmt::Write as _;
use std::sync::Arc;

/// The longest recommend path: the fixed text plus three decimal numbers of at most 20 digits.
/// The URI buffer is allocated at this capacity once, so writing a URI never reallocates it.
const RECOMMEND_URI_BYTES_MAX: usize =
    "/v1/recommend?customer=&container=&limit=".len() + 20 + 20 + 10;

/// SplitMix64 (Steele, Lea, Flood 2014): one add and three multiply-xor-shift rounds a draw,
/// statistically good enough to pick ids uniformly, and far cheaper than a cryptographic RNG.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// The stream of connection `stream` under `seed`. Streams are started at scrambled, far
    /// apart points of the one SplitMix64 sequence rather than at `seed + stream`, which would
    /// make connection 1 replay connection 0's draws one step later.
    pub(crate) fn new(seed: u64, stream: u64) -> SplitMix64 {
        SplitMix64 {
            state: mix64(seed ^ mix64(stream.wrapping_add(GOLDEN_GAMMA))),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// A uniform index in `0..len` by Lemire's multiply-shift (bias below 2^-32 for any list that
    /// fits in memory).
    ///
    /// # Panics
    ///
    /// Debug builds assert `len > 0`; callers check it through
    /// [`BenchOptions::validate`](crate::BenchOptions::validate).
    pub(crate) fn index(&mut self, len: usize) -> usize {
        debug_assert!(len > 0, "cannot draw from an empty list");
        ((u128::from(self.next_u64()) * len as u128) >> 64) as usize
    }
}

/// Builds the next request of one connection.
#[derive(Debug)]
pub(crate) struct RequestSource {
    kind: SourceKind,
    /// The `Host` header, shared by every request (a reference-counted clone per request).
    host: HeaderValue,
}

#[derive(Debug)]
enum SourceKind {
    Healthz {
        uri: Uri,
    },
    Recommend {
        keys: Arc<RequestKeys>,
        limit: u32,
        random: SplitMix64,
        /// Reused for every URI; holds at most [`RECOMMEND_URI_BYTES_MAX`] bytes.
        buffer: String,
    },
}

impl RequestSource {
    /// The source of connection `connection`.
    pub(crate) fn new(
        target: Target,
        keys: Arc<RequestKeys>,
        limit: u32,
        seed: u64,
        connection: usize,
        host: HeaderValue,
    ) -> RequestSource {
        let kind = match target {
            Target::Healthz => SourceKind::Healthz {
                uri: Uri::from_static("/healthz"),
            },
            Target::Recommend => SourceKind::Recommend {
                keys,
                limit,
                random: SplitMix64::new(seed, connection as u64),
                buffer: String::with_capacity(RECOMMEND_URI_BYTES_MAX),
            },
        };
        RequestSource { kind, host }
    }

    /// The next request: its URI (ids freshly drawn for recommend) and the `Host` header.
    ///
    /// # Errors
    ///
    /// [`BenchError::RequestUri`] if the written URI does not parse, which would be a bug here:
    /// it holds only fixed text and decimal digits.
    pub(crate) fn next_request(&mut self) -> Result<Request<Empty<Bytes>>, BenchError> {
        let uri = match &mut self.kind {
            SourceKind::Healthz { uri } => uri.clone(),
            SourceKind::Recommend {
                keys,
                limit,
                random,
                buffer,
            } => {
                let customer = keys.customers[random.index(keys.customers.len())];
                let container = keys.containers[random.index(keys.containers.len())];
                buffer.clear();
                // Writing into a String cannot fail.
                let _ = write!(
                    buffer,
                    "/v1/recommend?customer={customer}&container={container}&limit={limit}"
                );
                debug_assert!(buffer.len() <= RECOMMEND_URI_BYTES_MAX);
                Uri::try_from(buffer.as_str()).map_err(|source| BenchError::RequestUri {
                    uri: buffer.clone(),
                    source,
                })?
            }
        };
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri;
        request.headers_mut().insert(HOST, self.host.clone());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed and stream replay the same draws; different streams differ, and indexes
    /// stay in range and cover a small list.
    #[test]
    fn splitmix_streams_are_reproducible_and_distinct() {
        let draws = |seed, stream| {
            let mut random = SplitMix64::new(seed, stream);
            (0..8).map(|_| random.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draws(1, 0), draws(1, 0));
        assert_ne!(draws(1, 0), draws(1, 1));
        assert_ne!(draws(1, 0), draws(2, 0));
        // Stream 1 is not stream 0 shifted by one draw.
        assert_ne!(draws(1, 0)[1..], draws(1, 1)[..7]);

        let mut random = SplitMix64::new(3, 0);
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            seen[random.index(5)] += 1;
        }
        assert!(
            seen.iter().all(|count| (1_700..2_300).contains(count)),
            "{seen:?}"
        );
    }

    /// Recommend URIs carry ids from the key lists and the limit, plus the Host header.
    #[test]
    fn recommend_requests_draw_from_the_keys() {
        let keys = Arc::new(RequestKeys {
            customers: vec![u64::MAX, 5],
            containers: vec![9],
        });
        let host = HeaderValue::from_static("127.0.0.1:8080");
        let mut source = RequestSource::new(Target::Recommend, keys, 1000, 11, 0, host);
        let mut customers_seen = Vec::new();
        for _ in 0..64 {
            let request = match source.next_request() {
                Ok(request) => request,
                Err(error) => panic!("{error}"),
            };
            assert_eq!(request.headers()[HOST], "127.0.0.1:8080");
            let uri = request.uri().to_string();
            let customer =
                if uri == format!("/v1/recommend?customer={}&container=9&limit=1000", u64::MAX) {
                    u64::MAX
                } else {
                    assert_eq!(uri, "/v1/recommend?customer=5&container=9&limit=1000");
                    5
                };
            if !customers_seen.contains(&customer) {
                customers_seen.push(customer);
            }
        }
        assert_eq!(customers_seen.len(), 2, "both customers are drawn");
    }

    /// Healthz requests are the fixed path.
    #[test]
    fn healthz_requests_are_fixed() {
        let host = HeaderValue::from_static("[::1]:80");
        let mut source = RequestSource::new(Target::Healthz, Arc::default(), 20, 0, 3, host);
        for _ in 0..3 {
            match source.next_request() {
                Ok(request) => {
                    assert_eq!(request.uri(), "/healthz");
                    assert_eq!(request.headers()[HOST], "[::1]:80");
                }
                Err(error) => panic!("{error}"),
            }
        }
    }
}
