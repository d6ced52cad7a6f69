//! `scoregrid load`: reads and builds a model directory, then hands it to the loader's push
//! ([`scoregrid_loader::push`]), which stages it through the cluster map and flips it; prints
//! the summary. The exit code is 3 when the cluster has no reachable quorum, else 1 on failure.

use crate::operate::{CodedError, client};
use anyhow::{Context, Result};
use scoregrid_config::Config;
use scoregrid_loader::push::{ProgressMode, PushError, PushModel, PushOptions, PushReport};
use scoregrid_raft::client::ClusterClient;
use scoregrid_shard::BuiltModel;
use scoregrid_wire::ClientEndpoint;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The push options of `config`'s `[load]`.
pub fn options(config: &Config, activate: bool, progress: ProgressMode) -> PushOptions {
    PushOptions {
        activate,
        parallelism: config.load.parallelism as usize,
        chunk_bytes: config.load.chunk_bytes,
        rounds: config.load.rounds,
        bytes_per_second: config.load.bytes_per_second,
        progress,
    }
}

fn coded(error: PushError) -> anyhow::Error {
    anyhow::Error::new(CodedError {
        code: u8::try_from(error.exit_code()).unwrap_or(1),
        message: error.to_string(),
    })
}

/// Registers, stages and (with `options.activate`) flips `model` in the cluster `client`
/// reaches.
pub async fn push(
    model: PushModel,
    client: &ClusterClient,
    endpoint: &ClientEndpoint,
    options: PushOptions,
) -> Result<PushReport> {
    scoregrid_loader::push::push(model, client, endpoint, options)
        .await
        .map_err(coded)
}

/// Where `scoregrid load` reads a model.
pub enum ModelSource {
    Folder(PathBuf),
    /// `scylla://HOST:PORT/KEYSPACE`.
    Scylla(String),
}

/// `scoregrid load --model DIR|--source URI [--cluster ADDR] [--no-activate] [--parallelism N]`,
/// with the identity of `[tls]` (a loader certificate from the cluster CA).
pub async fn load(
    config: Config,
    model: ModelSource,
    cluster: Option<SocketAddr>,
    activate: bool,
) -> Result<()> {
    let (endpoint, client) = client(&config, cluster)?;
    let spooled = match model {
        ModelSource::Folder(dir) => build_spooled(&config, dir).await?,
        ModelSource::Scylla(uri) => build_from_scylla(&config, &uri).await?,
    };
    let model = PushModel::spooled(spooled).map_err(coded)?;
    let report = push(
        model,
        &client,
        &endpoint,
        options(&config, activate, ProgressMode::Auto),
    )
    .await?;
    let mut text = summary(&report, activate);
    if let Some(peak) = peak_resident_bytes() {
        text.push_str(&format!(
            "\n  loader peak RSS {:.0} MiB",
            peak as f64 / 1048576.0
        ));
    }
    crate::commands::print_line(&text)
}

/// This process's peak resident memory (`VmHWM`), where the system tells it.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Reads and builds the model in `dir` into the spool folder of `config` (off the async
/// workers): RAM for one partition at a time, not the whole version.
pub async fn build_spooled(
    config: &Config,
    dir: PathBuf,
) -> Result<scoregrid_loader::spool::SpooledModel> {
    let (partitions, segment) = (
        config.placement.partitions,
        config.model.segment_products_max,
    );
    let spool = spool_dir(config);
    let (_, spooled) = tokio::task::spawn_blocking(move || {
        let partitions = scoregrid_shard::PartitionCount::new(partitions)
            .context("placement.partitions out of range")?;
        scoregrid_loader::spool::build_spooled(&dir, partitions, segment, &spool)
            .with_context(|| format!("cannot load the model in {}", dir.display()))
    })
    .await
    .context("model build task failed")??;
    Ok(spooled)
}

/// The lines `scoregrid load` ends with: what was staged, how fast, per node.
pub fn summary(report: &PushReport, activate: bool) -> String {
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let version = report
        .version
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    let mut lines = vec![format!(
        "model {version}: {} customers, {} products in {} partitions; {} copies ({:.1} MiB) staged and verified{}{} in {:.1} s ({:.1} MiB/s){}",
        report.customers,
        report.products,
        report.partitions,
        report.copies,
        mib(report.bytes),
        if report.resumed > 0 {
            format!(", {} already staged", report.resumed)
        } else {
            String::new()
        },
        if report.skipped_down > 0 {
            format!(", {} on nodes that are down skipped", report.skipped_down)
        } else {
            String::new()
        },
        report.seconds,
        mib(report.bytes) / report.seconds.max(1e-3),
        match (activate, report.activated) {
            (true, Some(epoch)) => format!("; active cluster-wide at epoch {epoch}"),
            (true, None) => "; already active".to_owned(),
            (false, _) => "; not activated: `scoregrid model activate` flips it".to_owned(),
        }
    )];
    for (node, n) in &report.per_node {
        lines.push(format!(
            "  {node}: {} copies, {:.1} MiB in {:.1} s ({:.1} MiB/s)",
            n.copies,
            mib(n.bytes),
            n.seconds,
            mib(n.bytes) / n.seconds.max(1e-3)
        ));
    }
    lines.join("\n")
}

/// Reads and builds the model in `dir` with the layout of `config` (off the async workers).
pub async fn build(config: &Config, dir: PathBuf) -> Result<BuiltModel> {
    let (partitions, segment) = (
        config.placement.partitions,
        config.model.segment_products_max,
    );
    let (_, built) = tokio::task::spawn_blocking(move || {
        let partitions = scoregrid_shard::PartitionCount::new(partitions)
            .context("placement.partitions out of range")?;
        scoregrid_loader::build_model(&dir, partitions, segment)
            .with_context(|| format!("cannot load the model in {}", dir.display()))
    })
    .await
    .context("model build task failed")??;
    Ok(built)
}

fn spool_dir(config: &Config) -> PathBuf {
    if config.load.spool_dir.as_os_str().is_empty() {
        std::env::temp_dir()
    } else {
        config.load.spool_dir.clone()
    }
}

/// Reads the model in the Scylla keyspace `uri` names into the spool folder of `config`.
#[cfg(feature = "scylla")]
pub async fn build_from_scylla(
    config: &Config,
    uri: &str,
) -> Result<scoregrid_loader::spool::SpooledModel> {
    use scoregrid_loader::scylla;
    let source = scylla::ScyllaSource::parse(uri)?;
    let partitions = scoregrid_shard::PartitionCount::new(config.placement.partitions)
        .context("placement.partitions out of range")?;
    let manifest = scylla::read_manifest(&source).await?;
    let (spool, mut builder) = scoregrid_loader::spool::Spool::create(
        &manifest,
        partitions,
        config.model.segment_products_max,
        &spool_dir(config),
    )?;
    let ranges = (config.load.parallelism as usize * 4).max(4);
    let summary = scylla::read_tables(&source, manifest, ranges, &mut builder).await?;
    tracing::info!(
        customers = summary.customers,
        products = summary.products,
        pool_entries = summary.pool_entries,
        "read from scylla"
    );
    let spooled = tokio::task::spawn_blocking(move || {
        spool.build(builder, |error| scoregrid_loader::LoadError::Model {
            error,
        })
    })
    .await
    .context("model build task failed")??;
    Ok(spooled)
}

/// Without the `scylla` feature: says how to get it.
#[cfg(not(feature = "scylla"))]
pub async fn build_from_scylla(
    _config: &Config,
    uri: &str,
) -> Result<scoregrid_loader::spool::SpooledModel> {
    scoregrid_loader::scylla::ScyllaSource::parse(uri)?;
    anyhow::bail!(
        "this scoregrid was built without Scylla support: build it with `cargo build --release --features scylla`"
    )
}
