//! One run, start to end: models, network, cluster, clients, the nemesis, the final heal, the
//! check and the report. Processes are started from the calling thread only (see
//! [`crate::cluster`]: a child dies with the thread that spawned it), so [`run`] keeps it for
//! the nemesis; the clients run on the given tokio runtime.

use crate::ChaosError;
use crate::checker::{BEFORE_FAULTS, FINAL_READER};
use crate::client::{self, Recorder, Rng, Workload};
use crate::cluster::{Cluster, Kind};
use crate::converge::{converge, leader_of_nodes, map_on_every_node};
use crate::history::Op;
use crate::loads::references_of;
use crate::loads::{Loads, VERSIONS, gen_model, reference_of};
use crate::nemesis::{FaultKind, Nemesis};
use crate::net::Network;
use crate::report::{Summary, check_dir};
use scoregrid_config::Config;
use scoregrid_shard::ScoringWeights;
use scoregrid_shard::reference::ReferenceModel;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a load before the faults may take (the run's model is small).
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);
/// Operator commands during faults.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(15);
/// The least time between two faults.
const GAP_MIN: Duration = Duration::from_millis(200);
/// Reads per router after convergence.
const FINAL_READS: usize = 20;

/// What `scoregrid chaos run` was asked.
pub struct RunOptions {
    /// The `scoregrid` binary the processes run.
    pub exe: PathBuf,
    pub nodes: u32,
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// Where the history, the report, the logs and the data go.
    pub out: PathBuf,
    /// The configuration every process starts from (scoring weights, Raft timings...).
    pub base: Config,
    /// Set when the run is interrupted (Ctrl-C): it heals, checks what it has and cleans up.
    pub interrupted: Arc<AtomicBool>,
}

/// Runs the cluster under the nemesis for `options.duration`, then checks the history.
///
/// # Errors
/// A [`ChaosError`] when the harness itself cannot do its job (no namespaces, a process that
/// does not start, a model that does not load before the faults begin): the message says why.
/// Violations of the cluster's promises are in the summary, not errors.
pub fn run(options: RunOptions, runtime: &tokio::runtime::Handle) -> Result<Summary, ChaosError> {
    if !(1..=crate::NODES_MAX).contains(&options.nodes) {
        return Err(ChaosError::Invalid(format!(
            "--nodes {}: from 1 to {}",
            options.nodes,
            crate::NODES_MAX
        )));
    }
    let swept = Network::sweep();
    if swept > 0 {
        tracing::info!(swept, "removed namespaces left by an earlier run");
    }
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|e| ChaosError::io(out, e))?;
    let models = out.join("models");
    let mut model_dirs = Vec::new();
    for (i, version) in VERSIONS.iter().enumerate() {
        let dir = models.join(version);
        if !dir.join("manifest.json").exists() {
            gen_model(
                &options.exe,
                &dir,
                options.seed.wrapping_add(i as u64),
                version,
            )?;
        }
        model_dirs.push(dir);
    }
    let workload = Arc::new(workload_of(&reference_of(&model_dirs[0])?));

    let run_id = std::process::id();
    let mut hosts: Vec<String> = (1..=options.nodes).map(|i| format!("n{i}")).collect();
    hosts.extend(["r1".to_string(), "r2".to_string()]);
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut network = Network::create(run_id, &host_refs)?;
    let mut base = options.base.clone();
    // Small segments: a pool spans several partitions, so a cut node makes answers partial
    // rather than missing.
    base.model.segment_products_max = 64;
    let work = out.join("cluster");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| ChaosError::io(&work, e))?;
    let mut cluster = Cluster::prepare(&options.exe, &work, &network, &base)?;

    let start = Instant::now();
    let recorder = Arc::new(
        Recorder::create(&out.join("history.jsonl"), start)
            .map_err(|e| ChaosError::io(&out.join("history.jsonl"), e))?,
    );
    bring_up(&mut cluster, runtime, &model_dirs, &recorder)?;
    println!(
        "chaos: cluster ready ({} nodes, 2 routers, models {} and {}) in {:.1} s; seed {}",
        options.nodes,
        VERSIONS[0],
        VERSIONS[1],
        start.elapsed().as_secs_f64(),
        options.seed
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let routers: Vec<(String, SocketAddr)> = cluster
        .processes
        .iter()
        .filter(|p| p.kind == Kind::Router)
        .map(|p| p.name.clone())
        .zip(cluster.routers.iter().copied())
        .collect();
    let mut seeds = Rng::new(options.seed ^ 0x5EED);
    for router in &routers {
        for (i, walk) in [false, false, true].into_iter().enumerate() {
            let name = format!(
                "{}-{}-{i}",
                if walk { "walker" } else { "reader" },
                router.0
            );
            tasks.push(runtime.spawn(client::reader(
                name,
                router.clone(),
                workload.clone(),
                recorder.clone(),
                seeds.next_u64(),
                walk,
                stop.clone(),
            )));
        }
        tasks.push(runtime.spawn(client::observer(
            router.clone(),
            recorder.clone(),
            Duration::from_millis(200),
            stop.clone(),
        )));
    }

    let has_learner = cluster.members.len() > cluster.voters.len();
    if options.faults.contains(&FaultKind::Membership) && !has_learner {
        println!(
            "chaos: no membership faults: every node is a Raft voter (--nodes 4, or 6 and more, gives one that is not)"
        );
    }
    let mut kinds = applicable(&options.faults, options.nodes, has_learner);
    if kinds.contains(&FaultKind::Delay) {
        match network.delay_method() {
            Some(method) => println!("chaos: delays by {}", method.name()),
            None => {
                println!(
                    "chaos: no delay faults: this kernel has no netem, and iptables-legacy's NFQUEUE target is refused"
                );
                kinds.retain(|k| *k != FaultKind::Delay);
            }
        }
    }
    println!(
        "chaos: faults {}",
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut loads = Loads::new(&options.exe, &models, options.seed);
    let nemesis_result = run_nemesis(
        &mut network,
        &mut cluster,
        &mut loads,
        &recorder,
        runtime,
        &options,
        &kinds,
        &routers,
    );
    // Heal, whatever happened; let a load still running end; then wait for one map.
    let healed_at = recorder.now_ms();
    let healed = heal_everything(&mut network, &mut cluster);
    let load_ended = loads.finish().map(|finished| {
        if let Some(finished) = finished {
            recorder.record("loader", finished.invoke_ms, finished.op);
        }
    });
    let convergence = converge(&cluster, runtime, &routers);
    let (converged, active, detail) = match &convergence {
        Ok(active) => (
            true,
            Some(active.clone()),
            "one leader, one map, every node up".into(),
        ),
        Err(why) => (false, None, why.clone()),
    };
    recorder.record(
        "harness",
        healed_at,
        Op::Converge {
            converged,
            active_version: active,
            detail,
        },
    );
    if converged {
        final_reads(runtime, &recorder, &routers, &workload, options.seed);
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    for (process, status) in cluster.exited() {
        recorder.record(
            &process.clone(),
            recorder.now_ms(),
            Op::Crash { process, status },
        );
    }
    recorder.flush();
    cluster.stop_all();
    network.teardown();
    nemesis_result?;
    healed?;
    load_ended?;
    let references = references_of(out)?;
    let summary = check_dir(out, &references, base_weights(&options.base))?;
    Ok(summary)
}

fn base_weights(config: &Config) -> ScoringWeights {
    ScoringWeights {
        affinity: config.scoring.w_affinity,
        pool: config.scoring.w_pool,
    }
}

/// The kinds of fault that make sense for `nodes` nodes (a ring needs 5, a removal a node
/// that is not a voter).
fn applicable(kinds: &[FaultKind], nodes: u32, has_learner: bool) -> Vec<FaultKind> {
    kinds
        .iter()
        .copied()
        .filter(|k| match k {
            FaultKind::PartitionRing => nodes >= 5,
            FaultKind::Membership => has_learner,
            FaultKind::PartitionHalves
            | FaultKind::PartitionBridge
            | FaultKind::PartitionLeader => nodes >= 2,
            _ => true,
        })
        .collect()
}

fn workload_of(reference: &ReferenceModel) -> Workload {
    let mut customers: Vec<u64> = reference.customers.keys().copied().collect();
    customers.sort_unstable();
    customers.truncate(500);
    // An unknown customer too: the fallback ranking is part of the contract.
    customers.push(u64::MAX - 1);
    let mut containers: Vec<u64> = reference.pools.keys().copied().collect();
    containers.sort_unstable();
    Workload {
        customers,
        containers,
    }
}

/// Starts the nodes, loads both versions (the first active, recorded as the run's first
/// activation), starts the routers.
fn bring_up(
    cluster: &mut Cluster,
    runtime: &tokio::runtime::Handle,
    models: &[PathBuf],
    recorder: &Recorder,
) -> Result<(), ChaosError> {
    for node in cluster.node_names() {
        cluster.start(&node)?;
    }
    // A leader alone is not enough: the loader may ask a follower that has not applied the
    // bootstrap map yet, and it would refuse with "no map yet" (CI saw it, seed 3).
    wait_for(
        Duration::from_secs(60),
        "a Raft leader and a map on every node",
        || {
            leader_of_nodes(runtime, cluster)?;
            map_on_every_node(runtime, cluster)
        },
    )?;
    for (i, (dir, version)) in models.iter().zip(VERSIONS).enumerate() {
        let dir = dir.to_string_lossy().into_owned();
        let mut args = vec!["load", "--model", dir.as_str()];
        if i > 0 {
            args.push("--no-activate");
        }
        let invoke = recorder.now_ms();
        let outcome = cluster.operator(&args, LOAD_TIMEOUT)?;
        recorder.record(
            "loader",
            invoke,
            Op::Operator {
                command: format!("load {version} {BEFORE_FAULTS}"),
                // Only the first is activated: the other is staged for flips.
                version: (i == 0).then(|| version.to_string()),
                code: outcome.code,
                message: String::new(),
                minority: false,
            },
        );
        if outcome.code != Some(0) {
            return Err(ChaosError::Setup(format!(
                "scoregrid {} exited {:?}: {}{}",
                args.join(" "),
                outcome.code,
                outcome.stdout,
                outcome.stderr
            )));
        }
    }
    let routers: Vec<String> = cluster
        .processes
        .iter()
        .filter(|p| p.kind == Kind::Router)
        .map(|p| p.name.clone())
        .collect();
    for router in &routers {
        cluster.start(router)?;
    }
    for addr in cluster.routers.clone() {
        wait_for(
            Duration::from_secs(60),
            "the routers' /readyz",
            || match runtime.block_on(client::get_once(addr, "/readyz")) {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!(
                    "{addr}: {status} {}",
                    String::from_utf8_lossy(&body)
                )),
                Err(e) => Err(format!("{addr}: {e}")),
            },
        )?;
    }
    Ok(())
}

/// Polls `probe` every 100 ms until it succeeds or `timeout` passes (then the last reason).
fn wait_for(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<(), ChaosError> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() > deadline => {
                return Err(ChaosError::Setup(format!(
                    "no {what} within {timeout:?}: {why}"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_nemesis(
    network: &mut Network,
    cluster: &mut Cluster,
    loads: &mut Loads,
    recorder: &Recorder,
    runtime: &tokio::runtime::Handle,
    options: &RunOptions,
    kinds: &[FaultKind],
    routers: &[(String, SocketAddr)],
) -> Result<(), ChaosError> {
    if kinds.is_empty() {
        return Err(ChaosError::Invalid(
            "no fault of --faults applies to this many nodes".into(),
        ));
    }
    let members = cluster.members.clone();
    let router = routers.first().map(|r| r.1);
    let mut nemesis = Nemesis {
        network,
        cluster,
        rng: Rng::new(options.seed),
        active: VERSIONS[0].to_string(),
        previous: VERSIONS[1].to_string(),
        loads,
        leader: Box::new(move || {
            let (_, body) = runtime
                .block_on(client::get_once(router?, "/v1/cluster"))
                .ok()?;
            let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
            let id = json["leader"].as_u64()?;
            members.iter().find(|m| m.id == id).map(|m| m.name.clone())
        }),
        operator_timeout: OPERATOR_TIMEOUT,
    };
    let deadline = Instant::now() + options.duration;
    let interrupted = || options.interrupted.load(Ordering::Relaxed);
    while Instant::now() < deadline && !interrupted() {
        // One load at a time: while one runs on, the others are picked from.
        let choices: Vec<FaultKind> = kinds
            .iter()
            .copied()
            .filter(|k| *k != FaultKind::Load || !nemesis.loads.running())
            .collect();
        let Some(&kind) = nemesis.rng.pick(&choices) else {
            wait_unless(&mut nemesis, recorder, GAP_MIN, &options.interrupted)?;
            continue;
        };
        let hold = Duration::from_millis(500 + nemesis.rng.below(2500));
        let gap = GAP_MIN + Duration::from_millis(nemesis.rng.below(500));
        let applied_at = recorder.now_ms();
        let applied = nemesis.apply(kind, applied_at)?;
        if let Some(op) = &applied.operator {
            recorder.record("operator", applied_at, op.clone());
        }
        wait_unless(&mut nemesis, recorder, hold, &options.interrupted)?;
        let healing_at = recorder.now_ms();
        let healed = nemesis.heal(&applied);
        recorder.record("nemesis", applied_at, applied.fault.clone());
        if let Some(op) = healed? {
            recorder.record("operator", healing_at, op);
        }
        for (process, status) in nemesis.cluster.exited() {
            tracing::warn!(%process, %status, "a process exited on its own; restarting it");
            recorder.record(
                &process.clone(),
                recorder.now_ms(),
                Op::Crash {
                    process: process.clone(),
                    status,
                },
            );
            nemesis.cluster.start(&process)?;
        }
        wait_unless(&mut nemesis, recorder, gap, &options.interrupted)?;
    }
    Ok(())
}

/// Waits `duration` (less when interrupted), recording a load that ends meanwhile.
fn wait_unless(
    nemesis: &mut Nemesis<'_>,
    recorder: &Recorder,
    duration: Duration,
    interrupted: &AtomicBool,
) -> Result<(), ChaosError> {
    let until = Instant::now() + duration;
    while Instant::now() < until && !interrupted.load(Ordering::Relaxed) {
        if let Some((invoke_ms, op)) = nemesis.poll_load()? {
            recorder.record("loader", invoke_ms, op);
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    Ok(())
}

fn heal_everything(network: &mut Network, cluster: &mut Cluster) -> Result<(), ChaosError> {
    network.heal()?;
    for p in cluster
        .node_names()
        .into_iter()
        .chain(["r1".into(), "r2".into()])
    {
        if cluster.is_running(&p) {
            cluster.pause(&p, false)?;
        } else {
            cluster.start(&p)?;
        }
    }
    Ok(())
}

fn final_reads(
    runtime: &tokio::runtime::Handle,
    recorder: &Recorder,
    routers: &[(String, SocketAddr)],
    workload: &Workload,
    seed: u64,
) {
    let mut rng = Rng::new(seed ^ 0xF1A1);
    for (name, addr) in routers {
        for _ in 0..FINAL_READS {
            let (Some(&customer), Some(&container)) = (
                rng.pick(&workload.customers),
                rng.pick(&workload.containers),
            ) else {
                return;
            };
            let limit = 1 + rng.below(50) as u32;
            let invoke = recorder.now_ms();
            let page = runtime.block_on(client::recommend_once(*addr, customer, container, limit));
            recorder.record(
                &format!("{FINAL_READER}-{name}"),
                invoke,
                Op::Recommend {
                    router: name.clone(),
                    customer,
                    container,
                    limit,
                    page,
                },
            );
        }
    }
}
