//! The clients of a run: readers that ask a router for pages of recommendations, walkers that
//! page through a whole grid by its cursors, and observers that poll each router's
//! `/v1/cluster`. Each records every operation in the [`Recorder`] with its invoke and complete
//! times; none of them judges an answer (that is the checker's job, afterwards).

use crate::history::{Event, Op, Page};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A client gives up on a request after this long (the router's own deadline is shorter).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response body a client reads.
const BODY_BYTES_MAX: usize = 4 << 20;
/// Pages a walk follows at most (a grid of the run's model has a few).
const WALK_PAGES_MAX: usize = 1000;

/// Writes the history, one line per event, as events complete.
pub struct Recorder {
    start: Instant,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl Recorder {
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &std::path::Path, start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            start,
            out: Mutex::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn record(&self, process: &str, invoke_ms: u64, op: Op) {
        let event = Event {
            process: process.to_string(),
            invoke_ms,
            complete_ms: self.now_ms(),
            op,
        };
        if let (Ok(line), Ok(mut out)) = (serde_json::to_string(&event), self.out.lock()) {
            let _ = writeln!(out, "{line}");
        }
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}

/// One keep-alive HTTP/1.1 connection to a router, reopened after any failure.
struct Http {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    /// GET `path`: (status, body), or what failed.
    async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        let attempt = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(path)).await;
        match attempt {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                Err("timeout".into())
            }
        }
    }

    async fn exchange(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err("no connection".into());
        };
        sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// A recommendation page as the client read it (see the contract, section 3).
fn page_of(answer: Result<(u16, Bytes), String>) -> Page {
    let (status, body) = match answer {
        Ok(a) => a,
        Err(error) => {
            return Page {
                error: Some(error),
                ..Page::default()
            };
        }
    };
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => {
            return Page {
                status,
                error: Some(format!("body is not JSON: {e}")),
                ..Page::default()
            };
        }
    };
    if status != 200 {
        return Page {
            status,
            // The code, and the message after it: the checker reads both.
            error: json["error"]["code"].as_str().map(|code| {
                match json["error"]["message"].as_str() {
                    Some(message) => format!("{code}: {message}"),
                    None => code.to_string(),
                }
            }),
            ..Page::default()
        };
    }
    let items = json["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["product"].as_u64().unwrap_or(u64::MAX),
                        i["score"].as_f64().unwrap_or(f64::NAN) as f32,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let coverage = &json["coverage"];
    Page {
        status,
        version: json["model_version"].as_str().map(str::to_string),
        items,
        segments: coverage["segments"].as_u64().unwrap_or(0),
        answered: coverage["answered"].as_u64().unwrap_or(0),
        degraded: coverage["degraded"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        error: None,
        next_cursor: json["next_cursor"].as_str().map(str::to_string),
    }
}

/// What a reader asks about: the customers and containers of the run's model.
pub struct Workload {
    pub customers: Vec<u64>,
    pub containers: Vec<u64>,
}

/// A small deterministic generator (SplitMix64): a seed replays the same requests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// Asks one router for single pages until `stop`; a walker (`walk`) pages through whole grids.
pub async fn reader(
    name: String,
    router: (String, SocketAddr),
    workload: std::sync::Arc<Workload>,
    recorder: std::sync::Arc<Recorder>,
    seed: u64,
    walk: bool,
    stop: std::sync::Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed);
    let mut http = Http::new(router.1);
    while !stop.load(Ordering::Relaxed) {
        let (Some(&customer), Some(&container)) = (
            rng.pick(&workload.customers),
            rng.pick(&workload.containers),
        ) else {
            return;
        };
        let invoke = recorder.now_ms();
        let op = if walk {
            let limit = 10 + rng.below(40) as u32;
            let mut pages = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    None => format!(
                        "/v1/recommend?customer={customer}&container={container}&limit={limit}"
                    ),
                    Some(c) => format!(
                        "/v1/recommend?customer={customer}&container={container}&limit={limit}&cursor={c}"
                    ),
                };
                let page = page_of(http.get(&path).await);
                cursor = page.next_cursor.clone().filter(|_| page.status == 200);
                pages.push(page);
                if cursor.is_none() || pages.len() >= WALK_PAGES_MAX || stop.load(Ordering::Relaxed)
                {
                    break;
                }
            }
            Op::Walk {
                router: router.0.clone(),
                customer,
                container,
                limit,
                pages,
            }
        } else {
            let limit = 1 + rng.below(50) as u32;
            let path =
                format!("/v1/recommend?customer={customer}&container={container}&limit={limit}");
            Op::Recommend {
                router: router.0.clone(),
                customer,
                container,
                limit,
                page: page_of(http.get(&path).await),
            }
        };
        let failed = match &op {
            Op::Recommend { page, .. } => page.status == 0,
            _ => false,
        };
        recorder.record(&name, invoke, op);
        // Pace a little, and back off after a failure, so that two cores keep room for the
        // cluster itself.
        let pause = if failed { 50 } else { 2 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Polls a router's `/v1/cluster` every `every` until `stop`.
pub async fn observer(
    router: (String, SocketAddr),
    recorder: std::sync::Arc<Recorder>,
    every: Duration,
    stop: std::sync::Arc<AtomicBool>,
) {
    let name = format!("observer-{}", router.0);
    let mut http = Http::new(router.1);
    while !stop.load(Ordering::Relaxed) {
        let invoke = recorder.now_ms();
        let op = match http.get("/v1/cluster").await {
            Ok((200, body)) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(json) => Op::Observe {
                    router: router.0.clone(),
                    epoch: json["epoch"].as_u64(),
                    active_version: json["active_version"].as_str().map(str::to_string),
                    stale: json["stale"].as_bool().unwrap_or(false),
                    error: None,
                },
                Err(e) => observe_error(&router.0, format!("body is not JSON: {e}")),
            },
            Ok((status, _)) => observe_error(&router.0, format!("status {status}")),
            Err(error) => observe_error(&router.0, error),
        };
        recorder.record(&name, invoke, op);
        tokio::time::sleep(every).await;
    }
}

fn observe_error(router: &str, error: String) -> Op {
    Op::Observe {
        router: router.to_string(),
        epoch: None,
        active_version: None,
        stale: false,
        error: Some(error),
    }
}

/// One GET of `path` on a router, for the harness's own checks (readiness, the final round).
pub async fn get_once(addr: SocketAddr, path: &str) -> Result<(u16, Bytes), String> {
    Http::new(addr).get(path).await
}

/// One page, for the final round of reads after the heal.
pub async fn recommend_once(addr: SocketAddr, customer: u64, container: u64, limit: u32) -> Page {
    page_of(
        get_once(
            addr,
            &format!("/v1/recommend?customer={customer}&container={container}&limit={limit}"),
        )
        .await,
    )
}
