//! [`Cluster`]: the processes of a run. N nodes and two routers, each a real `scoregrid` process
//! in its own namespace ([`crate::net`]), each with a certificate of the run's CA, its own
//! configuration file, data directory and log; and the operator commands the harness runs from
//! its own namespace (`load`, `model activate`, `cluster status`), as an operator would.
//!
//! Faults on processes are real signals: `kill -9` and a restart on the same data directory,
//! SIGSTOP and SIGCONT.

use crate::ChaosError;
use crate::net::Network;
use scoregrid_config::{Config, MemberConfig, TlsConfig};
use scoregrid_wire::Role;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Nodes' QUIC port, admin port and routers' HTTP port: each host has its own address.
pub const QUIC_PORT: u16 = 7000;
pub const ADMIN_PORT: u16 = 9100;
pub const HTTP_PORT: u16 = 8080;
/// How long a process may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Node,
    Router,
}

/// One process of the run; `child` is `None` while it is killed.
pub struct Process {
    pub name: String,
    pub kind: Kind,
    pub namespace: String,
    config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    /// Starts so far (the first included): the log marker of start `n` is the `n`-th.
    starts: usize,
    /// `--join ADDR` for a node that re-joined as a new machine (kept for its restarts: a
    /// join of a node already in the map only updates its addresses).
    join: Option<SocketAddr>,
}

/// The processes and files of one run.
pub struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    pub processes: Vec<Process>,
    pub members: Vec<MemberConfig>,
    /// The Raft voters' ids (`raft.voters`); the other nodes are learners, which
    /// `cluster remove` can remove.
    pub voters: Vec<u64>,
    /// `client.toml`: the operator's configuration (an operator certificate, every node).
    pub client_config: PathBuf,
    pub routers: Vec<SocketAddr>,
}

/// How an operator command ended.
#[derive(Clone, Debug)]
pub struct CommandOutcome {
    /// The exit code; `None` when it was killed at its timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

fn tls_of(certs: &Path, name: &str) -> TlsConfig {
    TlsConfig {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    }
}

fn write_config(path: &Path, config: &Config) -> Result<(), ChaosError> {
    let text = toml::to_string(config).map_err(|e| ChaosError::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| ChaosError::io(path, e))
}

impl Cluster {
    /// Writes the CA, certificates and configurations for the nodes and routers of `network`
    /// (hosts named `n*` are nodes, `r*` routers), with `base` for every other key.
    ///
    /// # Errors
    /// A certificate or file that cannot be written, or a configuration that does not validate.
    pub fn prepare(
        exe: &Path,
        dir: &Path,
        network: &Network,
        base: &Config,
    ) -> Result<Self, ChaosError> {
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(|e| ChaosError::io(&certs, e))?;
        scoregrid_wire::init_ca(&certs).map_err(|e| ChaosError::Invalid(e.to_string()))?;
        let issue = |name: &str, role: Role, ips: &[String]| {
            scoregrid_wire::issue_to_dir(&certs, name, role, ips)
                .map_err(|e| ChaosError::Invalid(format!("certificate of {name}: {e}")))
        };
        let mut members = Vec::new();
        for (i, host) in network
            .hosts()
            .iter()
            .filter(|h| h.name.starts_with('n'))
            .enumerate()
        {
            issue(&host.name, Role::Node, &[host.ip.to_string()])?;
            members.push(MemberConfig {
                id: i as u64 + 1,
                addr: SocketAddr::new(IpAddr::V4(host.ip), QUIC_PORT),
                name: host.name.clone(),
                admin: Some(SocketAddr::new(IpAddr::V4(host.ip), ADMIN_PORT)),
            });
        }
        issue("router", Role::Router, &[])?;
        issue("operator", Role::Operator, &[])?;
        let mut config = base.clone();
        config.cluster.nodes = members.clone();
        config.raft.voters = config.voters();
        config
            .validate()
            .map_err(|e| ChaosError::Invalid(e.to_string()))?;
        let mut client = config.clone();
        client.tls = tls_of(&certs, "operator");
        let client_config = dir.join("client.toml");
        write_config(&client_config, &client)?;
        let mut processes = Vec::new();
        let mut routers = Vec::new();
        for host in network.hosts() {
            let mut c = config.clone();
            let kind = if host.name.starts_with('n') {
                let Some(m) = members.iter().find(|m| m.name == host.name) else {
                    continue;
                };
                c.node.id = m.id;
                c.node.data_dir = dir.join("data").join(&host.name);
                c.node.admin_addr = format!("{}:{ADMIN_PORT}", host.ip);
                c.tls = tls_of(&certs, &host.name);
                Kind::Node
            } else {
                c.http.addr = SocketAddr::new(IpAddr::V4(host.ip), HTTP_PORT);
                c.router.quic_bind = SocketAddr::new(IpAddr::V4(host.ip), 0);
                c.tls = tls_of(&certs, "router");
                routers.push(c.http.addr);
                Kind::Router
            };
            let path = dir.join(format!("{}.toml", host.name));
            write_config(&path, &c)?;
            processes.push(Process {
                name: host.name.clone(),
                kind,
                namespace: host.namespace.clone(),
                config: path,
                log: dir.join(format!("{}.log", host.name)),
                child: None,
                paused: false,
                starts: 0,
                join: None,
            });
        }
        Ok(Self {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            processes,
            members,
            voters: config.raft.voters.clone(),
            client_config,
            routers,
        })
    }

    fn index(&self, name: &str) -> Result<usize, ChaosError> {
        self.processes
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| ChaosError::Invalid(format!("no process {name}")))
    }

    /// Starts process `name` in its namespace and waits until its log says it listens.
    ///
    /// # Errors
    /// The process cannot be spawned, exits, or does not listen within a minute.
    pub fn start(&mut self, name: &str) -> Result<(), ChaosError> {
        let i = self.index(name)?;
        let exe = self.exe.clone();
        let p = &mut self.processes[i];
        if p.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| ChaosError::io(&p.log, e))?;
        let log_err = log.try_clone().map_err(|e| ChaosError::io(&p.log, e))?;
        let command = match p.kind {
            Kind::Node => "node",
            Kind::Router => "router",
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &p.namespace])
            .arg(&exe)
            .arg(command)
            .arg("--config")
            .arg(&p.config)
            .args(
                p.join
                    .iter()
                    .flat_map(|a| ["--join".to_string(), a.to_string()]),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| ChaosError::Command {
            command: format!("ip netns exec {} scoregrid {command}", p.namespace),
            message: e.to_string(),
        })?;
        p.child = Some(child);
        p.paused = false;
        p.starts += 1;
        let marker = match p.kind {
            Kind::Node => "listening on quic://",
            Kind::Router => "listening on http://",
        };
        self.wait_for_log(i, marker)
    }

    fn wait_for_log(&mut self, i: usize, marker: &str) -> Result<(), ChaosError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let p = &mut self.processes[i];
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            if text.matches(marker).count() >= p.starts {
                return Ok(());
            }
            let exited = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                p.child = None;
                return Err(ChaosError::Process {
                    name: p.name.clone(),
                    message: format!(
                        "exited ({status}) before it listened; log {}",
                        p.log.display()
                    ),
                });
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Process {
                    name: p.name.clone(),
                    message: format!(
                        "did not listen within {START_TIMEOUT:?}; log {}",
                        p.log.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of process `name`; it stays down until [`Cluster::start`].
    pub fn kill(&mut self, name: &str) -> Result<(), ChaosError> {
        let i = self.index(name)?;
        let p = &mut self.processes[i];
        if let Some(mut child) = p.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        p.paused = false;
        Ok(())
    }

    /// Node `name` comes back as a new machine would after `cluster remove`: stopped, its data
    /// directory wiped, started with `--join via`. It joins in state `joining`, holding
    /// nothing.
    ///
    /// # Errors
    /// The data directory cannot be removed, or the node does not start again.
    pub fn rejoin(&mut self, name: &str, via: SocketAddr) -> Result<(), ChaosError> {
        self.kill(name)?;
        let data = self.dir.join("data").join(name);
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| ChaosError::io(&data, e))?;
        }
        let i = self.index(name)?;
        self.processes[i].join = Some(via);
        self.start(name)
    }

    /// SIGSTOP (`pause`) or SIGCONT of process `name`.
    pub fn pause(&mut self, name: &str, pause: bool) -> Result<(), ChaosError> {
        let i = self.index(name)?;
        let p = &mut self.processes[i];
        if let Some(child) = &p.child {
            let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill takes a pid and a signal number; the pid is our own child's, not
            // yet reaped, so it names no other process.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            p.paused = pause;
        }
        Ok(())
    }

    /// Processes that exited without the nemesis killing them: (name, status).
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for p in &mut self.processes {
            if let Some(child) = p.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                gone.push((p.name.clone(), status.to_string()));
                p.child = None;
            }
        }
        gone
    }

    /// Whether process `name` is running (not killed; maybe paused).
    pub fn is_running(&self, name: &str) -> bool {
        self.processes
            .iter()
            .any(|p| p.name == name && p.child.is_some())
    }

    /// Stops every process (SIGCONT first, so that a paused one can die).
    pub fn stop_all(&mut self) {
        for p in &mut self.processes {
            if let Some(mut child) = p.child.take() {
                // SAFETY: as in `pause`.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Runs an operator command (`load`, `model activate`...) with the run's operator
    /// configuration and waits for it, killing it at `timeout`.
    ///
    /// # Errors
    /// The command cannot be started.
    pub fn operator(&self, args: &[&str], timeout: Duration) -> Result<CommandOutcome, ChaosError> {
        let mut running = self.spawn_operator(args, "operator", timeout)?;
        loop {
            if let Some(outcome) = running.poll()? {
                return Ok(outcome);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts an operator command without waiting for it; its output goes to
    /// `DIR/cluster/<tag>.out` and `.err` (files, not pipes: a chatty command never blocks on a
    /// full pipe). Call from the harness's own thread (see [`die_with_parent`]).
    ///
    /// # Errors
    /// The command cannot be started.
    pub fn spawn_operator(
        &self,
        args: &[&str],
        tag: &str,
        timeout: Duration,
    ) -> Result<RunningCommand, ChaosError> {
        let command = format!("scoregrid {}", args.join(" "));
        let failed = |e: std::io::Error| ChaosError::Command {
            command: command.clone(),
            message: e.to_string(),
        };
        let (out_path, err_path) = (
            self.dir.join(format!("{tag}.out")),
            self.dir.join(format!("{tag}.err")),
        );
        let out = std::fs::File::create(&out_path).map_err(failed)?;
        let err = std::fs::File::create(&err_path).map_err(failed)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&self.client_config)
            .args(args)
            .env("SCOREGRID_LOG_FILTER", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(failed)?;
        Ok(RunningCommand {
            command,
            child: Some(child),
            deadline: Instant::now() + timeout,
            out_path,
            err_path,
        })
    }

    /// The run's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node names, in id order.
    pub fn node_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }
}

/// An operator command started by [`Cluster::spawn_operator`]; killed when dropped.
pub struct RunningCommand {
    pub command: String,
    child: Option<Child>,
    deadline: Instant,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl RunningCommand {
    /// How it ended, once it has (killed at its deadline: exit code `None`); `None` while it
    /// runs.
    ///
    /// # Errors
    /// Its status cannot be read.
    pub fn poll(&mut self) -> Result<Option<CommandOutcome>, ChaosError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let failed = |e: std::io::Error| ChaosError::Command {
            command: self.command.clone(),
            message: e.to_string(),
        };
        let code = match child.try_wait().map_err(failed)? {
            Some(status) => status.code(),
            None if Instant::now() > self.deadline => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
            None => return Ok(None),
        };
        self.child = None;
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        Ok(Some(CommandOutcome {
            code,
            stdout: read(&self.out_path),
            stderr: read(&self.err_path),
        }))
    }
}

impl Drop for RunningCommand {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The kernel kills the child if the harness dies (`PR_SET_PDEATHSIG`): no process of a run
/// outlives it, even after a `kill -9` of the harness. The signal follows the thread that
/// spawned the child, so processes are spawned from the harness's long-lived threads only.
/// Each child gets a process group of its own: a Ctrl-C at the terminal interrupts the harness
/// (which heals and checks), not the cluster under test.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
}
