//! The commands that are not the demo: `gen`, `bench`, and the process set-up they share
//! (logging, runtime, shutdown signal).

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use scoregrid_bench::{BenchOptions, Target};
use scoregrid_loader::Format;
use scoregrid_loader::synth::{self, SynthSpec};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub fn init_logging(filter: &str) -> Result<()> {
    use tracing_subscriber::prelude::*;
    let targets = tracing_subscriber::filter::Targets::from_str(filter)
        .with_context(|| format!("log.filter {filter:?} is not a valid filter"))?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a person at a terminal; plain text for files and pipes.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(targets),
        )
        .try_init()
        .context("cannot install the logger")
}

/// One glibc malloc arena for the whole process. By default glibc gives each thread that
/// allocates an arena of its own (up to 8 per core); the request path's short-lived buffers then
/// leave free pages in every arena, and resident memory grows tens of MiB above the data held.
/// Measured with the 1M-customer model after a 64-connection bench: 974 MiB resident with the
/// default, 908 MiB with one arena, and throughput did not suffer (BENCHMARKS.md).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_ARENA_MAX: i32 = -8;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }
}

/// Writes one line to stdout; a closed pipe (`scoregrid bench | head`) is an error, not a panic.
pub fn print_line(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A shutdown every part of a process can wait on: set by Ctrl-C or SIGTERM.
#[derive(Clone)]
pub struct Shutdown {
    sender: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Shutdown {
    /// A shutdown set by the process's signals.
    pub fn on_signals() -> Self {
        Self::from_future(shutdown_signal())
    }

    /// A shutdown set when `future` completes.
    pub fn from_future(future: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (sender, _) = tokio::sync::watch::channel(false);
        let sender = Arc::new(sender);
        let setter = sender.clone();
        tokio::spawn(async move {
            future.await;
            setter.send_replace(true);
        });
        Self { sender }
    }

    /// Sets the shutdown (the process stops on its own account).
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Completes once the shutdown is set.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            // An error means the sender is gone: nobody can trigger any more, so stop as well.
            let _ = receiver.wait_for(|&set| set).await;
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the process");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received; draining requests in flight");
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Jsonl,
    Parquet,
}

#[derive(Args)]
pub struct GenArgs {
    /// Directory to write (created; must not hold a model already).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    #[arg(long, default_value_t = 20_000)]
    products: u64,
    #[arg(long, default_value_t = 200)]
    containers: u64,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    #[arg(long, value_enum, default_value_t = FormatArg::Jsonl)]
    format: FormatArg,
    /// Products per container; without it, a mix of lists (20-100) and grids (1,000-20,000).
    #[arg(long)]
    pool_products: Option<u32>,
    /// Distinct product categories.
    #[arg(long, default_value_t = 200)]
    categories: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The model version name written to manifest.json.
    #[arg(long, default_value = "synthetic-1")]
    version: String,
}

pub fn gen_model(args: GenArgs) -> Result<()> {
    let spec = SynthSpec {
        customers: args.customers,
        products: args.products,
        containers: args.containers,
        dim: args.dim,
        categories: args.categories,
        pool_products: args.pool_products,
        seed: args.seed,
        version: args.version,
    };
    let format = match args.format {
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Parquet => Format::Parquet,
    };
    let started = std::time::Instant::now();
    let summary = synth::write_model(&spec, &args.out, format)
        .with_context(|| format!("cannot write a model to {}", args.out.display()))?;
    print_line(&format!(
        "wrote {} in {:.1} s: {} customers, {} products, {} containers, {} pool entries",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        summary.customers,
        summary.products,
        summary.containers,
        summary.pool_entries
    ))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TargetArg {
    Recommend,
    Healthz,
}

#[derive(Args)]
pub struct BenchArgs {
    /// The router's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The model the router serves: requests use its real customer and container ids.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = TargetArg::Recommend)]
    target: TargetArg,
    /// Concurrent keep-alive connections (closed loop: one request in flight each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Customer ids sampled from the model.
    #[arg(long, default_value_t = 100_000)]
    customers_max: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Open loop: requests per second in all, on a fixed schedule (latency counted from the
    /// scheduled time); without it, a closed loop.
    #[arg(long)]
    rate: Option<f64>,
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{name} {s} is not a number of seconds"))
}

pub async fn bench(args: BenchArgs) -> Result<()> {
    let target = match args.target {
        TargetArg::Recommend => Target::Recommend,
        TargetArg::Healthz => Target::Healthz,
    };
    let keys = match (&args.model, target) {
        (Some(dir), _) => {
            let dir = dir.clone();
            let (max, seed) = (args.customers_max, args.seed);
            let keys = tokio::task::spawn_blocking(move || {
                scoregrid_loader::sample_request_keys(&dir, max, seed)
            })
            .await
            .context("key sampling task failed")??;
            scoregrid_bench::RequestKeys {
                customers: keys.customers,
                containers: keys
                    .containers
                    .into_iter()
                    .map(|(container, _)| container)
                    .collect(),
            }
        }
        (None, Target::Recommend) => {
            bail!("--target recommend needs --model DIR to pick real customers and containers")
        }
        (None, Target::Healthz) => scoregrid_bench::RequestKeys::default(),
    };
    let options = BenchOptions {
        url: args.url,
        target,
        connections: args.connections,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        limit: args.limit,
        keys,
        seed: args.seed,
        timeout: Duration::from_millis(args.timeout_ms),
        rate: args.rate,
    };
    options.validate()?;
    let report = scoregrid_bench::run(options).await?;
    let text = if args.json {
        report.to_json()
    } else {
        report.to_string()
    };
    print_line(&text)
}
