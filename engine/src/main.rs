//! `shardchat`: the command line.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use shardchat::config::{Config, ServeArgs};

/// jemalloc, for density: at 15,000 idle connections (about 1.55 KiB of live heap each) RSS grew
/// 1.9 KiB a connection with jemalloc against 2.3 KiB with glibc malloc, whose free chunks left
/// between long-lived connection state by the handshake's short-lived buffers stay resident.
/// Its background thread is on (the `background_threads` feature): it returns freed pages to the
/// kernel on jemalloc's decay schedule (10 s) even when nothing allocates, so the memory that
/// parked connections give back (their tasks, ~1 KiB each) leaves the RSS of an idle engine too.
/// Without it, 15,000 parked connections kept 2.0 KiB of RSS each; with it, 0.95 KiB.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "shardchat", version, about = "A thread-per-core WebSocket chat engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine: shards on every core, WebSocket on --listen, embedded storage in --data-dir.
    Serve(Box<ServeArgs>),
    /// Apply the ScyllaDB schema (storage/scylla/schema.cql): creates the keyspace and tables if absent.
    /// Safe to run again. Run it once before the first `serve --store scylla://…`.
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The cluster: scylla://HOST[:PORT][,HOST…]/KEYSPACE
    #[arg(long, value_name = "URI")]
    scylla: String,
    /// Replicas of every row (SimpleStrategy); 3 for a production cluster.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
}

fn migrate(args: MigrateArgs) -> Result<(), String> {
    let cfg = shardchat_storage_scylla::ScyllaConfig::from_uri(&args.scylla)?;
    if args.replication_factor == 0 {
        return Err("--replication-factor must be at least 1".into());
    }
    let n = shardchat_storage_scylla::ScyllaStore::migrate(&cfg, args.replication_factor)
        .map_err(|e| format!("migrate {}: {e}", args.scylla))?;
    println!("schema applied to keyspace {} ({n} statements, replication factor {})", cfg.keyspace, args.replication_factor);
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()))
        .with_target(false)
        // Colour only for a person at a terminal: escape codes in a file or a log collector are
        // noise (and NO_COLOR, https://no-color.org, turns them off at a terminal too).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .init();
    // `serve --help` shows each setting's default, taken from the defaults themselves.
    let matches = Cli::command().mut_subcommand("serve", ServeArgs::show_defaults).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.cmd {
        Cmd::Serve(args) => Config::load(&args).and_then(shardchat::runtime::serve),
        Cmd::Migrate(args) => migrate(args),
    };
    if let Err(e) = result {
        tracing::error!("{e}");
        eprintln!("shardchat: {e}");
        std::process::exit(1);
    }
}
