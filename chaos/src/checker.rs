//! The checker: reads a history ([`crate::history`]) and the reference models of the versions
//! the run loaded, and reports every violation of what the cluster promises, and the
//! availability under each kind of fault.
//!
//! The invariants:
//! 1. A complete answer (200 from every segment, `stale_map` or not) equals the reference
//!    ranking of the version it names, item for item and score for score (contract section 2 is
//!    exact).
//! 2. A partial answer says why (`coverage.degraded`) and is a subsequence of that ranking.
//! 3. No walk mixes versions: every page of a cursor walk names the version of its first page,
//!    and the pages together are a subsequence of the ranking (the whole of it when every page
//!    was full).
//! 4. A router's epoch never goes back.
//! 5. No process exits on its own.
//! 6. After the final heal the cluster converged (one leader, one map, every node up) and its
//!    active version is the last acknowledged activation, or a later one whose outcome the
//!    operator did not learn (it timed out or found no quorum: either may have committed).
//! 7. After convergence both routers answer from that version, in full.
//! 9. No map change is committed by a side without quorum: an activation asked through such a
//!    side is never acknowledged.
//! 8. Only 200, 503 and the transport's own failures (refused, timeout) are seen by readers: a
//!    400 or 404 for a request that names a container of the model is a bug. (A walk's cursor
//!    whose version is no longer retained gets a 400 that says so; that one is due.)
//! 10. Only versions an activation may have made active are served: every answer's version
//!     had an activation (a load with its flip, or a flip) asked before the answer came back,
//!     one that was not refused. A load refused (not staged everywhere, say) is never served.
//!
//! Activations may overlap in time (a load runs on beside the nemesis's flips), so
//! acknowledgements need not come in the order of their commits; invariant 6 allows any
//! activation not followed in real time by an acknowledged one (see [`check_activations`]).

use crate::history::{Event, Op, Page};
use scoregrid_shard::ScoringWeights;
use scoregrid_shard::reference::{ReferenceModel, ReferenceQuery};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The fault kind of a load (see [`crate::nemesis::FaultKind::Load`]).
const LOAD: &str = "load";
/// How the history names the loads before the faults (`load chaos-v1 before the faults`).
pub const BEFORE_FAULTS: &str = "before the faults";
/// What the router says for a cursor of a version no longer retained.
const NOT_RETAINED: &str = "no longer retained";
const SERVED_ONLY_IF_ACTIVATED: &str =
    "only versions an activation may have made active are served";

/// Processes of the final round of reads (after convergence) have names starting with this.
pub const FINAL_READER: &str = "final";

/// One broken promise, with the event that shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub process: String,
    pub at_ms: u64,
    pub detail: String,
}

/// Availability under one kind of fault (or `none`): reads answered 200 in full, complete
/// but flagged `stale_map`, partially (some segments missing), and not at all.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Availability {
    pub requests: u64,
    pub full: u64,
    pub stale: u64,
    pub partial: u64,
    pub failed: u64,
}

impl Availability {
    /// Share of requests answered 200 (full, stale or partial), in percent.
    pub fn percent(&self) -> f64 {
        if self.requests == 0 {
            return 100.0;
        }
        100.0 * (self.full + self.stale + self.partial) as f64 / self.requests as f64
    }

    /// Share of requests answered from every segment, in percent.
    pub fn complete_percent(&self) -> f64 {
        if self.requests == 0 {
            return 100.0;
        }
        100.0 * (self.full + self.stale) as f64 / self.requests as f64
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    pub faults: u64,
    pub requests: u64,
    pub violations: Vec<Violation>,
    pub availability: Availability,
    pub by_fault: BTreeMap<String, Availability>,
    /// Milliseconds from the final heal to convergence, when it converged.
    pub converge_ms: Option<u64>,
    /// The loads during the faults, by how they ended.
    pub loads: LoadTally,
}

/// Loads of new versions while faults came and went (not the two before them).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadTally {
    pub acknowledged: u64,
    /// Exit 1: refused (not staged everywhere, say); nothing was activated.
    pub refused: u64,
    /// No quorum, or killed at the harness's timeout: the flip may have committed.
    pub unknown: u64,
}

/// (product, score), in rank order.
type Ranking = Vec<(u64, f32)>;

struct Rankings<'a> {
    references: &'a BTreeMap<String, ReferenceModel>,
    weights: ScoringWeights,
    /// By (version, customer, container); `None` for one the run does not know.
    cache: HashMap<(String, u64, u64), Option<Ranking>>,
}

impl Rankings<'_> {
    /// The whole reference ranking of (customer, container) in `version`; `None` for a version
    /// or container the run does not know.
    fn of(&mut self, version: &str, customer: u64, container: u64) -> Option<&Ranking> {
        let references = self.references;
        let weights = self.weights;
        self.cache
            .entry((version.to_string(), customer, container))
            .or_insert_with(|| {
                let query = ReferenceQuery {
                    customer,
                    container,
                    category: None,
                    candidates: None,
                };
                references.get(version)?.rank(query, weights).map(|r| {
                    r.items
                        .iter()
                        .map(|i| (i.product, i.score))
                        .collect::<Vec<_>>()
                })
            })
            .as_ref()
    }
}

/// Whether `part` appears in `whole` in order (items equal, scores bit for bit).
fn is_subsequence(part: &[(u64, f32)], whole: &[(u64, f32)]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| {
        rest.by_ref()
            .any(|w| w.0 == p.0 && w.1.to_bits() == p.1.to_bits())
    })
}

fn same(a: &[(u64, f32)], b: &[(u64, f32)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
}

/// Checks a history against the reference models of its versions.
pub fn check(
    events: &[Event],
    references: &BTreeMap<String, ReferenceModel>,
    weights: ScoringWeights,
) -> Verdict {
    let mut verdict = Verdict::default();
    let mut rankings = Rankings {
        references,
        weights,
        cache: HashMap::new(),
    };
    let faults: Vec<(u64, u64, &str)> = events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Fault { kind, .. } => Some((e.invoke_ms, e.complete_ms, kind.as_str())),
            _ => None,
        })
        .collect();
    verdict.faults = faults.len() as u64;
    let activations = activations(events);
    for load in activations.iter().filter(|a| a.load && !a.before_faults) {
        match load.code {
            Some(0) => verdict.loads.acknowledged += 1,
            Some(1) => verdict.loads.refused += 1,
            _ => verdict.loads.unknown += 1,
        }
    }
    // A load runs on under the other faults: a read is counted under the fault in force, and
    // under `load` only when a load was the only thing going on.
    let fault_at = |t: u64| {
        faults
            .iter()
            .rev()
            .find(|(from, to, kind)| *kind != LOAD && *from <= t && t <= *to)
            .map(|f| f.2)
            .or_else(|| {
                activations
                    .iter()
                    .any(|a| a.load && a.invoke_ms <= t && t <= a.complete_ms)
                    .then_some(LOAD)
            })
            .unwrap_or("none")
    };
    let converged = events.iter().find_map(|e| match &e.op {
        Op::Converge {
            converged,
            active_version,
            ..
        } => Some((e, *converged, active_version.clone())),
        _ => None,
    });
    let mut epochs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for event in events {
        let mut violation = |invariant: &'static str, detail: String| {
            verdict.violations.push(Violation {
                invariant,
                process: event.process.clone(),
                at_ms: event.invoke_ms,
                detail,
            });
        };
        match &event.op {
            Op::Recommend {
                router,
                customer,
                container,
                limit,
                page,
            } => {
                let final_round = event.process.starts_with(FINAL_READER);
                if !final_round {
                    verdict.requests += 1;
                    let a = &mut verdict.availability;
                    let b = verdict
                        .by_fault
                        .entry(fault_at(event.invoke_ms).to_string())
                        .or_default();
                    for tally in [a, b] {
                        tally.requests += 1;
                        match page.status {
                            200 if page.is_full() => tally.full += 1,
                            200 if page.is_complete() => tally.stale += 1,
                            200 => tally.partial += 1,
                            _ => tally.failed += 1,
                        }
                    }
                }
                let what =
                    format!("customer {customer} container {container} limit {limit} via {router}");
                if let Some(why) = never_activated(&activations, page, event.complete_ms) {
                    violation(SERVED_ONLY_IF_ACTIVATED, format!("{what}: {why}"));
                }
                if let Some(why) =
                    check_page(&mut rankings, page, *customer, *container, Some(*limit))
                {
                    violation("answer equals the reference", format!("{what}: {why}"));
                }
                if final_round {
                    let expected = converged.as_ref().and_then(|c| c.2.clone());
                    if !page.is_full() || page.version != expected {
                        violation(
                            "after convergence every router answers from the active version, in full",
                            format!(
                                "{what}: status {} version {:?} (expected {expected:?}) coverage {}/{} {:?} {:?}",
                                page.status,
                                page.version,
                                page.answered,
                                page.segments,
                                page.degraded,
                                page.error
                            ),
                        );
                    }
                }
            }
            Op::Walk {
                router,
                customer,
                container,
                pages,
                ..
            } => {
                let first = pages.iter().find(|p| p.status == 200);
                if let Some(why) =
                    first.and_then(|p| never_activated(&activations, p, event.complete_ms))
                {
                    violation(
                        SERVED_ONLY_IF_ACTIVATED,
                        format!(
                            "walk of customer {customer} container {container} via {router}: {why}"
                        ),
                    );
                }
                if let Some(why) = check_walk(&mut rankings, pages, *customer, *container) {
                    violation(
                        "a walk stays on one version and pages the ranking",
                        format!("customer {customer} container {container} via {router}: {why}"),
                    );
                }
            }
            Op::Observe {
                router,
                epoch: Some(epoch),
                ..
            } => {
                let seen = epochs
                    .entry(router.as_str())
                    .or_insert((*epoch, event.complete_ms));
                if *epoch < seen.0 {
                    violation(
                        "epochs never go back",
                        format!(
                            "{router} showed epoch {epoch} after epoch {} (at {} ms)",
                            seen.0, seen.1
                        ),
                    );
                } else {
                    *seen = (*epoch, event.complete_ms);
                }
            }
            Op::Operator {
                command,
                code: Some(0),
                minority: true,
                ..
            } => violation(
                "no map change is committed by a side without quorum",
                format!("{command} was acknowledged from a side without quorum"),
            ),
            Op::Crash { process, status } => violation(
                "no process exits on its own",
                format!("{process} exited: {status}"),
            ),
            Op::Converge {
                converged: false,
                detail,
                ..
            } => violation("the cluster converges after the final heal", detail.clone()),
            _ => {}
        }
    }
    if let Some((event, true, active)) = &converged {
        verdict.converge_ms = Some(event.complete_ms.saturating_sub(event.invoke_ms));
        if let Some(why) = check_activations(&activations, active.as_deref()) {
            verdict.violations.push(Violation {
                invariant: "the last acknowledged activation is the active version",
                process: event.process.clone(),
                at_ms: event.complete_ms,
                detail: why,
            });
        }
    }
    verdict
}

/// Invariants 1, 2 and 8 for one page; `limit` is `None` for a page of a walk (its length
/// depends on where the cursor stands).
fn check_page(
    rankings: &mut Rankings,
    page: &Page,
    customer: u64,
    container: u64,
    limit: Option<u32>,
) -> Option<String> {
    match page.status {
        200 => {}
        0 | 503 => return None,
        other => return Some(format!("status {other} ({:?})", page.error)),
    }
    let Some(version) = &page.version else {
        return Some("a 200 without model_version".into());
    };
    let Some(ranking) = rankings.of(version, customer, container) else {
        return Some(format!(
            "an answer from {version}, which the run never loaded"
        ));
    };
    if !page.is_complete() {
        if page.degraded.is_empty() {
            return Some(format!(
                "a partial answer ({}/{} segments) that does not say why",
                page.answered, page.segments
            ));
        }
        if !is_subsequence(&page.items, ranking) {
            return Some(format!(
                "a partial answer that is not a subsequence of {version}'s ranking: {:?}",
                page.items
            ));
        }
        return None;
    }
    match limit {
        Some(limit) => {
            let want = &ranking[..ranking.len().min(limit as usize)];
            (!same(&page.items, want)).then(|| {
                format!(
                    "{version}: got {:?}, the reference ranks {:?}",
                    page.items, want
                )
            })
        }
        None => (!is_subsequence(&page.items, ranking))
            .then(|| format!("{version}: a page not in the ranking: {:?}", page.items)),
    }
}

/// Invariant 3 for a walk.
fn check_walk(
    rankings: &mut Rankings,
    pages: &[Page],
    customer: u64,
    container: u64,
) -> Option<String> {
    if let Some(page) = pages.iter().find(|p| {
        !matches!(p.status, 0 | 200 | 503)
            && !p.error.as_deref().is_some_and(|e| e.contains(NOT_RETAINED))
    }) {
        return Some(format!("status {} ({:?})", page.status, page.error));
    }
    let answered: Vec<&Page> = pages.iter().filter(|p| p.status == 200).collect();
    let first = answered.first()?;
    if let Some(other) = answered.iter().find(|p| p.version != first.version) {
        return Some(format!(
            "pages from {:?} and from {:?}",
            first.version, other.version
        ));
    }
    for page in &answered {
        if let Some(why) = check_page(rankings, page, customer, container, None) {
            return Some(why);
        }
    }
    let version = first.version.clone()?;
    let ranking = rankings.of(&version, customer, container)?;
    let all: Vec<(u64, f32)> = answered
        .iter()
        .flat_map(|p| p.items.iter().copied())
        .collect();
    let whole = answered.len() == pages.len()
        && answered.iter().all(|p| p.is_complete())
        && pages.last().is_some_and(|p| p.next_cursor.is_none());
    if whole && !same(&all, ranking) {
        return Some(format!(
            "{version}: the pages hold {} items, the ranking {}; first difference at {:?}",
            all.len(),
            ranking.len(),
            all.iter().zip(ranking.iter()).position(|(a, b)| a != b)
        ));
    }
    if !whole && !is_subsequence(&all, ranking) {
        return Some(format!(
            "{version}: the pages are not a subsequence of the ranking"
        ));
    }
    None
}

/// An activation of a version in the history: a load (with its flip) or a `model activate`.
struct Activation<'a> {
    invoke_ms: u64,
    complete_ms: u64,
    version: &'a str,
    /// The exit code: 0 acknowledged, 1 refused (it did not and will not commit), else (3, or
    /// `None` for a timeout) unknown.
    code: Option<i32>,
    load: bool,
    /// The run's first version, loaded before the faults began.
    before_faults: bool,
}

fn activations(events: &[Event]) -> Vec<Activation<'_>> {
    events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Operator {
                command,
                version: Some(version),
                code,
                ..
            } => Some(Activation {
                invoke_ms: e.invoke_ms,
                complete_ms: e.complete_ms,
                version,
                code: *code,
                load: command.starts_with("load "),
                before_faults: command.ends_with(BEFORE_FAULTS),
            }),
            _ => None,
        })
        .collect()
}

/// Invariant 10 for one answer that came back at `at_ms`: why its version cannot be served,
/// if it cannot. A history without activations (from before they were recorded) is not
/// checked.
fn never_activated(activations: &[Activation<'_>], page: &Page, at_ms: u64) -> Option<String> {
    let version = page.version.as_deref().filter(|_| page.status == 200)?;
    if activations.is_empty() {
        return None;
    }
    let allowed = activations
        .iter()
        .any(|a| a.version == version && a.code != Some(1) && a.invoke_ms <= at_ms);
    (!allowed).then(|| {
        format!(
            "an answer from {version}, whose every activation asked before it was refused (or none was)"
        )
    })
}

/// Invariant 6: `active` is the version of an activation that was not refused and that no
/// acknowledged activation followed in real time (invoked after it completed: Raft then
/// committed that one after it). With activations in sequence this is the last acknowledged
/// one or a later one of unknown outcome.
fn check_activations(activations: &[Activation<'_>], active: Option<&str>) -> Option<String> {
    let last_ack = activations
        .iter()
        .filter(|a| a.code == Some(0))
        .max_by_key(|a| a.invoke_ms)?;
    let allowed: Vec<&str> = activations
        .iter()
        .filter(|a| a.code != Some(1) && a.complete_ms >= last_ack.invoke_ms)
        .map(|a| a.version)
        .collect();
    if active.is_some_and(|a| allowed.contains(&a)) {
        return None;
    }
    Some(format!(
        "active after heal: {active:?}; the last acknowledged activation was invoked at {} ms ({}), and those that may have committed after it: {allowed:?}",
        last_ack.invoke_ms, last_ack.version,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Page;
    use scoregrid_shard::builder::{ModelSink, RowRef};

    const CUSTOMER: u64 = 11;
    const GRID: u64 = 7;

    /// Two versions of one grid of 5 products that rank differently for the customer.
    fn references() -> BTreeMap<String, ReferenceModel> {
        let mut all = BTreeMap::new();
        for (name, sign) in [("v1", 1.0f32), ("v2", -1.0f32)] {
            let mut m = ReferenceModel::new(2);
            m.add_customer(CUSTOMER, &[1.0, 0.5], &[], RowRef(0))
                .unwrap();
            for p in 1..=5u64 {
                let v = [sign * p as f32, 0.25 * p as f32];
                m.add_product(p, 1, &v, true, RowRef(0)).unwrap();
                m.add_pool_entry(GRID, p, 0.01 * p as f32, RowRef(0))
                    .unwrap();
            }
            all.insert(name.to_string(), m);
        }
        all
    }

    fn ranking(references: &BTreeMap<String, ReferenceModel>, version: &str) -> Vec<(u64, f32)> {
        let mut r = Rankings {
            references,
            weights: ScoringWeights::default(),
            cache: HashMap::new(),
        };
        r.of(version, CUSTOMER, GRID).unwrap().clone()
    }

    fn page(version: &str, items: Vec<(u64, f32)>, full: bool, cursor: bool) -> Page {
        Page {
            status: 200,
            version: Some(version.into()),
            items,
            segments: 2,
            answered: if full { 2 } else { 1 },
            degraded: if full { vec![] } else { vec!["timeout".into()] },
            error: None,
            next_cursor: cursor.then(|| "c".into()),
        }
    }

    fn event(at: u64, op: Op) -> Event {
        Event {
            process: "reader".into(),
            invoke_ms: at,
            complete_ms: at + 1,
            op,
        }
    }

    fn recommend(page: Page, limit: u32) -> Op {
        Op::Recommend {
            router: "r1".into(),
            customer: CUSTOMER,
            container: GRID,
            limit,
            page,
        }
    }

    fn violations(events: &[Event]) -> Vec<&'static str> {
        check(events, &references(), ScoringWeights::default())
            .violations
            .iter()
            .map(|v| v.invariant)
            .collect()
    }

    #[test]
    fn exact_answers_pass_and_a_changed_score_or_order_is_caught() {
        let refs = references();
        let v1 = ranking(&refs, "v1");
        assert_eq!(v1.len(), 5);
        assert!(
            violations(&[event(
                0,
                recommend(page("v1", v1[..3].to_vec(), true, true), 3)
            )])
            .is_empty()
        );
        let mut swapped = v1[..3].to_vec();
        swapped.swap(0, 1);
        assert_eq!(
            violations(&[event(0, recommend(page("v1", swapped, true, true), 3))]),
            ["answer equals the reference"]
        );
        let mut nudged = v1[..3].to_vec();
        nudged[2].1 = f32::from_bits(nudged[2].1.to_bits() + 1);
        assert_eq!(
            violations(&[event(0, recommend(page("v1", nudged, true, true), 3))]),
            ["answer equals the reference"]
        );
        // v2's ranking labelled v1.
        let v2 = ranking(&refs, "v2");
        assert_ne!(v1, v2);
        assert_eq!(
            violations(&[event(
                0,
                recommend(page("v1", v2[..3].to_vec(), true, true), 3)
            )]),
            ["answer equals the reference"]
        );
    }

    #[test]
    fn partial_answers_must_say_why_and_keep_the_order() {
        let v1 = ranking(&references(), "v1");
        let gapped = vec![v1[0], v1[2], v1[4]];
        assert!(
            violations(&[event(
                0,
                recommend(page("v1", gapped.clone(), false, false), 5)
            )])
            .is_empty()
        );
        let mut silent = page("v1", gapped, false, false);
        silent.degraded.clear();
        assert_eq!(
            violations(&[event(0, recommend(silent, 5))]),
            ["answer equals the reference"]
        );
        let reordered = vec![v1[2], v1[0]];
        assert_eq!(
            violations(&[event(0, recommend(page("v1", reordered, false, false), 5))]),
            ["answer equals the reference"]
        );
    }

    #[test]
    fn a_walk_that_mixes_versions_or_skips_items_is_caught() {
        let refs = references();
        let (v1, v2) = (ranking(&refs, "v1"), ranking(&refs, "v2"));
        let walk = |pages| Op::Walk {
            router: "r1".into(),
            customer: CUSTOMER,
            container: GRID,
            limit: 2,
            pages,
        };
        let whole = vec![
            page("v1", v1[..2].to_vec(), true, true),
            page("v1", v1[2..4].to_vec(), true, true),
            page("v1", v1[4..].to_vec(), true, false),
        ];
        assert!(violations(&[event(0, walk(whole))]).is_empty());
        let mixed = vec![
            page("v1", v1[..2].to_vec(), true, true),
            page("v2", v2[2..].to_vec(), true, false),
        ];
        assert_eq!(
            violations(&[event(0, walk(mixed))]),
            ["a walk stays on one version and pages the ranking"]
        );
        let gap = vec![
            page("v1", v1[..2].to_vec(), true, true),
            page("v1", v1[3..].to_vec(), true, false),
        ];
        assert_eq!(
            violations(&[event(0, walk(gap))]),
            ["a walk stays on one version and pages the ranking"]
        );
        // A cursor of a version that retention dropped gets a 400 that says so: due. Any
        // other 400 in a walk is not.
        let refused = |message: &str| Page {
            status: 400,
            error: Some(format!("bad_cursor: {message}")),
            ..Page::default()
        };
        let dropped = vec![
            page("v1", v1[..2].to_vec(), true, true),
            refused("the cursor's model version v1 is no longer retained; start again"),
        ];
        assert!(violations(&[event(0, walk(dropped))]).is_empty());
        let garbled = vec![
            page("v1", v1[..2].to_vec(), true, true),
            refused("the cursor does not decode"),
        ];
        assert_eq!(
            violations(&[event(0, walk(garbled))]),
            ["a walk stays on one version and pages the ranking"]
        );
    }

    fn activation(command: &str, version: &str, code: Option<i32>, from: u64, to: u64) -> Event {
        Event {
            process: "loader".into(),
            invoke_ms: from,
            complete_ms: to,
            op: Op::Operator {
                command: format!("{command} {version}"),
                version: Some(version.into()),
                code,
                message: String::new(),
                minority: false,
            },
        }
    }

    #[test]
    fn a_version_is_served_only_after_an_activation_of_it_that_was_not_refused() {
        let refs = references();
        let v2 = ranking(&refs, "v2");
        let answer = |at| event(at, recommend(page("v2", v2[..2].to_vec(), true, true), 2));
        let first = activation("load", "v1", Some(0), 0, 1);
        let served = "only versions an activation may have made active are served";
        assert_eq!(violations(&[first.clone(), answer(10)]), [served]);
        // A refused load is never served; one asked after the answer does not count.
        let refused = activation("load", "v2", Some(1), 2, 8);
        assert_eq!(violations(&[first.clone(), refused, answer(10)]), [served]);
        let later = activation("model activate", "v2", Some(0), 20, 21);
        assert_eq!(violations(&[first.clone(), answer(10), later]), [served]);
        // Of unknown outcome (no quorum, timeout), or acknowledged: it may be served.
        for code in [None, Some(3), Some(0)] {
            let asked = activation("load", "v2", code, 2, 30);
            assert!(
                violations(&[first.clone(), asked, answer(10)]).is_empty(),
                "{code:?}"
            );
        }
    }

    #[test]
    fn overlapping_activations_may_commit_in_either_order() {
        let converge = |v: &str| Event {
            process: "harness".into(),
            invoke_ms: 200,
            complete_ms: 201,
            op: Op::Converge {
                converged: true,
                active_version: Some(v.into()),
                detail: String::new(),
            },
        };
        let lost = ["the last acknowledged activation is the active version"];
        // A load of v1 acknowledged at 100, a flip to v2 asked at 50 and acknowledged at 60:
        // they overlap, so either may have committed last.
        let load = activation("load", "v1", Some(0), 0, 100);
        let flip = activation("model activate", "v2", Some(0), 50, 60);
        for v in ["v1", "v2"] {
            let events = [flip.clone(), load.clone(), converge(v)];
            assert!(violations(&events).is_empty(), "{v}");
        }
        // A flip asked after the load was acknowledged commits after it.
        let after = activation("model activate", "v2", Some(0), 110, 120);
        assert!(violations(&[load.clone(), after.clone(), converge("v2")]).is_empty());
        assert_eq!(violations(&[load, after, converge("v1")]), lost);
    }

    #[test]
    fn an_epoch_going_back_a_crash_and_a_lost_activation_are_caught() {
        let observe = |epoch| Op::Observe {
            router: "r1".into(),
            epoch: Some(epoch),
            active_version: None,
            stale: false,
            error: None,
        };
        assert_eq!(
            violations(&[
                event(0, observe(5)),
                event(1, observe(6)),
                event(2, observe(4))
            ]),
            ["epochs never go back"]
        );
        let crash = Op::Crash {
            process: "n2".into(),
            status: "signal 6".into(),
        };
        assert_eq!(
            violations(&[event(0, crash)]),
            ["no process exits on its own"]
        );
        let activate = |v: &str, code| Op::Operator {
            command: format!("model activate {v}"),
            version: Some(v.into()),
            code,
            message: String::new(),
            minority: false,
        };
        let from_minority = |code| Op::Operator {
            command: "model activate v1 via n1".into(),
            version: Some("v1".into()),
            code,
            message: String::new(),
            minority: true,
        };
        assert!(violations(&[event(0, from_minority(Some(3)))]).is_empty());
        assert_eq!(
            violations(&[event(0, from_minority(Some(0)))]),
            ["no map change is committed by a side without quorum"]
        );
        let converge = |v: &str| Op::Converge {
            converged: true,
            active_version: Some(v.into()),
            detail: String::new(),
        };
        // Acknowledged v2, then a flip to v1 refused for good (exit 1): v2 must stay.
        let refused = [
            event(0, activate("v2", Some(0))),
            event(5, activate("v1", Some(1))),
            event(9, converge("v1")),
        ];
        assert_eq!(
            violations(&refused),
            ["the last acknowledged activation is the active version"]
        );
        // A flip that timed out may have committed: either version is allowed.
        for v in ["v1", "v2"] {
            let unknown = [
                event(0, activate("v2", Some(0))),
                event(5, activate("v1", None)),
                event(9, converge(v)),
            ];
            assert!(violations(&unknown).is_empty(), "{v}");
        }
        let stuck = Op::Converge {
            converged: false,
            active_version: None,
            detail: "n3 is down".into(),
        };
        assert_eq!(
            violations(&[event(0, stuck)]),
            ["the cluster converges after the final heal"]
        );
    }

    #[test]
    fn availability_is_counted_by_the_fault_in_force() {
        let v1 = ranking(&references(), "v1");
        let fault = Op::Fault {
            kind: "kill".into(),
            detail: "n1".into(),
        };
        let failed = Page {
            status: 503,
            error: Some("unavailable".into()),
            ..Page::default()
        };
        let events = [
            Event {
                process: "nemesis".into(),
                invoke_ms: 10,
                complete_ms: 20,
                op: fault,
            },
            event(5, recommend(page("v1", v1[..1].to_vec(), true, true), 1)),
            event(12, recommend(failed, 1)),
            event(15, recommend(page("v1", vec![v1[1]], false, true), 1)),
        ];
        let verdict = check(&events, &references(), ScoringWeights::default());
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.faults, 1);
        assert_eq!(verdict.requests, 3);
        let kill = &verdict.by_fault["kill"];
        assert_eq!(
            (kill.requests, kill.full, kill.partial, kill.failed),
            (2, 0, 1, 1)
        );
        assert_eq!(verdict.by_fault["none"].full, 1);
        assert!((verdict.availability.percent() - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_read_during_a_load_counts_under_the_fault_in_force_or_else_under_load() {
        let v1 = ranking(&references(), "v1");
        let kill = Event {
            process: "nemesis".into(),
            invoke_ms: 10,
            complete_ms: 20,
            op: Op::Fault {
                kind: "kill".into(),
                detail: "n1".into(),
            },
        };
        let read = |at| event(at, recommend(page("v1", v1[..1].to_vec(), true, true), 1));
        let events = [
            activation("load", "v1", Some(0), 0, 30),
            read(5),
            kill,
            read(15),
            read(40),
        ];
        let verdict = check(&events, &references(), ScoringWeights::default());
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        let count = |kind: &str| verdict.by_fault.get(kind).map_or(0, |a| a.requests);
        assert_eq!((count("load"), count("kill"), count("none")), (1, 1, 1));
    }
}
