//! The HTTP server's connection layer: accepts TCP connections, bounds them (in all and per
//! client address), and serves each with hyper's HTTP/1.1 under a header read timeout, which
//! also closes kept-alive connections left idle. What happens inside a request (its body, its
//! slot, its answer) is `http.rs`'s.
//!
//! A connection beyond a bound is answered 503 `overloaded` and closed at once; no task is
//! spawned for it, so a flood of connections costs the router little more than the accepts.

use crate::bare_errors::JsonErrors;
use crate::memory::{HeapTrim, trim_heap};
use crate::state::RouterState;
use crate::telemetry;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a shutdown waits for the requests in flight before it closes their connections.
pub const DRAIN_MAX: Duration = Duration::from_secs(10);

/// What a connection refused for a bound is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 79\r\n\r\n{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections; retry shortly\"}}";

/// The connections open now, in all and per client address.
struct Connections {
    max: usize,
    per_client_max: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; gives its place back when dropped.
struct Slot {
    connections: Arc<Connections>,
    client: IpAddr,
}

impl Connections {
    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().map_err(|_| "poisoned")?;
        if open.0 >= self.max {
            return Err("connections_max");
        }
        let from_client = open.1.entry(client).or_insert(0);
        if *from_client >= self.per_client_max {
            return Err("connections_per_client_max");
        }
        *from_client += 1;
        open.0 += 1;
        metrics::gauge!(telemetry::CONNECTIONS_OPEN).set(open.0 as f64);
        Ok(Slot {
            connections: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.connections.open.lock() {
            open.0 = open.0.saturating_sub(1);
            if let Some(n) = open.1.get_mut(&self.client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.1.remove(&self.client);
                }
            }
            metrics::gauge!(telemetry::CONNECTIONS_OPEN).set(open.0 as f64);
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then drains requests in flight (at
/// most [`DRAIN_MAX`]).
///
/// # Errors
/// None today: accept errors (such as running out of file descriptors) are logged and retried
/// after a short pause; the signature leaves room for a listener that can fail for good.
pub async fn serve(
    state: Arc<RouterState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let http = &state.config.http;
    let connections = Arc::new(Connections {
        max: http.connections_max,
        per_client_max: http.connections_per_client_max,
        open: Mutex::new((0, HashMap::new())),
    });
    let header_read_timeout = Duration::from_millis(http.header_read_timeout_ms);
    // Histogram samples wait in the recorder until drained: drain them on a timer so that their
    // memory is bounded by one interval's requests, whether or not anyone scrapes /metrics.
    // The same timer gives the heap back once load has fallen (`memory.rs`).
    let upkeep = {
        let (handle, state) = (state.prometheus.clone(), state.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(telemetry::UPKEEP_INTERVAL);
            let mut heap = HeapTrim::default();
            loop {
                tick.tick().await;
                if let Some(handle) = &handle {
                    handle.run_upkeep();
                }
                if heap.tick(state.admission.entered()) {
                    trim_heap();
                }
            }
        })
    };
    let service = TowerToHyperService::new(crate::http::app(state.clone()));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let lingering = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; pausing accepts for 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match connections.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
                tracing::debug!(client = %peer, reason, "connection refused");
                refuse(tcp, &lingering);
                continue;
            }
        };
        // Small responses: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(JsonErrors::new(tcp)), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection.await {
                metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => close_reason(&error))
                    .increment(1);
                tracing::debug!(client = %peer, %error, "connection closed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_MAX, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} s of shutdown; closing them",
            DRAIN_MAX.as_secs()
        );
    }
    upkeep.abort();
    Ok(())
}

/// Answers a refused connection with [`REFUSED`] and closes it. Closing a socket with the
/// client's request still unread would reset it and could destroy the answer on its way, so the
/// request is read and dropped first: for at most [`LINGER`], by at most [`LINGERING_MAX`]
/// tasks at once (beyond that the connection is just closed), so that a flood of refused
/// connections cannot make the router hold more.
fn refuse(tcp: tokio::net::TcpStream, lingering: &Arc<AtomicUsize>) {
    // A fresh socket's send buffer is empty: this does not block.
    let _ = tcp.try_write(REFUSED);
    if lingering.fetch_add(1, Ordering::AcqRel) >= LINGERING_MAX {
        lingering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let lingering = lingering.clone();
    tokio::spawn(async move {
        let mut tcp = tcp;
        let _ = tokio::time::timeout(LINGER, async {
            let _ = tcp.shutdown().await;
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        lingering.fetch_sub(1, Ordering::AcqRel);
    });
}

/// How long a refused connection is given to take its answer.
const LINGER: Duration = Duration::from_secs(1);

/// Refused connections lingering at once.
const LINGERING_MAX: usize = 256;

fn close_reason(error: &hyper::Error) -> &'static str {
    if error.is_timeout() {
        "header_timeout"
    } else if error.is_parse() || error.is_parse_too_large() {
        "bad_request"
    } else if error.is_incomplete_message() {
        "incomplete"
    } else {
        "error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_json_answer() {
        let text = std::str::from_utf8(REFUSED).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"]["code"], "overloaded");
    }

    #[test]
    fn connections_are_bounded_in_all_and_per_client() {
        let connections = Arc::new(Connections {
            max: 3,
            per_client_max: 2,
            open: Mutex::new((0, HashMap::new())),
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = connections.admit(a).expect("room");
        let _second = connections.admit(a).expect("room");
        assert_eq!(
            connections.admit(a).err(),
            Some("connections_per_client_max")
        );
        let _third = connections.admit(b).expect("room");
        assert_eq!(connections.admit(b).err(), Some("connections_max"));
        drop(first);
        assert!(
            connections.admit(a).is_ok(),
            "a closed connection gives its place back"
        );
    }
}
