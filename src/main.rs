//! `scoregrid`: the one binary. It parses the command line, builds the configuration and calls
//! one `run` per command; the wiring of crates lives in [`demo`], the only module that knows
//! them all.

mod commands;
mod demo;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    },
    /// Write a synthetic model directory.
    Gen(commands::GenArgs),
    /// Load-test a running router and report rps and latency percentiles.
    Bench(commands::BenchArgs),
    /// Print the effective configuration (defaults, file, environment), every key.
    Config,
}

fn main() -> Result<()> {
    commands::limit_malloc_arenas();
    let cli = Cli::parse();
    let config = scoregrid_config::Config::load(cli.config.as_deref())?;
    commands::init_logging(&config.log.filter)?;
    match cli.command {
        Command::Demo { model, nodes, http } => {
            let mut config = config;
            if let Some(n) = nodes {
                config.demo.nodes = n;
            }
            if let Some(addr) = http {
                config.http.addr = addr;
            }
            config.validate()?;
            commands::runtime()?.block_on(demo::run(config, model))
        }
        Command::Gen(args) => commands::gen_model(args),
        Command::Bench(args) => commands::runtime()?.block_on(commands::bench(args)),
        Command::Config => commands::print_line(config.to_toml().trim_end()),
    }
}
