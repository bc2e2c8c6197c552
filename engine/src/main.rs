//! `shardchat`: the command line.

use clap::{Parser, Subcommand};
use shardchat::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "shardchat", version, about = "A thread-per-core WebSocket chat engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine: shards on every core, WebSocket on --listen, embedded storage in --data-dir.
    Serve(ServeArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(args) => Config::load(&args).and_then(shardchat::runtime::serve),
    };
    if let Err(e) = result {
        tracing::error!("{e}");
        eprintln!("shardchat: {e}");
        std::process::exit(1);
    }
}
