//! The chaos harness end to end: `scoregrid chaos run` starts 3 or 4 nodes and 2 routers in
//! network namespaces, runs faults while clients read, heals, checks, and leaves nothing behind;
//! a run interrupted with SIGINT heals, checks what it has and cleans up too. Needs root
//! (`ip netns`, nftables): without it the run fails with the kernel's reason, and so does this
//! test.
//!
//! The long run of CI (.ci/run, 50 faults and more) is the harness's real use; these runs are
//! short and check the harness itself.

mod common;

use common::ChildGuard;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One run at a time: two at once would share the machine's 2 cores and blur what each sees.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Namespaces of chaos runs still present (`sgc-<pid>-...`) whose pid is `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("sgc-{pid}-")))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line names `dir` (the run's configurations live there).
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && cmdline.contains(" node ") | cmdline.contains(" router ") {
            found.push(cmdline);
        }
    }
    found
}

fn wait_for_exit(guard: &mut ChildGuard, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = guard.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the harness did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines_until_exit(guard: &ChildGuard) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = guard.lines.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    lines
}

/// `scoregrid chaos run` of 3 nodes with these settings, its output in `out`.
fn start_run(nodes: &str, duration: &str, seed: &str, faults: &str, out: &str) -> ChildGuard {
    ChildGuard::start(
        &[
            "chaos",
            "run",
            "--nodes",
            nodes,
            "--duration",
            duration,
            "--seed",
            seed,
            "--faults",
            faults,
            "--out",
            out,
        ],
        &[("SCOREGRID_LOG_FILTER", "warn")],
    )
}

#[test]
fn a_short_run_checks_its_history_and_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("run");
    let out_arg = out.to_string_lossy().into_owned();
    // 4 nodes: 3 voters and a learner, which membership faults remove and re-join.
    let mut guard = start_run(
        "4",
        "30s",
        "3",
        "partition-halves,partition-leader,kill,pause,loss,flip,load,membership",
        &out_arg,
    );
    let pid = guard.child.id();
    let status = wait_for_exit(&mut guard, Duration::from_secs(240));
    let lines = lines_until_exit(&guard);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(status.success(), "chaos run failed ({status}): {lines:#?}");
    // `chaos: F faults, R requests, V violations, availability A%`
    let words: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"chaos:"), "{lines:#?}");
    let faults: u64 = words[1].parse().unwrap_or(0);
    let requests: u64 = words[3].trim_end_matches(',').parse().unwrap_or(0);
    assert!(faults >= 6, "only {faults} faults in 30 s: {last}");
    assert!(requests >= 1000, "only {requests} requests: {last}");
    assert!(last.contains(" 0 violations"), "{last}");
    // The history holds what the checker read: faults of the kinds asked for, reads through
    // both routers, a load of a new version during the faults (seed 3 picks one second), a
    // removal of the learner (sixth), the convergence after the heal.
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    for needle in [
        r#""op":"fault""#,
        r#""router":"r1""#,
        r#""router":"r2""#,
        r#""command":"load chaos-v3 via "#,
        r#""command":"cluster remove 4 via "#,
        r#""op":"converge","converged":true"#,
    ] {
        assert!(history.contains(needle), "history lacks {needle}");
    }
    assert!(out.join("report.md").exists());
    assert_eq!(
        namespaces_of(pid),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    assert_eq!(
        processes_under(&out),
        Vec::<String>::new(),
        "processes left behind"
    );
    // The same history checks the same way again.
    let again = common::run_scoregrid(&["chaos", "check", &out_arg]);
    assert!(
        again.trim_end().ends_with(last.as_str()),
        "{again}\nvs {last}"
    );
}

#[test]
fn an_interrupted_run_heals_checks_and_cleans_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("run");
    let out_arg = out.to_string_lossy().into_owned();
    let mut guard = start_run("3", "10m", "5", "partition-halves,pause", &out_arg);
    let pid = guard.child.id();
    guard.wait_for_line("cluster ready", 180);
    assert!(!namespaces_of(pid).is_empty(), "the run made no namespace");
    // Let two faults run, then interrupt as Ctrl-C would.
    let deadline = Instant::now() + Duration::from_secs(90);
    let faults = || {
        std::fs::read_to_string(out.join("history.jsonl"))
            .unwrap_or_default()
            .matches(r#""op":"fault""#)
            .count()
    };
    while faults() < 2 {
        assert!(
            Instant::now() < deadline,
            "no two faults within 90 s: {}",
            faults()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill takes a pid and a signal; the pid is our own, unreaped child's.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let status = wait_for_exit(&mut guard, Duration::from_secs(120));
    let lines = lines_until_exit(&guard);
    assert!(
        status.success(),
        "interrupted run failed ({status}): {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("interrupted")),
        "{lines:#?}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains(" 0 violations")),
        "{lines:#?}"
    );
    assert_eq!(
        namespaces_of(pid),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    assert_eq!(
        processes_under(&out),
        Vec::<String>::new(),
        "processes left behind"
    );
}
