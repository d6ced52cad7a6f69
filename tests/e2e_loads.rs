//! Nightly loads through the cluster map, with real processes: `scoregrid cluster local --nodes 3`
//! (RF 2), a reader running through the router the whole time, and `scoregrid load` /
//! `scoregrid model ...` as an operator runs them.
//!
//! 1. A model that fails validation is refused with its file and line; nothing of it is
//!    registered or left on disk; V1 keeps serving.
//! 2. V2 staged without activation (`--no-activate`): the map says it is ready, nobody serves
//!    it; a rerun sends nothing again (every copy is already staged).
//! 3. `model activate V2`: the flip. Every answer of the reader is complete and exact for the
//!    version it names, no reader sees V1 again once it saw V2, and every request sent a moment
//!    after the flip returned is answered from V2.
//! 4. Rollback to V1 and forward again; retention drops the oldest retired version from the map
//!    and from every node's disk; `model drop` removes a retired one.
//! 5. The loader killed mid-load: V2 keeps serving; a rerun resumes (copies already staged are
//!    not sent again) and completes.
//! 6. A node stopped (SIGSTOP) mid-load, the very node the loader was given (`--cluster`): it
//!    is marked down, the load goes on through the map's other nodes and completes on the
//!    replicas that are up, and the node, resumed, fetches the new version before it serves it.
//! 7. A version bigger than the loader's memory loads, the loader's peak RSS below its size.

mod common;

use common::{get_json, items, ranked};

/// [`common::wait_until`], for the value alone.
async fn wait_until<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    common::wait_until(what, limit, check).await.0
}
use scoregrid_shard::reference::ReferenceModel;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after a flip returned every answer must come from the new version: routers follow
/// the map within milliseconds (BENCHMARKS.md 3b); this leaves room for a loaded machine.
const SETTLE: Duration = Duration::from_secs(1);

/// Answers sent after the settle time that a flip's check needs.
const ANSWERS_AFTER_SETTLE: usize = 20;

/// Rows of the reader's page: enough to span several segments of the grid.
const PAGE: usize = 50;

/// Runs `scoregrid --config CONFIG ARGS...`; returns (exit code, stdout, stderr).
fn scoregrid(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scoregrid"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run scoregrid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn scoregrid_async(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        scoregrid(&config, &args, &[])
    })
    .await
    .expect("command task")
}

/// `scoregrid ARGS` (a load) started in the background and slowed down (one copy at a time,
/// 4 KiB pieces), with its output piped, so that a test can act while it runs.
fn slow_loader(config: &Path, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_scoregrid"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs([
            ("SCOREGRID_LOAD_PARALLELISM", "1"),
            ("SCOREGRID_LOAD_CHUNK_BYTES", "4096"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the loader")
}

/// One answer the reader got.
#[derive(Clone, Debug)]
struct Answer {
    sent: Instant,
    customer: u64,
    status: u16,
    version: String,
    complete: bool,
    items: Vec<(u64, f32)>,
    body: String,
}

/// Reads pages through the router until stopped, recording every answer.
struct Reader {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(router: SocketAddr, customers: Vec<u64>, grid: u64) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (answers, stop) = (answers.clone(), stop.clone());
            async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let customer = customers[i % customers.len()];
                    i += 1;
                    let sent = Instant::now();
                    let (status, body) = get_json(
                        router,
                        &format!("/v1/recommend?customer={customer}&container={grid}&limit={PAGE}"),
                    )
                    .await;
                    let answer = Answer {
                        sent,
                        customer,
                        status,
                        version: body["model_version"].as_str().unwrap_or("").to_owned(),
                        complete: body["coverage"]["segments"] == body["coverage"]["answered"]
                            && body["coverage"]["degraded"]
                                .as_array()
                                .is_none_or(|d| d.is_empty()),
                        items: items(&body),
                        body: body.to_string(),
                    };
                    answers.lock().expect("answers").push(answer);
                    // The reader's pace (about 150 requests a second), not a wait for anything.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Self {
            answers,
            stop,
            task,
        }
    }

    /// Waits until the reader has recorded [`ANSWERS_AFTER_SETTLE`] answers to requests sent
    /// after `at`, or fails saying how many it has.
    async fn wait_past(&self, at: Instant) {
        wait_until(
            "answers sent after the settle time",
            Duration::from_secs(30),
            || async {
                let answers = self.answers.lock().expect("answers");
                let after = answers.iter().filter(|a| a.sent >= at).count();
                if after >= ANSWERS_AFTER_SETTLE {
                    Ok(())
                } else {
                    Err(format!(
                        "{after} answers sent after it, of {} recorded",
                        answers.len()
                    ))
                }
            },
        )
        .await;
    }

    /// Every answer so far, the reader's log cleared.
    fn take(&self) -> Vec<Answer> {
        std::mem::take(&mut *self.answers.lock().expect("answers"))
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = self.answers.clone();
        self.task.await.expect("reader");
        let mut answers = answers.lock().expect("answers");
        std::mem::take(&mut *answers)
    }
}

/// Every answer is 200, complete, and equal to the reference of the version it names, which
/// is one of `references`. Returns the versions in the order seen.
fn check_answers(
    answers: &[Answer],
    references: &BTreeMap<&str, &ReferenceModel>,
    grid: u64,
    when: &str,
) -> Vec<String> {
    assert!(!answers.is_empty(), "{when}: the reader got no answer");
    let mut expected: BTreeMap<(String, u64), Vec<(u64, f32)>> = BTreeMap::new();
    for a in answers {
        assert_eq!(a.status, 200, "{when}: customer {}: {}", a.customer, a.body);
        assert!(a.complete, "{when}: partial answer: {}", a.body);
        let reference = references
            .get(a.version.as_str())
            .unwrap_or_else(|| panic!("{when}: an answer from {:?}: {}", a.version, a.body));
        let want = expected
            .entry((a.version.clone(), a.customer))
            .or_insert_with(|| {
                ranked(reference, a.customer, grid)
                    .into_iter()
                    .take(PAGE)
                    .collect()
            });
        assert_eq!(
            &a.items, want,
            "{when}: customer {} on {}",
            a.customer, a.version
        );
    }
    answers.iter().map(|a| a.version.clone()).collect()
}

/// The flip from `from` to `to`: once the reader saw `to`, it never sees `from` again; every
/// request sent `settle` after `flipped_at` is answered from `to`.
fn check_flip(answers: &[Answer], from: &str, to: &str, flipped_at: Instant, settle: Duration) {
    let first_new = answers.iter().position(|a| a.version == to);
    let first_new = first_new.unwrap_or_else(|| panic!("the reader never saw {to}"));
    if let Some(late) = answers[first_new..].iter().find(|a| a.version == from) {
        panic!("{from} answered after {to} was seen: {}", late.body);
    }
    for a in answers.iter().filter(|a| a.sent >= flipped_at + settle) {
        assert_eq!(a.version, to, "sent {settle:?} after the flip: {}", a.body);
    }
}

fn versions_on_disk(work: &Path, node: u64) -> Vec<String> {
    let dir = work
        .join("data")
        .join(format!("node-{node}"))
        .join("models");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("v-")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until every node's data directory holds exactly the versions `want`.
async fn disks_come_to(work: &Path, want: &[&str], what: &str) {
    wait_until(what, Duration::from_secs(20), || async {
        let disks: Vec<Vec<String>> = (1..=3).map(|n| versions_on_disk(work, n)).collect();
        if disks.iter().all(|d| d == want) {
            Ok(())
        } else {
            Err(format!("{disks:?}"))
        }
    })
    .await;
}

fn model(root: &Path, name: &str, seed: &str, customers: &str) -> (PathBuf, ReferenceModel) {
    common::generated_model(
        &root.join(name),
        &[
            "--customers",
            customers,
            "--products",
            "600",
            "--containers",
            "6",
            "--dim",
            "8",
            "--format",
            "parquet",
            "--seed",
            seed,
            "--version",
            name,
        ],
    )
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_loads_flip_once_roll_back_and_resume() {
    // E2E_KEEP_DIR=1 keeps the working directory (every process's log) for a look.
    let (_temp, root) = common::work_root(tempfile::tempdir().expect("tempdir"));
    let (v1_dir, v1) = model(&root, "v1", "31", "300");
    let (v2_dir, v2) = model(&root, "v2", "32", "300");
    let work = root.join("cluster");
    let env = [
        ("SCOREGRID_MODEL_SEGMENT_PRODUCTS_MAX", "32"),
        ("SCOREGRID_PLACEMENT_PARTITIONS", "64"),
        ("SCOREGRID_RAFT_DOWN_AFTER_MS", "1500"),
        ("SCOREGRID_RAFT_UP_AFTER_MS", "1000"),
        ("SCOREGRID_ROUTER_BREAKER_OPEN_MS", "300"),
        ("SCOREGRID_TRANSPORT_REQUEST_TIMEOUT_MS", "2000"),
    ];
    let cluster = common::cluster_local(3, &v1_dir, &work, &env);
    let lines = cluster.wait_for_lines("ready:", 180);
    let processes = common::local_processes(&lines);
    let router = processes.get("router").expect("a router").addr;
    let client = work.join("client.toml");

    let grid = v1
        .pools
        .iter()
        .filter(|(id, _)| v2.pools.contains_key(id))
        .max_by_key(|(id, pool)| (pool.len(), **id))
        .map(|(id, _)| *id)
        .expect("a container in both versions");
    let mut customers: Vec<u64> = v1
        .customers
        .keys()
        .filter(|c| v2.customers.contains_key(c))
        .copied()
        .collect();
    customers.sort_unstable();
    customers.truncate(10);
    assert!(!customers.is_empty(), "customers in both versions");
    let references: BTreeMap<&str, &ReferenceModel> = [("v1", &v1), ("v2", &v2)].into();
    let reader = Reader::start(router, customers.clone(), grid);

    // 1. An invalid model: refused with its file and line, nothing registered or written.
    let bad_dir = root.join("bad");
    common::run_scoregrid(&[
        "gen",
        "--out",
        bad_dir.to_str().expect("utf-8"),
        "--customers",
        "50",
        "--products",
        "40",
        "--containers",
        "2",
        "--dim",
        "8",
        "--version",
        "bad",
    ]);
    let customers_file = bad_dir.join("customers.jsonl");
    let text = std::fs::read_to_string(&customers_file).expect("customers.jsonl");
    let broken: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 2 {
                line.replacen("\"vector\":[", "\"vector\":[0.5,", 1)
            } else {
                line.to_owned()
            }
        })
        .collect();
    std::fs::write(&customers_file, broken.join("\n") + "\n").expect("write");
    let (code, out, err) = scoregrid(
        &client,
        &["load", "--model", bad_dir.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(code, 1, "{out} {err}");
    assert!(
        err.contains("customers.jsonl") && err.contains("line 3"),
        "the refusal names the file and line: {err}"
    );
    let (_, list, _) = scoregrid(&client, &["model", "list"], &[]);
    assert!(
        list.contains("active version: v1") && !list.contains("bad"),
        "{list}"
    );
    for node in 1..=3 {
        assert_eq!(versions_on_disk(&work, node), ["v1"], "node {node}");
    }

    // 2. V2 staged, not activated; a rerun sends nothing again.
    let stage_v2 = || {
        scoregrid(
            &client,
            &[
                "load",
                "--model",
                v2_dir.to_str().expect("utf-8"),
                "--no-activate",
            ],
            &[],
        )
    };
    let (code, out, err) = stage_v2();
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("not activated"), "{out}");
    let (_, list, _) = scoregrid(&client, &["model", "list"], &[]);
    assert!(
        list.contains("active version: v1") && list.contains("0 missing: ready to activate"),
        "{list}"
    );
    let (code, out, err) = stage_v2();
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains(" 0 copies (0.0 MiB) staged and verified, 128 already staged"),
        "a rerun resumes: {out}"
    );
    let staged_only = reader.take();
    let seen = check_answers(&staged_only, &references, grid, "v2 staged");
    assert!(
        seen.iter().all(|v| v == "v1"),
        "a staged version is not served"
    );

    // 3. The flip.
    let (code, out, err) = scoregrid_async(&client, &["model", "activate", "v2"]).await;
    let flipped_at = Instant::now();
    assert_eq!(code, 0, "{out} {err}");
    reader.wait_past(flipped_at + SETTLE).await;
    let flip = reader.take();
    check_answers(&flip, &references, grid, "v1 -> v2");
    check_flip(&flip, "v1", "v2", flipped_at, SETTLE);

    // 4. Rollback and forward; retention; drop.
    let (code, out, err) = scoregrid_async(&client, &["model", "activate", "v1"]).await;
    let rolled_back_at = Instant::now();
    assert_eq!(code, 0, "rollback: {out} {err}");
    reader.wait_past(rolled_back_at + SETTLE).await;
    let rollback = reader.take();
    check_answers(&rollback, &references, grid, "rollback");
    check_flip(
        &rollback,
        "v2",
        "v1",
        rolled_back_at,
        Duration::from_secs(1),
    );
    let (code, out, err) = scoregrid_async(&client, &["model", "activate", "v2"]).await;
    assert_eq!(code, 0, "forward again: {out} {err}");
    let (v3_dir, v3) = model(&root, "v3", "33", "300");
    let (code, out, err) = scoregrid_async(
        &client,
        &["load", "--model", v3_dir.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("active cluster-wide"), "{out}");
    let (_, list, _) = scoregrid_async(&client, &["model", "list"]).await;
    assert!(
        list.contains("active version: v3") && list.contains("v2") && !list.contains("v1 "),
        "one retired version retained: {list}"
    );
    disks_come_to(&work, &["v2", "v3"], "v1 deleted on every node").await;
    let (code, out, err) = scoregrid_async(&client, &["model", "drop", "v3"]).await;
    assert_eq!(code, 1, "the active version cannot be dropped: {out} {err}");
    assert!(err.contains("is active"), "{err}");
    let (code, out, err) = scoregrid_async(&client, &["model", "drop", "v2"]).await;
    assert_eq!(code, 0, "{out} {err}");
    disks_come_to(&work, &["v3"], "v2 deleted on every node").await;
    let references: BTreeMap<&str, &ReferenceModel> =
        [("v1", &v1), ("v2", &v2), ("v3", &v3)].into();
    check_answers(&reader.take(), &references, grid, "retention");

    // 5. The loader killed mid-load (slowed down: one copy at a time, 4 KiB pieces).
    let (v4_dir, v4) = model(&root, "v4", "34", "3000");
    let mut loader = slow_loader(
        &client,
        &[
            "load",
            "--model",
            v4_dir.to_str().expect("utf-8"),
            "--no-activate",
        ],
    );
    let stderr = loader.stderr.take().expect("stderr");
    let mut progress_seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("a line");
        let tenth = line.contains("percent=20");
        progress_seen.push(line);
        if tenth {
            break;
        }
    }
    // It may have finished already: then there is nothing to kill, and the rerun resumes all.
    let _ = loader.kill();
    let _ = loader.wait();
    assert!(
        progress_seen.iter().any(|l| l.contains("percent=10")),
        "progress lines every 10%: {progress_seen:?}"
    );
    let (_, list, _) = scoregrid_async(&client, &["model", "list"]).await;
    assert!(list.contains("active version: v3"), "{list}");
    let (code, out, err) = scoregrid_async(
        &client,
        &["load", "--model", v4_dir.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(code, 0, "the rerun completes: {out} {err}");
    let resumed: u64 = out
        .split(" already staged")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(resumed > 0, "the rerun resumes: {out}");
    let references: BTreeMap<&str, &ReferenceModel> = [("v3", &v3), ("v4", &v4)].into();
    check_answers(&reader.take(), &references, grid, "loader killed, rerun");

    // 6. A node stopped mid-load: marked down, the load completes on the others; resumed, the
    // node fetches the version before it serves it.
    let (v5_dir, v5) = model(&root, "v5", "35", "300");
    let leader = get_json(router, "/v1/cluster").await.1["leader"]
        .as_u64()
        .expect("a leader");
    let victim = (1..=3).find(|&n| n != leader).expect("a follower");
    let victim_process = &processes[&format!("node-{victim}")];
    // The loader is given the victim (`--cluster`) and the victim stops once the load is under
    // way: the load goes on through the other nodes of the map (chaos: a load through a node
    // killed mid-load failed with "no node answered").
    let victim_addr = victim_process.addr.to_string();
    let v5_arg = v5_dir.to_str().expect("utf-8").to_owned();
    let mut loader = slow_loader(
        &client,
        &["load", "--model", &v5_arg, "--cluster", &victim_addr],
    );
    let stderr = loader.stderr.take().expect("stderr");
    let (under_way, progress) = std::sync::mpsc::channel();
    let stderr_lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("percent=10") {
                let _ = under_way.send(());
            }
            seen.push(line);
        }
        seen
    });
    let started =
        tokio::task::spawn_blocking(move || progress.recv_timeout(Duration::from_secs(60)).is_ok())
            .await
            .expect("progress task");
    signal(victim_process.pid, "-STOP");
    let output = tokio::task::spawn_blocking(move || loader.wait_with_output())
        .await
        .expect("wait task")
        .expect("the loader ends");
    signal(victim_process.pid, "-CONT");
    let err = stderr_lines.join().unwrap_or_default();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        started,
        "the load reached 10% before the stop: {out} {err:?}"
    );
    assert!(
        output.status.success(),
        "the load completes without the stopped node: {out} {err:?}"
    );
    let admin = victim_process.admin.expect("an admin address");
    wait_until(
        "the resumed node serves v5",
        Duration::from_secs(60),
        || async {
            let (status, body) = get_json(admin, "/v1/status").await;
            if status == 200 && body["models"]["active"] == "v5" {
                Ok(())
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    let references: BTreeMap<&str, &ReferenceModel> = [("v4", &v4), ("v5", &v5)].into();
    let answers = reader.stop().await;
    let versions = check_answers(&answers, &references, grid, "node stopped mid-load");
    assert_eq!(
        versions.last().map(String::as_str),
        Some("v5"),
        "{versions:?}"
    );

    // 7. A version bigger than the loader's memory: the loader builds it partition by partition
    // into its spool folder and streams the files, so its peak RSS stays below the model's size.
    let (v6_dir, v6) = common::generated_model(
        &root.join("v6"),
        &[
            "--customers",
            "300000",
            "--products",
            "600",
            "--containers",
            "6",
            "--dim",
            "64",
            "--format",
            "parquet",
            "--seed",
            "36",
            "--version",
            "v6",
        ],
    );
    let (code, out, err) = scoregrid_async(
        &client,
        &["load", "--model", v6_dir.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    let staged_mib: f64 = out
        .split(" MiB) staged")
        .next()
        .and_then(|before| before.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no staged MiB in {out}"));
    let peak_mib: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("loader peak RSS "))
        .and_then(|rest| rest.strip_suffix(" MiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no loader peak RSS in {out}"));
    // RF 2: every partition was staged twice.
    let model_mib = staged_mib / 2.0;
    eprintln!("a {model_mib:.0} MiB version loaded by a loader of {peak_mib:.0} MiB peak RSS");
    assert!(
        peak_mib < model_mib,
        "the loader's peak RSS ({peak_mib} MiB) stays below the model's size ({model_mib} MiB): {out}"
    );
    let customer = *v6.customers.keys().next().expect("a customer");
    let (&grid6, _) = v6
        .pools
        .iter()
        .max_by_key(|(id, pool)| (pool.len(), **id))
        .expect("a pool");
    let (status, body) = get_json(
        router,
        &format!("/v1/recommend?customer={customer}&container={grid6}&limit={PAGE}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "v6", "{body}");
    let want: Vec<(u64, f32)> = ranked(&v6, customer, grid6)
        .into_iter()
        .take(PAGE)
        .collect();
    assert_eq!(items(&body), want);
    drop(cluster);
}
