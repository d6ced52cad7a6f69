//! The run's model versions: the two loaded before the faults begin, and the new ones that the
//! nemesis's `load` fault generates and pushes with `scoregrid load` while other faults come
//! and go (a nightly load under chaos: staging, its rounds and the one committed flip all meet
//! partitions, kills and pauses). Every version's files stay in `DIR/models/<version>`, where
//! the checker finds the references of whatever was served.

use crate::ChaosError;
use crate::cluster::{Cluster, CommandOutcome, RunningCommand};
use crate::history::Op;
use scoregrid_shard::reference::ReferenceModel;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The two versions a run loads before the faults begin (the first active).
pub(crate) const VERSIONS: [&str; 2] = ["chaos-v1", "chaos-v2"];
/// A load during faults is killed after this; its outcome is then unknown to the checker
/// (its flip may have committed). Nodes that a pause or a partition keeps from answering
/// cost the loader a request timeout each, and a round waits for the map to mark them down.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Generates a run's model: small, so that a load takes a second or two between faults.
pub(crate) fn gen_model(
    exe: &Path,
    dir: &Path,
    seed: u64,
    version: &str,
) -> Result<(), ChaosError> {
    let out = dir.to_string_lossy().into_owned();
    let seed = seed.to_string();
    crate::net::sh(
        &exe.to_string_lossy(),
        &[
            "gen",
            "--out",
            &out,
            "--customers",
            "3000",
            "--products",
            "800",
            "--containers",
            "12",
            "--pool-products",
            "300",
            "--dim",
            "16",
            "--format",
            "jsonl",
            "--seed",
            &seed,
            "--version",
            version,
        ],
    )
    .map(drop)
}

pub(crate) fn reference_of(dir: &Path) -> Result<ReferenceModel, ChaosError> {
    let manifest =
        scoregrid_loader::read_manifest(dir).map_err(|e| ChaosError::Setup(e.to_string()))?;
    let mut reference = ReferenceModel::new(manifest.dim);
    scoregrid_loader::load_model(dir, &mut reference)
        .map_err(|e| ChaosError::Setup(e.to_string()))?;
    Ok(reference)
}

/// The reference models of every version in a run's directory (`DIR/models/*`), by version.
///
/// # Errors
/// A model of the run cannot be read.
pub fn references_of(dir: &Path) -> Result<BTreeMap<String, ReferenceModel>, ChaosError> {
    let models = dir.join("models");
    let entries = std::fs::read_dir(&models).map_err(|e| ChaosError::io(&models, e))?;
    let mut references = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| ChaosError::io(&models, e))?.path();
        if !path.join("manifest.json").exists() {
            continue;
        }
        let manifest =
            scoregrid_loader::read_manifest(&path).map_err(|e| ChaosError::Setup(e.to_string()))?;
        references.insert(manifest.version.to_string(), reference_of(&path)?);
    }
    Ok(references)
}

/// A load that has ended: its history entry (an activation of its version, to the checker)
/// and whether it was acknowledged.
pub struct Finished {
    pub invoke_ms: u64,
    pub version: String,
    pub op: Op,
    pub acknowledged: bool,
}

struct Running {
    version: String,
    via: String,
    invoke_ms: u64,
    command: RunningCommand,
}

/// Attempts at one version before the run gives up on it (and drops it).
const ATTEMPTS_MAX: u32 = 3;

/// The loads of a run: at most one at a time. As a nightly job would, a load that did not
/// succeed is run again (it resumes what is staged); after [`ATTEMPTS_MAX`] attempts its
/// version is given up and the next load has a new one.
pub struct Loads {
    exe: PathBuf,
    models: PathBuf,
    seed: u64,
    /// Versions made so far.
    made: u64,
    running: Option<Running>,
    /// A version whose last load did not succeed, and the attempts at it so far.
    unfinished: Option<(String, u32)>,
}

impl Loads {
    pub fn new(exe: &Path, models: &Path, seed: u64) -> Self {
        Self {
            exe: exe.to_path_buf(),
            models: models.to_path_buf(),
            seed,
            made: 0,
            running: None,
            unfinished: None,
        }
    }

    /// A version to give up on (attempted [`ATTEMPTS_MAX`] times without success): the caller
    /// drops it, so that it does not hold one of the map's staging places.
    pub fn abandoned(&mut self) -> Option<String> {
        if self.running.is_some() {
            return None;
        }
        match self.unfinished.take() {
            Some((version, attempts)) if attempts >= ATTEMPTS_MAX => Some(version),
            unfinished => {
                self.unfinished = unfinished;
                None
            }
        }
    }

    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts `scoregrid load` (with its flip) through node `via` at `via_addr`, without
    /// waiting: of the version whose load did not succeed, or else of a new one, generated.
    /// Returns the version and the attempt at it (1 for the first).
    ///
    /// # Errors
    /// The model cannot be generated, or the command started.
    pub fn start(
        &mut self,
        cluster: &Cluster,
        via: &str,
        via_addr: &str,
        now_ms: u64,
    ) -> Result<(String, u32), ChaosError> {
        let (version, attempt) = match self.unfinished.take() {
            Some((version, attempts)) => (version, attempts + 1),
            None => {
                let index = VERSIONS.len() as u64 + self.made + 1;
                let version = format!("chaos-v{index}");
                let dir = self.models.join(&version);
                if !dir.join("manifest.json").exists() {
                    gen_model(&self.exe, &dir, self.seed.wrapping_add(index - 1), &version)?;
                }
                self.made += 1;
                (version, 1)
            }
        };
        let model = self.models.join(&version).to_string_lossy().into_owned();
        let command = cluster.spawn_operator(
            &["load", "--model", &model, "--cluster", via_addr],
            &format!("load-{version}-{attempt}"),
            LOAD_TIMEOUT,
        )?;
        self.unfinished = Some((version.clone(), attempt));
        self.running = Some(Running {
            version: version.clone(),
            via: via.to_string(),
            invoke_ms: now_ms,
            command,
        });
        Ok((version, attempt))
    }

    /// The load that has just ended, if one has.
    ///
    /// # Errors
    /// The load's status cannot be read.
    pub fn poll(&mut self) -> Result<Option<Finished>, ChaosError> {
        let Some(running) = self.running.as_mut() else {
            return Ok(None);
        };
        let Some(outcome) = running.command.poll()? else {
            return Ok(None);
        };
        let Some(running) = self.running.take() else {
            return Ok(None);
        };
        if outcome.code == Some(0) {
            self.unfinished = None;
        }
        Ok(Some(Finished {
            invoke_ms: running.invoke_ms,
            acknowledged: outcome.code == Some(0),
            op: Op::Operator {
                command: format!("load {} via {}", running.version, running.via),
                version: Some(running.version.clone()),
                code: outcome.code,
                message: what_it_said(&outcome),
                minority: false,
            },
            version: running.version,
        }))
    }

    /// Waits for the running load, if any, to end (within its own timeout).
    ///
    /// # Errors
    /// As [`Loads::poll`].
    pub fn finish(&mut self) -> Result<Option<Finished>, ChaosError> {
        while self.running() {
            if let Some(finished) = self.poll()? {
                return Ok(Some(finished));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }
}

/// The line that says how a load ended: the first of its summary, or its error.
fn what_it_said(outcome: &CommandOutcome) -> String {
    let line = if outcome.code == Some(0) {
        outcome.stdout.lines().find(|l| !l.trim().is_empty())
    } else {
        let text = &outcome.stderr;
        text.lines()
            .find(|l| l.starts_with("error"))
            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
    };
    let line = line.unwrap_or(if outcome.code.is_none() {
        "killed at the harness's timeout"
    } else {
        ""
    });
    line.chars().take(300).collect()
}
