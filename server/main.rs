//! `agentry-server`: parses configuration and calls [`agentry_server::serve`].

use std::process::ExitCode;

use agentry_server::admin::store as admin;
use agentry_server::config::{Command, Config, KeysCommand, LogFormat, RoleArg, TenantsCommand};
use agentry_server::db;
use agentry_server::pb::Role;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    init_logging(&config);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agentry-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("agentry-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let pool = db::connect_and_migrate(&config.database_url, config.db_pool_size)
        .await
        .map_err(|e| e.to_string())?;
    match config.command {
        None => {
            let addr = config.serve.listen_addr;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}. Choose another --listen-addr / AGENTRY_LISTEN_ADDR"))?;
            agentry_server::serve(listener, pool, config.serve, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Some(Command::Keys {
            command:
                KeysCommand::Create {
                    role,
                    tenant,
                    description,
                },
        }) => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Tenant => Role::Tenant,
                RoleArg::Agent => Role::Agent,
            };
            let tenant = match (role, tenant) {
                (Role::Admin, None) => None,
                (Role::Admin, Some(_)) => {
                    return Err("admin keys belong to no tenant: drop --tenant".into());
                }
                (_, None) => return Err("tenant and agent keys need --tenant <name or id>".into()),
                (_, Some(t)) => Some(
                    admin::find_tenant(&pool, &t)
                        .await
                        .map_err(|e| format!("{e}: {t}"))?
                        .id,
                ),
            };
            let (key, secret) = admin::create_key(&pool, role, tenant, &description)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "created {} key {} (shown once; store it now)",
                role.db_name().unwrap_or_default(),
                key.id
            );
            println!("{secret}");
            Ok(())
        }
        Some(Command::Tenants {
            command: TenantsCommand::Create { name },
        }) => {
            let tenant = admin::create_tenant(&pool, &name)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("created tenant {}", tenant.name);
            println!("{}", tenant.id);
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
