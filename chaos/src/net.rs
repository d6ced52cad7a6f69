//! [`Network`]: the hosts of a run, each in its own Linux network namespace, wired to one bridge,
//! and the faults the network can be given: cuts (nftables drop rules inside a host's
//! namespace) and bad links on a host's interface ([`LinkFault`]: delay with tc netem, or on a
//! kernel built without netem with the harness's own [`Delayer`]; a slow link with tbf; loss
//! and duplication with nftables).
//!
//! Layout, for run `R` (the harness's process id):
//! - namespace `sgc-R-hub` holds bridge `br0`;
//! - namespace `sgc-R-<host>` holds `eth0` (address `10.S.0.<n>/24`), the other end of a veth
//!   pair whose hub end is a port of `br0`;
//! - the harness's own namespace gets `10.S.0.254` on veth `sgcR` into the bridge: clients and
//!   the loader run here, like Jepsen's control node, and cuts never touch this link unless a
//!   fault names it.
//!
//! `S` is derived from `R` and skips subnets in use, so that two runs at once do not share one.
//! Every name starts with `sgc-R` (`sgcR` for interfaces, whose names are limited to 15 bytes),
//! so what a killed run left behind is found and removed by the next one ([`Network::sweep`]).

use crate::ChaosError;
use crate::delay::Delayer;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;

/// The harness's own address on the bridge.
pub const CONTROL_HOST: u8 = 254;

/// A bad link, on one host's interface (what it sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Every packet delayed by `ms` ± `jitter_ms` (see [`DelayMethod`]).
    Delay { ms: u32, jitter_ms: u32 },
    /// tbf: a link of `kbit` kbit/s that queues at most `latency_ms`.
    Slow { kbit: u32, latency_ms: u32 },
    /// nftables: `percent` of packets dropped.
    Loss { percent: u32 },
    /// nftables: `percent` of packets sent twice.
    Duplicate { percent: u32 },
}

/// How this kernel lets packets be delayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayMethod {
    /// `tc qdisc ... netem delay`.
    Netem,
    /// iptables's NFQUEUE target and a [`Delayer`] thread holding the packets.
    Nfqueue,
}

impl DelayMethod {
    pub fn name(self) -> &'static str {
        match self {
            DelayMethod::Netem => "tc netem",
            DelayMethod::Nfqueue => "iptables NFQUEUE and the harness's delayer",
        }
    }
}

/// One host of the run: a namespace and its address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Host {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
}

/// The namespaces, links and rules of one run; removed by [`Network::teardown`] (also called on
/// drop, so an error path leaves nothing behind).
pub struct Network {
    run: u32,
    subnet: u8,
    hosts: Vec<Host>,
    /// (host, blocked address) pairs: a host drops packets from and to the address.
    cuts: BTreeSet<(usize, Ipv4Addr)>,
    /// Hosts whose link is degraded, and how.
    degraded: BTreeMap<usize, LinkFault>,
    /// The delays in force by NFQUEUE, by host.
    delayers: BTreeMap<usize, Delayer>,
    /// How delays are made, once probed.
    delay_method: Option<Option<DelayMethod>>,
    /// Delays started so far (each draws from a seed of its own).
    delays_started: u64,
    up: bool,
}

/// Runs one command; an error names the command and what it printed.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<String, ChaosError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ChaosError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(ChaosError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn in_namespace(
    namespace: &str,
    program: &str,
    args: &[&str],
) -> Result<String, ChaosError> {
    let mut all = vec!["netns", "exec", namespace, program];
    all.extend_from_slice(args);
    sh("ip", &all)
}

impl Network {
    /// Creates the hub, one namespace per name in `hosts` (addresses `.1`, `.2`, ... in that
    /// order) and the harness's link.
    ///
    /// # Errors
    /// [`ChaosError::Command`] naming the `ip` or `nft` command the kernel refused (no
    /// namespaces without root, for example): the run fails, it is never skipped.
    pub fn create(run: u32, hosts: &[&str]) -> Result<Self, ChaosError> {
        if hosts.len() >= usize::from(CONTROL_HOST) {
            return Err(ChaosError::Invalid(format!(
                "{} hosts: at most {}",
                hosts.len(),
                CONTROL_HOST - 1
            )));
        }
        let subnet = free_subnet(run)?;
        let mut network = Self {
            run,
            subnet,
            hosts: Vec::new(),
            cuts: BTreeSet::new(),
            degraded: BTreeMap::new(),
            delayers: BTreeMap::new(),
            delay_method: None,
            delays_started: 0,
            up: true,
        };
        let hub = network.hub();
        sh("ip", &["netns", "add", &hub])?;
        in_namespace(&hub, "ip", &["link", "add", "br0", "type", "bridge"])?;
        in_namespace(&hub, "ip", &["link", "set", "br0", "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let n = i + 1;
            let host = Host {
                name: (*name).to_string(),
                namespace: format!("sgc-{run}-{name}"),
                ip: Ipv4Addr::new(10, subnet, 0, n as u8),
            };
            // Listed before it is wired, so that a failure half-way is torn down too.
            network.hosts.push(host.clone());
            network.wire_host(&host, n)?;
        }
        network.wire_control()?;
        Ok(network)
    }

    fn hub(&self) -> String {
        format!("sgc-{}-hub", self.run)
    }

    fn wire_host(&self, host: &Host, n: usize) -> Result<(), ChaosError> {
        let (inner, outer) = (
            format!("sgc{}n{n}", self.run),
            format!("sgc{}h{n}", self.run),
        );
        let address = format!("{}/24", host.ip);
        sh("ip", &["netns", "add", &host.namespace])?;
        self.veth_to_hub(&inner, &outer)?;
        sh("ip", &["link", "set", &inner, "netns", &host.namespace])?;
        let ns = &host.namespace;
        in_namespace(ns, "ip", &["link", "set", &inner, "name", "eth0"])?;
        in_namespace(ns, "ip", &["addr", "add", &address, "dev", "eth0"])?;
        in_namespace(ns, "ip", &["link", "set", "eth0", "up"])?;
        in_namespace(ns, "ip", &["link", "set", "lo", "up"])?;
        // The drop rules a cut adds to: a set of addresses, matched both ways.
        let rules = "table inet chaos {\n\
             set cut { type ipv4_addr; }\n\
             chain input { type filter hook input priority 0; policy accept; ip saddr @cut drop; }\n\
             chain output { type filter hook output priority 0; policy accept; ip daddr @cut drop; }\n\
             }\n";
        nft_script(ns, rules)
    }

    /// A veth pair `inner`-`outer` whose `outer` end is a port of the hub's bridge.
    fn veth_to_hub(&self, inner: &str, outer: &str) -> Result<(), ChaosError> {
        let hub = self.hub();
        sh(
            "ip",
            &["link", "add", inner, "type", "veth", "peer", "name", outer],
        )?;
        sh("ip", &["link", "set", outer, "netns", &hub])?;
        in_namespace(&hub, "ip", &["link", "set", outer, "master", "br0", "up"])?;
        Ok(())
    }

    fn wire_control(&self) -> Result<(), ChaosError> {
        let (inner, outer) = (format!("sgc{}", self.run), format!("sgc{}c", self.run));
        self.veth_to_hub(&inner, &outer)?;
        let address = format!("{}/24", Ipv4Addr::new(10, self.subnet, 0, CONTROL_HOST));
        sh("ip", &["addr", "add", &address, "dev", &inner])?;
        sh("ip", &["link", "set", &inner, "up"])?;
        Ok(())
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The harness's address on the bridge.
    pub fn control_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, CONTROL_HOST)
    }

    fn index(&self, name: &str) -> Result<usize, ChaosError> {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| ChaosError::Invalid(format!("no host {name} in this run")))
    }

    /// Cuts the link between hosts `a` and `b`, both ways: each drops what comes from or goes
    /// to the other.
    ///
    /// # Errors
    /// An unknown host, or `nft` refused the rule.
    pub fn cut(&mut self, a: &str, b: &str) -> Result<(), ChaosError> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let (ip_a, ip_b) = (self.hosts[ia].ip, self.hosts[ib].ip);
        self.block(ia, ip_b)?;
        self.block(ib, ip_a)
    }

    /// Cuts host `a` off from the harness (its clients, the loader and the operator).
    ///
    /// # Errors
    /// An unknown host, or `nft` refused the rule.
    pub fn cut_from_control(&mut self, a: &str) -> Result<(), ChaosError> {
        let ia = self.index(a)?;
        self.block(ia, self.control_ip())
    }

    fn block(&mut self, host: usize, ip: Ipv4Addr) -> Result<(), ChaosError> {
        if self.cuts.insert((host, ip)) {
            let element = format!("{{ {ip} }}");
            in_namespace(
                &self.hosts[host].namespace,
                "nft",
                &["add", "element", "inet", "chaos", "cut", &element],
            )?;
        }
        Ok(())
    }

    /// Gives host `a`'s link a bad quality (see [`LinkFault`]).
    ///
    /// # Errors
    /// An unknown host, or `tc` or `nft` refused (a delay on a kernel without netem).
    pub fn degrade(&mut self, a: &str, fault: LinkFault) -> Result<(), ChaosError> {
        let ia = self.index(a)?;
        let ns = self.hosts[ia].namespace.clone();
        match fault {
            LinkFault::Delay { ms, jitter_ms } => match self.delay_method() {
                Some(DelayMethod::Netem) => {
                    let (ms, jitter) = (format!("{ms}ms"), format!("{jitter_ms}ms"));
                    in_namespace(
                        &ns,
                        "tc",
                        &[
                            "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &ms, &jitter,
                        ],
                    )?;
                }
                Some(DelayMethod::Nfqueue) => {
                    self.delays_started += 1;
                    let seed = u64::from(self.run) << 32 | self.delays_started;
                    let delayer = Delayer::start(&ns, ms, jitter_ms, seed)?;
                    self.delayers.insert(ia, delayer);
                }
                None => {
                    return Err(ChaosError::Invalid(
                        "no delay on this kernel: neither tc netem nor iptables NFQUEUE".into(),
                    ));
                }
            },
            LinkFault::Slow { kbit, latency_ms } => {
                let (rate, latency) = (format!("{kbit}kbit"), format!("{latency_ms}ms"));
                in_namespace(
                    &ns,
                    "tc",
                    &[
                        "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst",
                        "32kb", "latency", &latency,
                    ],
                )?;
            }
            // nftables rather than netem: the same effect on kernels built without netem.
            LinkFault::Loss { percent } => nft_script(
                &ns,
                &format!(
                    "table inet chaos_link {{ chain output {{ type filter hook output priority 0; policy accept; numgen random mod 100 < {percent} drop; }}\n}}\n"
                ),
            )?,
            LinkFault::Duplicate { percent } => nft_script(
                &ns,
                &format!(
                    "table ip chaos_link {{ chain output {{ type filter hook output priority 0; policy accept; numgen random mod 100 < {percent} dup to ip daddr device \"eth0\"; }}\n}}\n"
                ),
            )?,
        }
        self.degraded.insert(ia, fault);
        Ok(())
    }

    /// How this kernel can delay packets: netem if it has it, else NFQUEUE with the legacy
    /// iptables (CI's Firecracker guest kernels have neither netem nor nftables's `queue`);
    /// `None` without either. Probed once, in the first host's namespace.
    pub fn delay_method(&mut self) -> Option<DelayMethod> {
        if let Some(method) = self.delay_method {
            return method;
        }
        let method = self.hosts.first().and_then(|host| {
            let ns = &host.namespace;
            let netem = ["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"];
            if in_namespace(ns, "tc", &netem).is_ok() {
                let _ = in_namespace(ns, "tc", &["qdisc", "del", "dev", "lo", "root"]);
                return Some(DelayMethod::Netem);
            }
            if crate::delay::available(ns) {
                return Some(DelayMethod::Nfqueue);
            }
            None
        });
        self.delay_method = Some(method);
        method
    }

    /// Removes every cut and every degraded link.
    ///
    /// # Errors
    /// `nft` or `tc` refused (the namespace is gone, for example).
    pub fn heal(&mut self) -> Result<(), ChaosError> {
        let cut_hosts: BTreeSet<usize> = self.cuts.iter().map(|(h, _)| *h).collect();
        for host in cut_hosts {
            in_namespace(
                &self.hosts[host].namespace,
                "nft",
                &["flush", "set", "inet", "chaos", "cut"],
            )?;
        }
        self.cuts.clear();
        for (host, fault) in std::mem::take(&mut self.degraded) {
            let ns = &self.hosts[host].namespace;
            if let Some(delayer) = self.delayers.remove(&host) {
                let delayed = delayer.stop()?;
                tracing::info!(host = %self.hosts[host].name, delayed, "delay healed");
                continue;
            }
            match fault {
                LinkFault::Delay { .. } | LinkFault::Slow { .. } => {
                    in_namespace(ns, "tc", &["qdisc", "del", "dev", "eth0", "root"])?
                }
                LinkFault::Loss { .. } => {
                    in_namespace(ns, "nft", &["delete", "table", "inet", "chaos_link"])?
                }
                LinkFault::Duplicate { .. } => {
                    in_namespace(ns, "nft", &["delete", "table", "ip", "chaos_link"])?
                }
            };
        }
        Ok(())
    }

    /// Whether any cut or discipline is in place.
    pub fn is_faulty(&self) -> bool {
        !self.cuts.is_empty() || !self.degraded.is_empty()
    }

    /// Removes the run's namespaces and links (processes inside must have been stopped first:
    /// a namespace lives on while a process holds it).
    pub fn teardown(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        // Each removes its rule and lets go of what it holds before its namespace goes.
        self.delayers.clear();
        for host in &self.hosts {
            let _ = sh("ip", &["netns", "del", &host.namespace]);
        }
        let _ = sh("ip", &["link", "del", &format!("sgc{}", self.run)]);
        let _ = sh("ip", &["netns", "del", &self.hub()]);
    }

    /// Removes what runs that no longer exist left behind: namespaces `sgc-R-*` and links
    /// `sgcR` whose process `R` is gone. Returns how many namespaces were removed.
    pub fn sweep() -> usize {
        let Ok(listing) = sh("ip", &["netns", "list"]) else {
            return 0;
        };
        let mut removed = 0;
        for line in listing.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(run) = name
                .strip_prefix("sgc-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|r| r.parse::<u32>().ok())
            else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{run}")).exists() {
                continue;
            }
            if sh("ip", &["netns", "del", name]).is_ok() {
                removed += 1;
            }
            let _ = sh("ip", &["link", "del", &format!("sgc{run}")]);
        }
        removed
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A `10.S.0.0/24` no address of this namespace is in, starting from one derived from `run`:
/// two runs at once (two test processes) get different subnets.
fn free_subnet(run: u32) -> Result<u8, ChaosError> {
    for i in 0..150u32 {
        let subnet = 100 + ((run + i) % 150) as u8;
        let prefix = format!("10.{subnet}.0.0/24");
        if sh("ip", &["-o", "addr", "show", "to", &prefix])?
            .trim()
            .is_empty()
        {
            return Ok(subnet);
        }
    }
    Err(ChaosError::Invalid(
        "no free subnet in 10.100.0.0-10.249.0.0 for the run's bridge".into(),
    ))
}

/// Feeds an nft script to `nft -f -` inside a namespace.
fn nft_script(namespace: &str, script: &str) -> Result<(), ChaosError> {
    use std::io::Write;
    let command = format!("ip netns exec {namespace} nft -f -");
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ChaosError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| ChaosError::Command {
                command: command.clone(),
                message: e.to_string(),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| ChaosError::Command {
        command: command.clone(),
        message: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(ChaosError::Command {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
