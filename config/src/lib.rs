//! Typed configuration for every scoregrid process: TOML, overridden by `SCOREGRID_*`
//! environment variables, filled with documented defaults, then validated once.
//!
//! Resolution order (later wins): built-in defaults, the TOML file, the environment. The
//! environment variable for key `key` of section `[section]` is `SCOREGRID_SECTION_KEY` in upper
//! case, for example `SCOREGRID_HTTP_ADDR=0.0.0.0:8080` or `SCOREGRID_SCORING_W_POOL=0.5`.
//! Unknown keys, in the file or as `SCOREGRID_*` variables, are refused: a typo must not
//! silently fall back to a default.
//!
//! # Layout
//! - [`Config`]: one section per concern ([`sections`]: the keys, their defaults and what each
//!   bounds).
//! - [`Config::load`] / [`Config::from_toml_str`]: parsing and environment overrides.
//! - [`Config::validate`]: the cross-key rules, with messages that name the key.

mod overrides;
mod sections;

pub use sections::*;

use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: `{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

/// Every key of every process. Each process reads the sections it needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub scoring: ScoringConfig,
    pub api: ApiConfig,
    pub router: RouterConfig,
    pub placement: PlacementConfig,
    pub model: ModelConfig,
    pub load: LoadConfig,
    pub demo: DemoConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    pub node: NodeConfig,
    pub raft: RaftConfig,
    pub tls: TlsConfig,
    pub transport: TransportConfig,
}

impl Config {
    /// Reads `path` (or only defaults when `None`), applies the environment, validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the variable or the key at fault.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::from_toml_str(&text, &origin, std::env::vars())
    }

    /// Parses `text`, applies the `SCOREGRID_*` entries of `env`, validates.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        overrides::apply_env(&mut table, env)?;
        let config: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML, every key with its value: `scoregrid config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// # Errors
    /// `ConfigError::Invalid` naming the first key whose value is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if !self.scoring.w_affinity.is_finite() {
            return invalid("scoring.w_affinity", "must be a finite number");
        }
        if !self.scoring.w_pool.is_finite() {
            return invalid("scoring.w_pool", "must be a finite number");
        }
        let api = &self.api;
        if !(1..=100_000).contains(&api.limit_max) {
            return invalid("api.limit_max", "must be in 1..=100000");
        }
        if !(1..=api.limit_max).contains(&api.limit_default) {
            return invalid("api.limit_default", "must be in 1..=api.limit_max");
        }
        if api.candidates_max == 0 {
            return invalid("api.candidates_max", "must be at least 1");
        }
        if !(1..=1_000_000).contains(&api.score_products_max) {
            return invalid("api.score_products_max", "must be in 1..=1000000");
        }
        if api.categories_k_max == 0 {
            return invalid("api.categories_k_max", "must be at least 1");
        }
        if !(1..=api.categories_k_max).contains(&api.categories_k_default) {
            return invalid(
                "api.categories_k_default",
                "must be in 1..=api.categories_k_max",
            );
        }
        let load = &self.load;
        if !(1..=64).contains(&load.parallelism) {
            return invalid("load.parallelism", "must be in 1..=64");
        }
        if !(4096..=4 * 1024 * 1024).contains(&load.chunk_bytes) {
            return invalid("load.chunk_bytes", "must be in 4096..=4194304");
        }
        if !(1..=100).contains(&load.rounds) {
            return invalid("load.rounds", "must be in 1..=100");
        }
        if self.http.request_body_bytes_max < 1024 {
            return invalid("http.request_body_bytes_max", "must be at least 1024");
        }
        if self.http.requests_in_flight_max == 0 {
            return invalid("http.requests_in_flight_max", "must be at least 1");
        }
        for (key, value) in [
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            ("http.queue_standing_ms", self.http.queue_standing_ms),
            (
                "http.queue_wait_overloaded_ms",
                self.http.queue_wait_overloaded_ms,
            ),
            (
                "http.body_min_bytes_per_second",
                self.http.body_min_bytes_per_second,
            ),
            ("http.connections_max", self.http.connections_max as u64),
            (
                "http.connections_per_client_max",
                self.http.connections_per_client_max as u64,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be above zero");
            }
        }
        if !(1..=600_000).contains(&self.router.request_deadline_ms) {
            return invalid("router.request_deadline_ms", "must be in 1..=600000");
        }
        let p = &self.placement;
        if !(1..=65_536).contains(&p.partitions) {
            return invalid("placement.partitions", "must be in 1..=65536");
        }
        if !(1..=16).contains(&p.replication_factor) {
            return invalid("placement.replication_factor", "must be in 1..=16");
        }
        if !(1..=4096).contains(&p.virtual_nodes) {
            return invalid("placement.virtual_nodes", "must be in 1..=4096");
        }
        if !(1..=65_536).contains(&self.model.segment_products_max) {
            return invalid("model.segment_products_max", "must be in 1..=65536");
        }
        let r = &self.router;
        if r.hedge_delay_min_ms == 0 || r.hedge_delay_min_ms > r.hedge_delay_max_ms {
            return invalid(
                "router.hedge_delay_min_ms",
                "must be in 1..=router.hedge_delay_max_ms",
            );
        }
        if r.breaker_failures == 0 {
            return invalid("router.breaker_failures", "must be at least 1");
        }
        if !(1..=600_000).contains(&r.breaker_open_ms) {
            return invalid("router.breaker_open_ms", "must be in 1..=600000");
        }
        if r.breaker_late_ms > 600_000 {
            return invalid("router.breaker_late_ms", "must be at most 600000");
        }
        if r.hedge_budget_percent > 100 {
            return invalid("router.hedge_budget_percent", "must be in 0..=100");
        }
        if !(10..=600_000).contains(&r.refresh_interval_ms) {
            return invalid("router.refresh_interval_ms", "must be in 10..=600000");
        }
        let t = &self.transport;
        if !(1 << 16..=1 << 30).contains(&t.frame_bytes_max) {
            return invalid("transport.frame_bytes_max", "must be in 65536..=1073741824");
        }
        if t.connect_timeout_ms == 0 || t.request_timeout_ms == 0 {
            return invalid(
                "transport.connect_timeout_ms",
                "timeouts must be at least 1 ms",
            );
        }
        if t.keep_alive_ms == 0 || t.keep_alive_ms >= t.idle_timeout_ms {
            return invalid(
                "transport.keep_alive_ms",
                "must be at least 1 and below transport.idle_timeout_ms",
            );
        }
        if !(1..=100_000).contains(&t.streams_max) {
            return invalid("transport.streams_max", "must be in 1..=100000");
        }
        self.validate_members()?;
        self.validate_raft()?;
        if self.admin_addr().is_err() {
            return invalid(
                "node.admin_addr",
                "must be empty or an address like 127.0.0.2:9100",
            );
        }
        if !(-20..=19).contains(&self.node.staging_nice) {
            return invalid("node.staging_nice", "must be in -20..=19");
        }
        if !(100..=60_000).contains(&self.router.watch_wait_ms) {
            return invalid("router.watch_wait_ms", "must be in 100..=60000");
        }
        let d = &self.demo;
        if !(1..=64).contains(&d.nodes) {
            return invalid("demo.nodes", "must be in 1..=64");
        }
        if !(1..=1024).contains(&d.dim) {
            return invalid("demo.dim", "must be in 1..=1024");
        }
        if d.products == 0 || d.containers == 0 {
            return invalid(
                "demo.products",
                "demo.products and demo.containers must be at least 1",
            );
        }
        Ok(())
    }

    fn validate_members(&self) -> Result<(), ConfigError> {
        let nodes = &self.cluster.nodes;
        for (i, a) in nodes.iter().enumerate() {
            if a.name.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "cluster.nodes",
                    message: format!("node {} has an empty name", a.id),
                });
            }
            if let Some(b) = nodes[..i].iter().find(|b| b.id == a.id || b.addr == a.addr) {
                return Err(ConfigError::Invalid {
                    key: "cluster.nodes",
                    message: format!("nodes {} and {} share an id or an address", b.id, a.id),
                });
            }
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let r = &self.raft;
        if !(10..=10_000).contains(&r.heartbeat_ms) {
            return invalid("raft.heartbeat_ms", "must be in 10..=10000".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return invalid(
                "raft.election_timeout_min_ms",
                "must be above raft.heartbeat_ms".into(),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return invalid(
                "raft.election_timeout_max_ms",
                "must be above raft.election_timeout_min_ms".into(),
            );
        }
        for (key, value) in [
            ("raft.down_after_ms", r.down_after_ms),
            ("raft.up_after_ms", r.up_after_ms),
            ("raft.stale_after_ms", r.stale_after_ms),
        ] {
            if value < 2 * r.heartbeat_ms {
                return invalid(key, "must be at least twice raft.heartbeat_ms".into());
            }
        }
        if !(100..=600_000).contains(&r.client_timeout_ms) {
            return invalid("raft.client_timeout_ms", "must be in 100..=600000".into());
        }
        if r.snapshot_logs == 0 {
            return invalid("raft.snapshot_logs", "must be at least 1".into());
        }
        if r.voters.len() > 7 {
            return invalid("raft.voters", "at most 7 voters".into());
        }
        for (i, v) in r.voters.iter().enumerate() {
            if r.voters[..i].contains(v) {
                return invalid("raft.voters", format!("{v} is listed twice"));
            }
            if !self.cluster.nodes.is_empty() && !self.cluster.nodes.iter().any(|m| m.id == *v) {
                return invalid("raft.voters", format!("{v} is not one of cluster.nodes"));
            }
        }
        Ok(())
    }

    /// `node.admin_addr`, if one is set.
    ///
    /// # Errors
    /// When it is set and is not a socket address.
    pub fn admin_addr(&self) -> Result<Option<std::net::SocketAddr>, std::net::AddrParseError> {
        match self.node.admin_addr.trim() {
            "" => Ok(None),
            text => text.parse().map(Some),
        }
    }

    /// The Raft voters: `raft.voters`, or the lowest ids of `cluster.nodes` (5 when there are
    /// at least 5, else 3, or all of fewer).
    pub fn voters(&self) -> Vec<u64> {
        if !self.raft.voters.is_empty() {
            let mut voters = self.raft.voters.clone();
            voters.sort_unstable();
            return voters;
        }
        let mut ids: Vec<u64> = self.cluster.nodes.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        let count = if ids.len() >= 5 { 5 } else { ids.len().min(3) };
        ids.truncate(count);
        ids
    }

    /// The member entry of `node.id`, for `scoregrid node`.
    ///
    /// # Errors
    /// When `node.id` is not one of `cluster.nodes`.
    pub fn this_member(&self) -> Result<&MemberConfig, ConfigError> {
        self.cluster
            .nodes
            .iter()
            .find(|m| m.id == self.node.id)
            .ok_or_else(|| ConfigError::Invalid {
                key: "node.id",
                message: format!("{} is not one of cluster.nodes", self.node.id),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.scoring.w_affinity, 1.0);
        assert_eq!(c.placement.replication_factor, 2);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let c = parse(
            "[scoring]\nw_pool = 0.5\n[http]\naddr = \"127.0.0.2:9000\"\n",
            &[
                ("SCOREGRID_SCORING_W_POOL", "0.25"),
                ("SCOREGRID_DEMO_NODES", "5"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.scoring.w_pool, 0.25);
        assert_eq!(c.http.addr.to_string(), "127.0.0.2:9000");
        assert_eq!(c.demo.nodes, 5);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = parse("[scoring]\nw_pol = 0.5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("w_pol"), "{e}");
        let e = parse("[nope]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = parse("", &[("SCOREGRID_SCORING_W_POL", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SCOREGRID_SCORING_W_POL"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("[api]\nlimit_max = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.limit_max"), "{e}");
        let e = parse("", &[("SCOREGRID_DEMO_NODES", "many")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SCOREGRID_DEMO_NODES"), "{e}");
        let e = parse("[scoring]\nw_pool = nan\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("scoring.w_pool"), "{e}");
        let e = parse("[http]\naddr = \"localhost\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("addr"), "{e}");
    }

    #[test]
    fn cluster_members_are_parsed_and_checked() {
        let text = "[node]\nid = 2\n[[cluster.nodes]]\nid = 1\naddr = \"127.0.0.2:7000\"\nname = \"node-1\"\n\
                    [[cluster.nodes]]\nid = 2\naddr = \"127.0.0.3:7000\"\nname = \"node-2\"\n";
        let c = parse(text, &[]).unwrap();
        assert_eq!(c.cluster.nodes.len(), 2);
        assert_eq!(c.this_member().unwrap().name, "node-2");
        let duplicate = text.replace("127.0.0.3", "127.0.0.2");
        let e = parse(&duplicate, &[]).unwrap_err().to_string();
        assert!(e.contains("cluster.nodes") && e.contains("share"), "{e}");
        let e = parse(text, &[("SCOREGRID_CLUSTER_NODES", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be set from the environment"), "{e}");
        let e = parse(&text.replace("id = 2\n[[", "id = 9\n[["), &[])
            .unwrap()
            .this_member()
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.id"), "{e}");
    }

    #[test]
    fn voters_are_derived_or_checked() {
        let nodes: String = (1..=6)
            .map(|i| format!("[[cluster.nodes]]\nid = {i}\naddr = \"127.0.0.{}:7000\"\nname = \"node-{i}\"\n", i + 1))
            .collect();
        let c = parse(&nodes, &[]).unwrap();
        assert_eq!(c.voters(), vec![1, 2, 3, 4, 5]);
        let c = parse(&nodes, &[("SCOREGRID_RAFT_VOTERS", "6,2,4")]).unwrap();
        assert_eq!(c.voters(), vec![2, 4, 6]);
        let e = parse(&nodes, &[("SCOREGRID_RAFT_VOTERS", "1,9")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("raft.voters") && e.contains("9"), "{e}");
        let e = parse(&format!("[raft]\nheartbeat_ms = 600\n{nodes}"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("raft.election_timeout_min_ms"), "{e}");
        let three: String = nodes
            .split("[[cluster.nodes]]")
            .take(4)
            .collect::<Vec<_>>()
            .join("[[cluster.nodes]]");
        assert_eq!(parse(&three, &[]).unwrap().voters(), vec![1, 2, 3]);
    }

    #[test]
    fn example_configurations_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&text, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 4, "node-1..3 and router examples");
    }

    #[test]
    fn rendered_defaults_parse_back() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml(), &[]).unwrap(), c);
    }
}
