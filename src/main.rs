//! `scoregrid`: the one binary. It parses the command line, builds the configuration and calls
//! one `run` per command; the wiring of crates lives in [`demo`], the only module that knows
//! them all.

mod admin;
mod alloc;
mod chaos;
mod cluster_local;
mod commands;
mod demo;
mod operate;
mod push;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "scoregrid",
    version,
    about = "A distributed, sharded, in-memory scoring grid for real-time recommendations"
)]
struct Cli {
    /// Configuration file (TOML). Every key has a default; SCOREGRID_<SECTION>_<KEY> overrides.
    #[arg(long, global = true, env = "SCOREGRID_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run nodes and a router in one process on a model (synthetic unless --model) and serve
    /// the HTTP API.
    Demo {
        /// A model directory (contract section 1); without it a synthetic model is generated.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Data nodes (default: demo.nodes, 3).
        #[arg(long)]
        nodes: Option<u32>,
        /// HTTP listen address (default: http.addr, 127.0.0.1:8080).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Let the router call the nodes' code directly instead of over QUIC (no network, no
        /// TLS: the cost of the scoring itself, as when scoregrid is embedded).
        #[arg(long)]
        in_process: bool,
    },
    /// Write a synthetic model directory.
    Gen(commands::GenArgs),
    /// Load-test a running router and report rps and latency percentiles.
    Bench(commands::BenchArgs),
    /// Print the effective configuration (defaults, file, environment), every key.
    Config,
    /// Create the cluster CA and issue certificates for nodes, routers and loaders.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run a data node (`[node]`, `[cluster]`, `[raft]`, `[tls]` of the configuration) and its
    /// Raft member.
    Node {
        /// Join a running cluster through the node at this QUIC address (this node starts in
        /// state joining and holds no partitions until the rebalancing gives it some).
        #[arg(long)]
        join: Option<SocketAddr>,
    },
    /// Run a router: the HTTP API in front of the cluster, following its map.
    Router,
    /// Operate a cluster: status, maintenance, removal, initialisation; or run one locally.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The model versions of the cluster map.
    #[command(subcommand)]
    Model(ModelCommand),
    /// The chaos harness: faults against a real cluster in network namespaces, a checked history.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Push a model version into the running cluster: register it in the map, stage it on every
    /// replica, verify every copy, then activate it cluster-wide in one committed change.
    Load {
        /// The model directory (contract section 1).
        #[arg(long, required_unless_present = "source", conflicts_with = "source")]
        model: Option<PathBuf>,
        /// Instead of a directory: `scylla://HOST:PORT[,HOST:PORT]/KEYSPACE` (the four tables
        /// of README "Nightly loads"; needs a build with `--features scylla`).
        #[arg(long)]
        source: Option<String>,
        /// Any node's QUIC address (default: the nodes of `[cluster]`).
        #[arg(long)]
        cluster: Option<SocketAddr>,
        /// Stage and verify only; `scoregrid model activate V` flips it later.
        #[arg(long)]
        no_activate: bool,
        /// Partition copies in flight to each node (default: `load.parallelism`).
        #[arg(long)]
        parallelism: Option<u32>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// The versions the map knows and their states.
    List {
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
    /// Make a registered version the active one cluster-wide (a rollback to a retained one).
    Activate {
        version: String,
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
    /// Remove a staging or retired version from the map; nodes delete it from RAM and disk.
    Drop {
        version: String,
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
    /// How many retired versions the cluster keeps for rollback and open cursors.
    Retain {
        versions: u32,
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the cluster CA (`ca.pem`, `ca.key`) in DIR; refuses to replace an existing one.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue `NAME.pem` and `NAME.key`, signed by the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The name peers will check (a node's `cluster.nodes[].name`).
        #[arg(long)]
        name: String,
        /// Extra subject alternative names: DNS names or IP addresses.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// What the certificate allows: node, router, loader or operator (default: from the
        /// name: router*, loader*, operator*/client* get those roles, any other name is a node).
        #[arg(long, value_parser = scoregrid_wire::Role::parse)]
        role: Option<scoregrid_wire::Role>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// N node processes and a router on loopback (127.0.0.x), certificates in a temporary
    /// directory, the model loaded; stops them all on Ctrl-C or SIGTERM.
    Local(cluster_local::LocalArgs),
    /// The cluster map as a node knows it: leader, term, epoch, contact with a quorum, nodes,
    /// versions. Exit code 3 when that node has no contact with a quorum.
    Status {
        /// Ask this node for its own view (even when it is cut off).
        #[arg(long)]
        node: Option<SocketAddr>,
        /// Any node's QUIC address (default: the nodes of `[cluster]`).
        #[arg(long)]
        cluster: Option<SocketAddr>,
        /// Print the status as JSON with the field names of `/v1/cluster`.
        #[arg(long)]
        json: bool,
    },
    /// Planned work on a node: in maintenance it is never marked down and nothing is moved.
    Maintenance {
        id: u64,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
    /// Remove a node (not a voter) from the map; partitions it held get a new replica.
    Remove {
        id: u64,
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
    /// Initialise a new cluster now with the voters of the configuration, without waiting for
    /// every voter to answer (a no-op on an initialised cluster).
    Init {
        #[arg(long)]
        cluster: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    alloc::purge_at_once();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // Operators' scripts read the code: 3 when no quorum could be reached, else 1.
            let code = error
                .downcast_ref::<operate::CodedError>()
                .map_or(1, |coded| coded.code);
            ExitCode::from(code)
        }
    }
}

fn run() -> Result<()> {
    commands::limit_malloc_arenas();
    let cli = Cli::parse();
    let config = scoregrid_config::Config::load(cli.config.as_deref())?;
    commands::init_logging(&config.log.filter)?;
    match cli.command {
        Command::Demo {
            model,
            nodes,
            http,
            in_process,
        } => {
            let mut config = config;
            if let Some(n) = nodes {
                config.demo.nodes = n;
            }
            if let Some(addr) = http {
                config.http.addr = addr;
            }
            config.validate()?;
            commands::runtime()?.block_on(demo::run(config, model, in_process))
        }
        Command::Gen(args) => commands::gen_model(args),
        Command::Bench(args) => commands::runtime()?.block_on(commands::bench(args)),
        Command::Config => commands::print_line(config.to_toml().trim_end()),
        Command::Certs(CertsCommand::Init { dir }) => {
            scoregrid_wire::init_ca(&dir)?;
            commands::print_line(&format!("cluster CA written to {}", dir.display()))
        }
        Command::Certs(CertsCommand::Issue {
            dir,
            name,
            sans,
            role,
        }) => {
            let role = role.unwrap_or_else(|| scoregrid_wire::Role::for_name(&name));
            scoregrid_wire::issue_to_dir(&dir, &name, role, &sans)?;
            commands::print_line(&format!(
                "{name}.pem and {name}.key (role {role}) written to {}",
                dir.display()
            ))
        }
        Command::Node { join } => commands::runtime()?.block_on(async {
            let shutdown = commands::Shutdown::on_signals();
            serve::run_node(config, join, shutdown.wait()).await
        }),
        Command::Router => commands::runtime()?.block_on(async {
            let shutdown = commands::Shutdown::on_signals();
            serve::run_router(config, shutdown).await
        }),
        Command::Cluster(ClusterCommand::Local(args)) => {
            commands::runtime()?.block_on(cluster_local::run(config, args))
        }
        Command::Cluster(ClusterCommand::Status {
            node,
            cluster,
            json,
        }) => commands::runtime()?.block_on(operate::status(&config, node, cluster, json)),
        Command::Cluster(ClusterCommand::Maintenance { id, state, cluster }) => {
            commands::runtime()?.block_on(operate::maintenance(&config, cluster, id, state == "on"))
        }
        Command::Cluster(ClusterCommand::Remove { id, cluster }) => {
            commands::runtime()?.block_on(operate::remove(&config, cluster, id))
        }
        Command::Cluster(ClusterCommand::Init { cluster }) => {
            commands::runtime()?.block_on(operate::init(&config, cluster))
        }
        Command::Model(ModelCommand::List { cluster }) => {
            commands::runtime()?.block_on(operate::model_list(&config, cluster))
        }
        Command::Model(ModelCommand::Activate { version, cluster }) => {
            commands::runtime()?.block_on(operate::model_activate(&config, cluster, &version))
        }
        Command::Model(ModelCommand::Drop { version, cluster }) => {
            commands::runtime()?.block_on(operate::model_drop(&config, cluster, &version))
        }
        Command::Model(ModelCommand::Retain { versions, cluster }) => {
            commands::runtime()?.block_on(operate::model_retain(&config, cluster, versions))
        }
        Command::Chaos(command) => chaos::run(config, command),
        Command::Load {
            model,
            source,
            cluster,
            no_activate,
            parallelism,
        } => {
            let model = match (model, source) {
                (Some(dir), _) => push::ModelSource::Folder(dir),
                (None, Some(uri)) => push::ModelSource::Scylla(uri),
                (None, None) => anyhow::bail!("give --model DIR or --source scylla://..."),
            };
            let mut config = config;
            if let Some(n) = parallelism {
                config.load.parallelism = n;
                config.validate()?;
            }
            commands::runtime()?.block_on(push::load(config, model, cluster, !no_activate))
        }
    }
}
