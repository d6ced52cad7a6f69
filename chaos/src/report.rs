//! The verdict of a run, as the last line, `report.md` and `report.json`.

use crate::ChaosError;
use crate::checker::{self, Verdict};
use scoregrid_shard::ScoringWeights;
use scoregrid_shard::reference::ReferenceModel;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The last line of a run and where its report is.
pub struct Summary {
    pub verdict: Verdict,
    pub report: PathBuf,
}

impl Summary {
    /// `chaos: F faults, R requests, V violations, availability A%`.
    pub fn line(&self) -> String {
        format!(
            "chaos: {} faults, {} requests, {} violations, availability {:.2}%",
            self.verdict.faults,
            self.verdict.requests,
            self.verdict.violations.len(),
            self.verdict.availability.percent()
        )
    }
}

/// Checks the history in `dir` against `references` and writes `dir/report.json` and
/// `dir/report.md`.
///
/// # Errors
/// The history cannot be read or the report written.
pub fn check_dir(
    dir: &Path,
    references: &BTreeMap<String, ReferenceModel>,
    weights: ScoringWeights,
) -> Result<Summary, ChaosError> {
    let events = crate::history::read(&dir.join("history.jsonl"))?;
    let verdict = checker::check(&events, references, weights);
    let json =
        serde_json::to_string_pretty(&verdict).map_err(|e| ChaosError::Invalid(e.to_string()))?;
    let report_json = dir.join("report.json");
    std::fs::write(&report_json, json).map_err(|e| ChaosError::io(&report_json, e))?;
    let report = dir.join("report.md");
    std::fs::write(&report, report_text(&verdict)).map_err(|e| ChaosError::io(&report, e))?;
    Ok(Summary { verdict, report })
}

fn report_text(verdict: &Verdict) -> String {
    let mut text = String::from(
        "# Chaos run\n\n| fault | reads | full | complete, stale_map | partial | failed | answered 200 | complete |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (kind, a) in verdict
        .by_fault
        .iter()
        .chain([(&"all".to_string(), &verdict.availability)])
    {
        text.push_str(&format!(
            "| {kind} | {} | {} | {} | {} | {} | {:.2}% | {:.2}% |\n",
            a.requests,
            a.full,
            a.stale,
            a.partial,
            a.failed,
            a.percent(),
            a.complete_percent()
        ));
    }
    text.push_str(&format!(
        "\nFaults: {}. Convergence after the final heal: {}. Loads during the faults: {} \
         acknowledged, {} refused, {} of unknown outcome.\n\n## Violations: {}\n\n",
        verdict.faults,
        verdict
            .converge_ms
            .map_or_else(|| "none".to_string(), |ms| format!("{ms} ms")),
        verdict.loads.acknowledged,
        verdict.loads.refused,
        verdict.loads.unknown,
        verdict.violations.len()
    ));
    for v in verdict.violations.iter().take(100) {
        text.push_str(&format!(
            "- {} ({} at {} ms): {}\n",
            v.invariant, v.process, v.at_ms, v.detail
        ));
    }
    text
}
