//! The `keyway` command: parses arguments, sets up logging, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use keyway::config::Config;
use keyway::routing::{key_slot, HashTag, SlotTable};

/// jemalloc, configured in `.cargo/config.toml` to hand freed pages back to the OS within about
/// a second (glibc malloc kept tens of MiB after a burst of clients; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Keyway: a sharding proxy for Redis.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Do not watch the config file; reload only on SIGHUP or `PUT /topology`.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a configuration file and exit: 0 if valid, 1 with a message naming the problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print how many slots move, and from which server to which, between two configs.
    Plan {
        /// The running configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The new configuration.
        new: PathBuf,
    },
    /// Print each key's slot and its servers in rendezvous order (replicas first).
    Route {
        #[arg(long, short)]
        config: PathBuf,
        /// Keys to locate.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rereads the config file on every SIGHUP.
async fn reload_on_sighup(
    topology: std::sync::Arc<keyway::topology::TopologyHandle>,
    path: PathBuf,
    running: Config,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP");
        return;
    };
    while hup.recv().await.is_some() {
        let _ = keyway::topology::reload::reload_file(&topology, &path, &running, "SIGHUP").await;
    }
}

/// Waits for SIGTERM or SIGINT and names it.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: ok ({} servers, replicas {})",
                config.display(),
                c.pool.servers.len(),
                c.pool.replicas
            );
            for warning in c.warnings() {
                println!("warning: {warning}");
            }
            Ok(())
        }
        Command::Plan { config, new } => {
            let old = Config::load(&config)?;
            let next = Config::load(&new)?;
            let changes = keyway::topology::reload::diff(&old.pool, &next.pool)?;
            println!("{}", changes.summary());
            let total = keyway::routing::SLOTS;
            for m in &changes.moves {
                println!(
                    "{:>6} slots ({:5.2}%)  {} -> {}",
                    m.slots,
                    100.0 * m.slots as f64 / total as f64,
                    m.from,
                    m.to
                );
            }
            println!(
                "total: {} of {} slots move ({:.2}%)",
                changes.slots_moved,
                total,
                100.0 * changes.slots_moved as f64 / total as f64
            );
            Ok(())
        }
        Command::Route { config, keys } => {
            let c = Config::load(&config)?;
            let tag = HashTag::parse(&c.pool.hash_tag)?;
            let mut servers: Vec<_> = c.pool.servers.iter().collect();
            servers.sort_by(|a, b| a.name.cmp(&b.name));
            let ranked: Vec<(&str, f64)> = servers
                .iter()
                .map(|s| (s.name.as_str(), s.weight))
                .collect();
            let table = SlotTable::build(&ranked, ranked.len())?;
            for key in keys {
                let slot = key_slot(key.as_bytes(), tag);
                let names: Vec<&str> = table
                    .ranked(slot)
                    .iter()
                    .filter_map(|&i| servers.get(usize::from(i)).map(|s| s.name.as_str()))
                    .collect();
                let (replicas, rest) = names.split_at(c.pool.replicas.min(names.len()));
                println!(
                    "{key}\tslot {}\treplicas {}\tthen {}",
                    slot.0,
                    replicas.join(","),
                    if rest.is_empty() {
                        "-".to_string()
                    } else {
                        rest.join(",")
                    }
                );
            }
            Ok(())
        }
        Command::Serve { config, no_watch } => {
            let c = Config::load(&config)?;
            for warning in c.warnings() {
                tracing::warn!("{warning}");
            }
            let runtime = if c.threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(c.threads)
                    .enable_all()
                    .build()
            }
            .context("cannot start the runtime")?;
            runtime.block_on(async {
                let running = keyway::server::start(&c).await?;
                tracing::info!(
                    listen = %running.addr,
                    tls_listen = ?running.tls_addr,
                    admin = %running.admin_addr,
                    servers = c.pool.servers.len(),
                    "keyway is serving"
                );
                // Hot reload: the config file (through its directory) and SIGHUP.
                let _watcher = if no_watch {
                    None
                } else {
                    keyway::topology::reload::watch_file(
                        running.shared.topology.clone(),
                        config.clone(),
                        c.clone(),
                    )
                    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or PUT /topology"))
                    .ok()
                };
                tokio::spawn(reload_on_sighup(running.shared.topology.clone(), config.clone(), c.clone()));
                let signal = shutdown_signal().await?;
                tracing::info!(%signal, drain_timeout = ?c.drain_timeout, "draining");
                running.shared.begin_drain();
                tokio::select! {
                    all_gone = running.shared.drained(c.drain_timeout) => {
                        let left = running.shared.clients.load(std::sync::atomic::Ordering::Relaxed);
                        if all_gone {
                            tracing::info!("drained; exiting");
                        } else {
                            tracing::warn!(clients = left, "drain deadline passed; exiting");
                        }
                        Ok(())
                    }
                    second = shutdown_signal() => {
                        let signal = second?;
                        tracing::warn!(%signal, "second signal; exiting at once");
                        std::process::exit(1);
                    }
                }
            })
        }
    }
}
