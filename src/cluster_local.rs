//! `scoregrid cluster local`: a real cluster on one machine. N node processes and a router
//! process, each on its own loopback address (127.0.0.2.. for nodes), each with a certificate
//! from a CA made for the run, each with its own configuration file, data directory and log
//! file in a working directory; the model is pushed to the nodes through their staging RPCs and
//! activated; the command says when the router is ready and stops every process on Ctrl-C or
//! SIGTERM. Children are also killed by the kernel if this process dies (`PR_SET_PDEATHSIG`), so
//! none outlives it.

use crate::commands::{Shutdown, print_line};
use crate::push;
use anyhow::{Context, Result, bail};
use clap::Args;
use scoregrid_config::{Config, MemberConfig};
use scoregrid_wire::Role;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a child may take to say it listens, and the router to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Nodes on 127.0.0.2..: the loopback /8 has room, but a cluster of one machine stays small.
const NODES_MAX: u32 = 64;

#[derive(Args)]
pub struct LocalArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// The model directory to load.
    #[arg(long)]
    model: PathBuf,
    /// The router's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Working directory for certificates, configurations, data and logs (default: a new
    /// directory under the system's temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory after stopping.
    #[arg(long)]
    keep: bool,
}

struct Process {
    name: String,
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

pub async fn run(base: Config, args: LocalArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=NODES_MAX).contains(&args.nodes),
        "--nodes must be in 1..={NODES_MAX}"
    );
    let shutdown = Shutdown::on_signals();
    let (dir, remove_dir) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (unique_temp_dir()?, !args.keep),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(base, &args, &dir, &shutdown).await;
    if remove_dir && result.is_ok() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the working directory");
        }
    } else {
        print_line(&format!("working directory kept: {}", dir.display()))?;
    }
    result
}

async fn run_in(base: Config, args: &LocalArgs, dir: &Path, shutdown: &Shutdown) -> Result<()> {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    scoregrid_wire::init_ca(&certs).context("cannot create the cluster CA")?;
    let mut members = Vec::new();
    for i in 1..=args.nodes {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + i as u8);
        let name = format!("node-{i}");
        scoregrid_wire::issue_to_dir(&certs, &name, Role::Node, &[ip.to_string()])?;
        members.push(MemberConfig {
            id: u64::from(i),
            addr: SocketAddr::new(IpAddr::V4(ip), free_udp_port(ip)?),
            name,
            admin: Some(SocketAddr::new(IpAddr::V4(ip), free_tcp_port(ip)?)),
        });
    }
    scoregrid_wire::issue_to_dir(&certs, "router", Role::Router, &[])?;
    scoregrid_wire::issue_to_dir(&certs, "loader", Role::Loader, &[])?;
    scoregrid_wire::issue_to_dir(&certs, "client", Role::Operator, &[])?;

    let mut config = base;
    config.cluster.nodes = members.clone();
    // min(N, 5) voters, 3 when N < 5 (all when fewer than 3): the derived default, written out.
    config.raft.voters = config.voters();
    config.validate()?;
    let mut client_config = config.clone();
    client_config.tls = tls_of(&certs, "client");
    write_config(dir, "client", &client_config)?;
    let mut processes: Vec<Process> = Vec::new();
    let outcome = async {
        for m in &members {
            let mut c = config.clone();
            c.node.id = m.id;
            c.node.data_dir = dir.join("data").join(&m.name);
            c.node.admin_addr = m.admin.map(|a| a.to_string()).unwrap_or_default();
            c.tls = tls_of(&certs, &m.name);
            processes.push(spawn(dir, &m.name, &c, "node")?);
        }
        for p in &mut processes {
            wait_for_log(p, "listening on quic://").await?;
        }

        let started = Instant::now();
        let mut loader_config = config.clone();
        loader_config.tls = tls_of(&certs, "loader");
        let (endpoint, client) = crate::operate::client(&loader_config, None)?;
        wait_for_map(&client).await?;
        let built = push::build(&config, args.model.clone()).await?;
        let version = built.directory.version.clone();
        let example = crate::demo::example_request(&built);
        let options = push::options(&config, true, scoregrid_loader::push::ProgressMode::Lines);
        let model = scoregrid_loader::push::PushModel::in_memory(built)
            .map_err(|e| anyhow::anyhow!(e))?;
        let report = push::push(model, &client, &endpoint, options).await?;
        tracing::info!(%version, copies = report.copies, bytes = report.bytes,
            seconds = started.elapsed().as_secs_f64(), "model staged and activated");

        let mut router_config = config.clone();
        router_config.http.addr = args.http;
        router_config.router.quic_bind = SocketAddr::from(([127, 0, 0, 1], 0));
        router_config.tls = tls_of(&certs, "router");
        processes.push(spawn(dir, "router", &router_config, "router")?);
        let router_line = match processes.last_mut() {
            Some(p) => wait_for_log(p, "listening on http://").await?,
            None => bail!("the router was not started"),
        };
        let http: SocketAddr = router_line
            .rsplit("http://")
            .next()
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("cannot read the router's address from {router_line:?}"))?;
        wait_ready(http).await?;

        let voters = config.voters();
        let mut lines = Vec::new();
        for (p, m) in processes.iter().zip(members.iter().map(Some).chain([None])) {
            let what = match m {
                Some(m) => format!(
                    "quic://{}  admin http://{}  {}",
                    m.addr,
                    m.admin.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    if voters.contains(&m.id) { "voter" } else { "learner" }
                ),
                None => format!("http://{http}"),
            };
            lines.push(format!(
                "{:<8} pid {:<7} {what}  config {}  log {}",
                p.name,
                p.child.id(),
                p.config.display(),
                p.log.display()
            ));
        }
        lines.push(format!(
            "ready: model {version} on {} nodes ({} Raft voters, RF {}), {} partition copies ({:.1} MiB) staged in {:.1} s",
            members.len(),
            voters.len(),
            config.placement.replication_factor.min(members.len() as u32),
            report.copies,
            report.bytes as f64 / 1048576.0,
            started.elapsed().as_secs_f64()
        ));
        lines.push(format!(
            "operate it: scoregrid --config {} cluster status",
            dir.join("client.toml").display()
        ));
        if let Some((customer, container)) = example {
            lines.push(format!("try:\n  curl 'http://{http}/v1/recommend?customer={customer}&container={container}&limit=5'"));
        }
        lines.push(format!("  curl 'http://{http}/v1/cluster'\nCtrl-C stops every process."));
        print_line(&lines.join("\n"))?;

        watch(&mut processes, shutdown).await;
        Ok(())
    }
    .await;
    stop(&mut processes).await;
    outcome
}

/// Waits until the nodes have elected a leader and bootstrapped the map.
async fn wait_for_map(client: &scoregrid_raft::client::ClusterClient) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match client.map().await {
            Ok(view) if view.map.is_some() && !view.stale => return Ok(()),
            Ok(view) => format!("map: {}, stale: {}", view.map.is_some(), view.stale),
            Err(error) => error.to_string(),
        };
        if Instant::now() > deadline {
            bail!("the nodes did not bootstrap a cluster map within {START_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tls_of(certs: &Path, name: &str) -> scoregrid_config::TlsConfig {
    scoregrid_config::TlsConfig {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    }
}

fn unique_temp_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Ok(std::env::temp_dir().join(format!("scoregrid-local-{}-{nanos:x}", std::process::id())))
}

/// A UDP port free on `ip` right now (the node binds it a moment later).
fn free_udp_port(ip: Ipv4Addr) -> Result<u16> {
    let socket = std::net::UdpSocket::bind((ip, 0))
        .with_context(|| format!("cannot bind a UDP socket on {ip}"))?;
    Ok(socket.local_addr()?.port())
}

/// Writes `config` as `DIR/<name>.toml`.
fn write_config(dir: &Path, name: &str, config: &Config) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A TCP port free on `ip` right now (the node's admin listener binds it a moment later).
fn free_tcp_port(ip: Ipv4Addr) -> Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0))
        .with_context(|| format!("cannot bind a TCP socket on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// Writes `config` and starts `scoregrid --config FILE <command>` with its output in a log file.
fn spawn(dir: &Path, name: &str, config: &Config, command: &str) -> Result<Process> {
    let config_path = write_config(dir, name, config)?;
    let log = dir.join(format!("{name}.log"));
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(&config_path)
        .arg(command)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Process {
        name: name.to_string(),
        child,
        config: config_path,
        log,
    })
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: i32 = 9;
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    // SAFETY: runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe. The children are spawned from the main thread, whose exit (not a
    // worker thread's) is the process's.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL as u64, 0, 0, 0);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Waits for a line containing `marker` in the child's log; fails if the child exits first.
async fn wait_for_log(process: &mut Process, marker: &str) -> Result<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            return Ok(line.to_string());
        }
        if let Some(status) = process.child.try_wait()? {
            bail!(
                "{} exited ({status}) before starting; its log:\n{}",
                process.name,
                tail(&text)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not start within {:?}; its log:\n{}",
                process.name,
                START_TIMEOUT,
                tail(&text)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls the router's `/readyz` until it answers 200.
async fn wait_ready(http: SocketAddr) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(http).await {
            let request =
                format!("GET /readyz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
            let mut answer = Vec::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_end(&mut answer).await.is_ok()
                && answer.starts_with(b"HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the router at {http} was not ready within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until shutdown: reports children that exit on their own (a killed node is a test, not a
/// reason to stop the others).
async fn watch(processes: &mut [Process], shutdown: &Shutdown) {
    let mut stop = std::pin::pin!(shutdown.wait());
    let mut reported = vec![false; processes.len()];
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for (p, done) in processes.iter_mut().zip(reported.iter_mut()) {
                    if !*done && let Ok(Some(status)) = p.child.try_wait() {
                        *done = true;
                        tracing::warn!(process = %p.name, %status, log = %p.log.display(), "process exited");
                    }
                }
            }
        }
    }
}

/// SIGTERM to every child, then SIGKILL to those still running after the grace period.
async fn stop(processes: &mut [Process]) {
    for p in processes.iter_mut() {
        if matches!(p.child.try_wait(), Ok(None)) {
            terminate(p.child.id());
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in processes.iter_mut() {
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if matches!(p.child.try_wait(), Ok(None)) {
            tracing::warn!(process = %p.name, "did not stop after SIGTERM; killing it");
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn terminate(pid: u32) {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn kill(pid: i32, signal: i32) -> i32;
        }
        const SIGTERM: i32 = 15;
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: sends a signal to our own child's pid; no memory is involved.
            unsafe {
                kill(pid, SIGTERM);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}
