//! `scoregrid chaos run`, `chaos check` and `chaos sim`: the command line of the chaos harness
//! ([`scoregrid_chaos`]). Exit 0 when the history (or every simulated schedule) holds no
//! violation, 1 when it does (or the harness could not run: the message says why).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use scoregrid_config::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Start a cluster in network namespaces, run faults against it while clients read, heal,
    /// check the history. Needs root (namespaces, nftables, tc).
    Run(RunArgs),
    /// Check the history of an earlier run again (DIR is its --out).
    Check { dir: PathBuf },
    /// The deterministic simulation of the control plane (Raft members, routers' map
    /// followers, an operator and a loader on a seeded network, in virtual time): many seeds,
    /// each checked. No root needed.
    Sim(SimArgs),
}

#[derive(Args)]
pub struct SimArgs {
    /// How many seeds (each runs once per cluster size of --members).
    #[arg(long, default_value_t = 500)]
    seeds: u64,
    /// The first seed (default: from the clock, printed).
    #[arg(long)]
    first: Option<u64>,
    /// Run this one seed (with --verbose, its events are printed).
    #[arg(long, conflicts_with_all = ["seeds", "first"])]
    seed: Option<u64>,
    /// Cluster sizes, comma-separated: 3, 5 or both.
    #[arg(long, default_value = "3,5")]
    members: String,
    /// Print every event of each run (elections, faults, flips), not only of failing ones.
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// Node processes (routers: always 2).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// How long faults run: `150s`, `5m`, or seconds.
    #[arg(long, default_value = "150s", value_parser = parse_duration)]
    duration: Duration,
    /// The nemesis's seed (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault kinds, comma-separated (`all`, or any of partition-halves, partition-leader,
    /// partition-bridge, partition-ring, partition-router, kill, pause, delay, slow, loss, duplicate,
    /// flip, maintenance).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Where the history, report, logs and data go (default: chaos-<seed> under the system's
    /// temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `150s`, `5m`, `2h` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a duration is a number and s, m or h"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

pub fn run(config: Config, command: ChaosCommand) -> Result<()> {
    match command {
        ChaosCommand::Run(args) => run_chaos(config, args),
        ChaosCommand::Check { dir } => {
            let references = scoregrid_chaos::references_of(&dir)?;
            let weights = scoregrid_shard::ScoringWeights {
                affinity: config.scoring.w_affinity,
                pool: config.scoring.w_pool,
            };
            let summary = scoregrid_chaos::check_dir(&dir, &references, weights)?;
            finish(&summary)
        }
        ChaosCommand::Sim(args) => run_sim(&args),
    }
}

fn run_sim(args: &SimArgs) -> Result<()> {
    let mut sizes = Vec::new();
    for size in args.members.split(',').map(str::trim) {
        match size {
            "3" => sizes.push(3),
            "5" => sizes.push(5),
            other => {
                bail!("--members: {other:?} is not a cluster size the simulation runs (3 or 5)")
            }
        }
    }
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (
            args.first.unwrap_or_else(|| clock_seed() % 1_000_000_000),
            args.seeds,
        ),
    };
    println!(
        "chaos sim: seeds {first}..{} with {} members",
        first.saturating_add(count),
        args.members
    );
    let base = scoregrid_chaos::sim::default_base();
    let started = std::time::Instant::now();
    let (mut schedules, mut failing) = (0u64, 0u64);
    for seed in first..first.saturating_add(count) {
        for &members in &sizes {
            let run = scoregrid_chaos::sim::run(seed, members, &base)?;
            schedules += 1;
            if args.verbose {
                for event in &run.events {
                    println!("  {event}");
                }
            }
            if !run.violations.is_empty() {
                failing += 1;
                println!(
                    "seed {seed} ({members} members): {} violations",
                    run.violations.len()
                );
                for v in &run.violations {
                    println!("  violation: {v}");
                }
                if !args.verbose {
                    for event in run.events.iter().rev().take(15).rev() {
                        println!("  {event}");
                    }
                }
                println!("  replay: {}", run.replay_command());
            }
        }
    }
    println!(
        "chaos sim: {schedules} schedules, {failing} with violations, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failing > 0 {
        bail!("{failing} schedules broke an invariant");
    }
    Ok(())
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

fn run_chaos(config: Config, args: RunArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let faults = scoregrid_chaos::FaultKind::parse_list(&args.faults)?;
    let out = args
        .out
        .unwrap_or_else(|| std::env::temp_dir().join(format!("chaos-{seed}")));
    println!(
        "chaos: seed {seed} (replay: scoregrid chaos run --nodes {} --duration {}s --seed {seed} --faults {}), output in {}",
        args.nodes,
        args.duration.as_secs(),
        args.faults,
        out.display()
    );
    let runtime = crate::commands::runtime()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    runtime.spawn(async move {
        crate::commands::shutdown_signal().await;
        flag.store(true, Ordering::Relaxed);
    });
    let options = scoregrid_chaos::RunOptions {
        exe: std::env::current_exe().context("cannot find the scoregrid binary")?,
        nodes: args.nodes,
        duration: args.duration,
        seed,
        faults,
        out,
        base: config,
        interrupted: interrupted.clone(),
    };
    let summary = scoregrid_chaos::run(options, runtime.handle())?;
    if interrupted.load(Ordering::Relaxed) {
        println!("chaos: interrupted; healed, checked what ran, cleaned up");
    }
    finish(&summary)
}

fn finish(summary: &scoregrid_chaos::Summary) -> Result<()> {
    for v in summary.verdict.violations.iter().take(20) {
        println!(
            "violation: {} ({} at {} ms): {}",
            v.invariant, v.process, v.at_ms, v.detail
        );
    }
    println!("report: {}", summary.report.display());
    println!("{}", summary.line());
    if !summary.verdict.violations.is_empty() {
        bail!("{} violations", summary.verdict.violations.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("150s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("s").is_err());
    }
}
