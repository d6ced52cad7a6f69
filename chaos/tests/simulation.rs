//! Sweeps of the control-plane simulation (`scoregrid_chaos::sim`): 1,000 schedules in every
//! test run (500 seeds of 3 members, 500 of 5), each checked against every invariant the
//! module names. `SIM_SEEDS` sets how many seeds each sweep runs; a failing seed prints the
//! command that replays it (`scoregrid chaos sim --seed S --members N --verbose`).

use scoregrid_chaos::sim;

/// Seeds per sweep test (four sweeps: two for 3 members, two for 5).
const SEEDS_PER_SWEEP: u64 = 250;

fn sweep(members: u64, first: u64) {
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_PER_SWEEP);
    let started = std::time::Instant::now();
    let failing =
        sim::sweep(first, count, members, &sim::default_base()).expect("the simulation runs");
    eprintln!(
        "{count} seeds of {members} members in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let report: Vec<String> = failing
        .iter()
        .map(|run| {
            format!(
                "seed {} ({members} members):\n    {}\n  replay: {}\n  events:\n    {}",
                run.seed,
                run.violations.join("\n    "),
                run.replay_command(),
                run.events
                    .iter()
                    .rev()
                    .take(15)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )
        })
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn three_members_first_half_of_the_seeds() {
    sweep(3, 0);
}

#[test]
fn three_members_second_half_of_the_seeds() {
    sweep(3, SEEDS_PER_SWEEP);
}

#[test]
fn five_members_first_half_of_the_seeds() {
    sweep(5, 0);
}

#[test]
fn five_members_second_half_of_the_seeds() {
    sweep(5, SEEDS_PER_SWEEP);
}

/// A seed names one schedule: the same faults (kind, target, time) in the same order. What
/// happens between them can differ by a few milliseconds from one run to the next (tokio's
/// `select!` polls ready branches in an order drawn from an unseeded generator), so the
/// elections and flips are compared loosely: both runs elect and flip.
#[test]
fn a_seed_names_one_schedule_of_faults() {
    let base = sim::default_base();
    let faults = |run: &sim::SimRun| -> Vec<String> {
        run.events
            .iter()
            .filter(|e| e.contains("fault:"))
            .cloned()
            .collect()
    };
    let first = sim::run(7, 3, &base).expect("runs");
    let second = sim::run(7, 3, &base).expect("runs");
    assert!(faults(&first).len() >= 4, "{:?}", first.events);
    assert_eq!(faults(&first), faults(&second));
    for run in [&first, &second] {
        assert!(
            run.events.iter().any(|e| e.contains("leads term")),
            "{:?}",
            run.events
        );
        assert!(
            run.events.iter().any(|e| e.contains("Acknowledged")),
            "{:?}",
            run.events
        );
    }
}

/// Runs one seed and fails with its violations and events if it has any (`what` prefixes
/// the message).
fn runs_clean(base: &std::path::Path, seed: u64, members: u64, what: &str) {
    let run = sim::run(seed, members, base).expect("runs");
    assert!(
        run.violations.is_empty(),
        "{what}{}\n{}",
        run.violations.join("\n"),
        run.events.join("\n")
    );
}

/// Bug 2 (CHAOS.md), found by this simulation: after a one-way fault left leader n1 of term 1
/// cut off, a split {n1, n4} | {n2, n3, n5} put it on the minority side with follower n4. n1
/// kept sending heartbeats, and n4 counted them as contact with a quorum: its map views said
/// fresh, and router r102, which could reach only n1 and n4, called a map fresh that the
/// majority had moved past.
#[test]
fn a_follower_of_a_leader_without_quorum_says_its_map_is_stale() {
    runs_clean(&sim::default_base(), 11, 5, "");
}

/// Bug 3 (CHAOS.md), found by this simulation: the loader's flip to load-9 was pending on n1
/// when n1 stopped; n1 answered "refused: raft has stopped" (exit 1: nothing changed), but the
/// entry had reached the others, and they committed it: load-9 became active.
#[test]
fn a_flip_pending_on_a_member_that_stops_is_not_called_refused() {
    runs_clean(&sim::default_base(), 270, 3, "");
}

/// Bug 6 (CHAOS.md), found by `chaos sim` in CI: seed 478 of 5 members ends with a one-way
/// fault through which nothing reaches leader n1; after the final heal one leader took up to
/// 2.2 s to emerge (the bound: 3 maximum election timeouts, 1.8 s), in about 1 run in 40 (the
/// interleaving varies from run to run). The election guard waited two maximum election
/// timeouts without a leader before it started an election, and then up to one more. 100 runs
/// of the seed: before the fix, each of 3 tries failed (at runs 2, 82 and 19).
#[test]
fn a_cluster_whose_leader_heard_nothing_converges_within_three_election_timeouts() {
    let base = sim::default_base();
    for attempt in 0..100 {
        runs_clean(&base, 478, 5, &format!("run {attempt}: "));
    }
}
