//! One keep-alive HTTP/1.1 connection: open it (TCP_NODELAY, hyper handshake) and run one
//! request/response exchange on it under a deadline.
//!
//! The hyper connection future is polled inside the exchange, in the caller's task, instead of
//! in a task of its own as hyper's examples do: a closed loop has exactly one request in flight,
//! so a second task would only add two cross-task wake-ups per request to the client's cost.

use crate::error::BenchError;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::CONNECTION;
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Sleep;

type Driver = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// An open connection: the sending half and hyper's connection state machine that does the I/O.
pub(crate) struct Connection {
    sender: http1::SendRequest<Empty<Bytes>>,
    /// Boxed once per connection so that it can be polled by reference in every exchange.
    driver: Pin<Box<Driver>>,
}

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A full response was read. `reusable` is false when the server announced
    /// `Connection: close` or closed the connection right after it: the connection is replaced
    /// without counting an error. `partial` is true when the body names a `"degraded"` reason
    /// (contract section 3: an answer that lacks some segments says why).
    Response {
        status: u16,
        reusable: bool,
        partial: bool,
    },
    /// The connection failed or closed before the full response arrived; it is replaced.
    Transport,
    /// The deadline passed first; the connection is in an unknown state and is replaced.
    Timeout,
}

/// Opens a connection to `address` within `timeout`.
///
/// # Errors
///
/// [`BenchError::Connect`] if the TCP connection is refused, fails, or is not established within
/// `timeout` (as [`io::ErrorKind::TimedOut`]); [`BenchError::Handshake`] if hyper refuses it.
pub(crate) async fn connect(
    address: SocketAddr,
    timeout: Duration,
) -> Result<Connection, BenchError> {
    let connect_error = |source| BenchError::Connect {
        address: address.to_string(),
        source,
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(connect_error(source)),
        Err(_elapsed) => {
            return Err(connect_error(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )));
        }
    };
    // Without it, Nagle's algorithm can hold a small request back for an ACK delay (~40 ms).
    stream.set_nodelay(true).map_err(connect_error)?;
    let (sender, driver) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| BenchError::Handshake { address, source })?;
    Ok(Connection {
        sender,
        driver: Box::pin(driver),
    })
}

impl Connection {
    /// Sends `request`, waits for the response and reads its body to the end (discarding it),
    /// unless `deadline` fires first. The caller resets `deadline` before each exchange; one
    /// timer is reused for all of a connection's requests.
    ///
    /// Returns the connection back when it can carry the next request, and `None` when it must
    /// be replaced: after [`Outcome::Transport`], [`Outcome::Timeout`] (hyper closes a connection
    /// whose request future is dropped), or a response announcing `Connection: close`.
    pub(crate) async fn exchange(
        self,
        request: Request<Empty<Bytes>>,
        mut deadline: Pin<&mut Sleep>,
    ) -> (Outcome, Option<Connection>) {
        let Connection {
            mut sender,
            mut driver,
        } = self;
        let outcome = {
            let mut response = pin!(async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let reusable = !announces_close(response.headers());
                let mut body = response.into_body();
                let mut degraded = DegradedScan::default();
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame?.data_ref() {
                        degraded.feed(data);
                    }
                }
                Ok::<_, hyper::Error>(Outcome::Response {
                    status,
                    reusable,
                    partial: degraded.found,
                })
            });
            tokio::select! {
                biased;
                result = &mut response => result.unwrap_or(Outcome::Transport),
                _ended = driver.as_mut() => {
                    // The connection finished (closed or failed), yet its last poll may have
                    // completed the response. Dropping the driver closes hyper's channels, so
                    // the response future now resolves at once, to a response or an error.
                    drop(driver);
                    let outcome = tokio::select! {
                        biased;
                        result = &mut response => result.unwrap_or(Outcome::Transport),
                        () = deadline.as_mut() => Outcome::Timeout,
                    };
                    return (outcome, None);
                }
                () = deadline.as_mut() => Outcome::Timeout,
            }
        };
        match outcome {
            Outcome::Response { reusable: true, .. } => {
                (outcome, Some(Connection { sender, driver }))
            }
            Outcome::Response { .. } | Outcome::Transport | Outcome::Timeout => (outcome, None),
        }
    }
}

/// The key a partial answer carries in its `coverage` (and which a full answer omits).
const DEGRADED_KEY: &[u8] = b"\"degraded\"";

/// Looks for [`DEGRADED_KEY`] in a body that arrives in frames, also across a frame boundary,
/// without copying the body: only the last `DEGRADED_KEY.len() - 1` bytes of a frame are kept.
#[derive(Default)]
struct DegradedScan {
    carry: [u8; DEGRADED_KEY.len() - 1],
    carried: usize,
    found: bool,
}

impl DegradedScan {
    fn feed(&mut self, data: &[u8]) {
        if self.found {
            return;
        }
        // The key straddling the boundary: carried bytes, then the head of this frame.
        let head = &data[..data.len().min(DEGRADED_KEY.len() - 1)];
        let mut joined = [0u8; 2 * (DEGRADED_KEY.len() - 1)];
        joined[..self.carried].copy_from_slice(&self.carry[..self.carried]);
        joined[self.carried..self.carried + head.len()].copy_from_slice(head);
        self.found = contains(&joined[..self.carried + head.len()], DEGRADED_KEY)
            || contains(data, DEGRADED_KEY);
        let kept = data.len().min(self.carry.len());
        if kept == self.carry.len() {
            self.carry.copy_from_slice(&data[data.len() - kept..]);
            self.carried = kept;
        } else {
            // A frame shorter than the carry: append it, keeping the newest bytes.
            let mut tail = [0u8; 2 * (DEGRADED_KEY.len() - 1)];
            tail[..self.carried].copy_from_slice(&self.carry[..self.carried]);
            tail[self.carried..self.carried + kept].copy_from_slice(data);
            let total = self.carried + kept;
            let keep = total.min(self.carry.len());
            self.carry[..keep].copy_from_slice(&tail[total - keep..total]);
            self.carried = keep;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn announces_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// `Connection: close` is found among comma-separated options, in any case.
    #[test]
    fn connection_close_is_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!announces_close(&headers));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!announces_close(&headers));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade, Close"));
        assert!(announces_close(&headers));
    }

    /// The degraded key is found whole in a frame and split at every point over two or three
    /// frames, and not found in a full answer.
    #[test]
    fn degraded_key_is_found_across_frames() {
        let partial =
            br#"{"items":[],"coverage":{"segments":4,"answered":3,"degraded":["timeout"]}}"#;
        let full = br#"{"items":[],"coverage":{"segments":4,"answered":4},"degraded_not":1}"#;
        let scan = |frames: &[&[u8]]| {
            let mut scan = DegradedScan::default();
            for frame in frames {
                scan.feed(frame);
            }
            scan.found
        };
        assert!(scan(&[partial]));
        assert!(!scan(&[full]));
        for cut in 0..=partial.len() {
            let (left, right) = partial.split_at(cut);
            assert!(scan(&[left, right]), "split at {cut}");
            for second in cut..=partial.len() {
                let (middle, last) = right.split_at(second - cut);
                assert!(scan(&[left, middle, last]), "split at {cut} and {second}");
            }
        }
        for frame_len in 1..8 {
            let frames: Vec<&[u8]> = partial.chunks(frame_len).collect();
            assert!(scan(&frames), "frames of {frame_len}");
            let frames: Vec<&[u8]> = full.chunks(frame_len).collect();
            assert!(!scan(&frames), "full answer in frames of {frame_len}");
        }
    }
}
