//! `agentry-server`: parses configuration and calls [`agentry_server::serve`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use agentry_server::admin::store as admin;
use agentry_server::audit::Actor;
use agentry_server::config::{
    Command, Config, KeysCommand, LogFormat, MigrateMode, RoleArg, TenantsCommand,
};
use agentry_server::db;
use agentry_server::pb::Role;
use clap::Parser;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
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
    // Colour codes only for a person at a terminal: in a file or a log
    // collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let target = db::Target {
        url: &config.database_url,
        direct_url: config.direct_database_url.as_deref(),
        pool_size: config.db_pool_size,
    };
    let database = async |mode: MigrateMode| {
        db::connect_to(&target, mode)
            .await
            .map_err(|e| e.to_string())
    };
    match config.command {
        None => {
            let mut serve = config.serve.clone();
            agentry_server::connections::fit_open_files(&mut serve.connections);
            let connected = database(config.migrate).await?;
            let addr = config.serve.listen_addr;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}. Choose another --listen-addr / AGENTRY_LISTEN_ADDR"))?;
            agentry_server::Server::new(connected.pool, serve)
                .with_feed_pool(connected.direct)
                .run(listener, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Some(Command::Migrate) => {
            let connected = database(MigrateMode::Auto).await?;
            for m in &connected.applied {
                println!("applied {} {}", m.version, m.description);
            }
            println!(
                "schema up to date: {} migration(s) applied now, {} known to this binary",
                connected.applied.len(),
                db::MIGRATOR.iter().count()
            );
            Ok(())
        }
        Some(Command::Health {
            addr,
            service,
            timeout,
            tls_ca,
            tls_domain,
        }) => {
            let addr = addr.unwrap_or_else(|| local(config.serve.listen_addr).to_string());
            let tls = match tls_ca {
                Some(path) => {
                    let ca = std::fs::read(&path)
                        .map_err(|e| format!("cannot read --tls-ca {}: {e}", path.display()))?;
                    Some(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                            .domain_name(tls_domain),
                    )
                }
                None if config.serve.tls.tls_cert.is_some() => {
                    return Err(
                        "the server speaks TLS (--tls-cert is set): pass --tls-ca with the CA of its certificate"
                            .into(),
                    );
                }
                None => None,
            };
            health(&addr, &service, timeout, tls).await
        }
        Some(Command::Keys {
            command:
                KeysCommand::Create {
                    role,
                    tenant,
                    description,
                },
        }) => {
            let pool = database(config.migrate).await?.pool;
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
            let (key, secret) =
                admin::create_key(&pool, &Actor::OPERATOR, role, tenant, &description)
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
            let pool = database(config.migrate).await?.pool;
            let tenant = admin::create_tenant(&pool, &Actor::OPERATOR, &name)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("created tenant {}", tenant.name);
            println!("{}", tenant.id);
            Ok(())
        }
    }
}

/// Where `health` asks by default: the listen address, on loopback when
/// the server listens on every address.
fn local(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(ip, listen.port())
}

/// `agentry-server health`: prints the status; SERVING is the only success.
async fn health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("invalid --addr {addr}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach {addr}: {}", chain(&e)))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => {
                    println!("{}", ServingStatus::ServiceUnknown.as_str_name());
                    format!("{addr} does not know the health name {service:?}")
                }
                code => format!("{addr} answered {code:?}: {}", status.message()),
            })
    };
    let response = tokio::time::timeout(timeout, call).await.map_err(|_| {
        format!(
            "no answer from {addr} within {}",
            humantime::format_duration(timeout)
        )
    })??;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{addr} is {}", other.as_str_name())),
    }
}

/// An error and its causes, for one line: tonic's own text is only "transport error".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
