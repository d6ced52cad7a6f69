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
//! - [`Config`] and its sections: the keys, their defaults and what each bounds.
//! - [`Config::load`] / [`Config::from_toml_str`]: parsing and environment overrides.
//! - [`Config::validate`]: the cross-key rules, with messages that name the key.

mod overrides;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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
    pub demo: DemoConfig,
    pub log: LogConfig,
}

/// The router's HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    pub addr: SocketAddr,
    /// Largest request body accepted (`POST /v1/score`); larger bodies get 413.
    pub request_body_bytes_max: usize,
    /// Requests served at once; a request beyond it is answered 503 `overloaded` at once
    /// rather than queued, so a burst cannot build an unbounded backlog.
    pub requests_in_flight_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_body_bytes_max: 1 << 20,
            requests_in_flight_max: 4096,
        }
    }
}

/// The weights of the scoring rule (contract section 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Weight of the customer's affinity for the product's category.
    pub w_affinity: f32,
    /// Weight of the product's pool score in the container.
    pub w_pool: f32,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            w_affinity: 1.0,
            w_pool: 1.0,
        }
    }
}

/// Bounds of the public API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Items per page when the request gives no `limit`.
    pub limit_default: u32,
    /// Largest `limit` accepted (the contract's 1..=1000); larger is a 400.
    pub limit_max: u32,
    /// Largest `candidates` accepted; larger is a 400.
    pub candidates_max: u64,
    /// Products accepted in one `POST /v1/score` call; more is a 400.
    pub score_products_max: usize,
    /// `k` of `/v1/customers/{id}/categories` when none is given.
    pub categories_k_default: u32,
    /// Largest `k` accepted there.
    pub categories_k_max: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            limit_default: 20,
            limit_max: 1000,
            candidates_max: 10_000_000,
            score_products_max: 10_000,
            categories_k_default: 10,
            categories_k_max: 1000,
        }
    }
}

/// How the router calls nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Deadline of a whole request; a node that has not answered by then is reported in
    /// `coverage` rather than waited for.
    pub request_deadline_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            request_deadline_ms: 1000,
        }
    }
}

/// How keys map to partitions and partitions to nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// Logical partitions `P`. Changing it re-shuffles every key: fixed for a cluster's life.
    pub partitions: u32,
    /// Replicas of every partition, on distinct nodes.
    pub replication_factor: u32,
    /// Points per node on the consistent-hash ring: fewer leave some nodes overloaded.
    pub virtual_nodes: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            partitions: 1024,
            replication_factor: 2,
            virtual_nodes: 256,
        }
    }
}

/// How a model is cut up when it is loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Largest number of products in one pool segment (`S`): a bigger pool is cut into several
    /// segments, scored in parallel on several nodes.
    pub segment_products_max: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            segment_products_max: 4096,
        }
    }
}

/// `scoregrid demo`: the in-process cluster and its synthetic model (when no `--model`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Data nodes in the demo.
    pub nodes: u32,
    pub customers: u64,
    pub products: u64,
    pub containers: u64,
    pub dim: u32,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            customers: 100_000,
            products: 20_000,
            containers: 200,
            dim: 64,
            seed: 42,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or per-target levels (`warn,scoregrid_router=debug`).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
        }
    }
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
        if self.http.request_body_bytes_max < 1024 {
            return invalid("http.request_body_bytes_max", "must be at least 1024");
        }
        if self.http.requests_in_flight_max == 0 {
            return invalid("http.requests_in_flight_max", "must be at least 1");
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
    fn rendered_defaults_parse_back() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml(), &[]).unwrap(), c);
    }
}
