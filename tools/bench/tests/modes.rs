//! The benchmark's fleet mode, run end to end at a small size against the
//! real `agentry-server` binary and against `bare-server`, so that the
//! commands BENCHMARKS.md gives keep working: every agent welcomed, none
//! lost, and every figure printed.
//!
//! The server binary is the one `cargo test --workspace` builds beside this
//! one (the root package's integration tests need it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BASE_URL: &str = "postgres://postgres@127.0.0.1:5432";

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_agentry-bench")
}

fn server_exe() -> PathBuf {
    let exe = PathBuf::from(bench()).with_file_name("agentry-server");
    assert!(
        exe.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        exe.display()
    );
    exe
}

/// A database of its own, dropped at the end.
struct Database {
    name: String,
}

impl Database {
    fn create() -> Database {
        let name = format!(
            "agentry_bench_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_micros()
        );
        psql(&format!("CREATE DATABASE \"{name}\""));
        Database { name }
    }

    fn url(&self) -> String {
        format!("{BASE_URL}/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(statement: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&format!("{BASE_URL}/postgres"))
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut db)
            .await
            .expect(statement);
    });
}

/// A child process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server on `db` and answers it and where it serves gRPC.
fn start_server(db: &Database) -> (Running, SocketAddr) {
    let mut child = Command::new(server_exe())
        .args(["--log-format", "json", "--listen-addr", "127.0.0.1:0"])
        .args(["--heartbeat-interval", "1s", "--replica-lease", "3s"])
        .env("DATABASE_URL", db.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentry-server");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == "serving gRPC"
                && let Some(addr) = json["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.parse::<SocketAddr>().expect("addr"));
            }
        }
    });
    let running = Running(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server serves gRPC");
    (running, addr)
}

fn admin_key(db: &Database) -> String {
    let out = Command::new(server_exe())
        .args([
            "keys",
            "create",
            "--role",
            "admin",
            "--description",
            "bench test",
        ])
        .env("DATABASE_URL", db.url())
        .output()
        .expect("keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Runs the bench with `args`, words separated by spaces.
fn run_bench(args: &str) -> String {
    let out: Output = Command::new(bench())
        .args(args.split_whitespace())
        .output()
        .expect("run agentry-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "agentry-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value after `name: ` in the bench's output.
fn figure<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

#[test]
fn the_fleet_mode_welcomes_every_agent_and_loses_no_end() {
    let db = Database::create();
    let (server, addr) = start_server(&db);
    let key = admin_key(&db);
    let (url, pid) = (format!("http://{addr}"), server.0.id().to_string());
    let db_url = db.url();
    let out = run_bench(&format!(
        "--url {url} --admin-key {key} --database-url {db_url} --server-pid {pid} --threads 1 fleet --agents 300 --per-connection 100 --seconds 2 --load-reports --move-every 1"
    ));
    assert_eq!(figure(&out, "welcomed"), "300");
    assert_eq!(figure(&out, "hellos_failed"), "0");
    assert_eq!(
        figure(&out, "heartbeat_interval_ms"),
        "1000",
        "the server's interval"
    );
    assert_eq!(figure(&out, "ends_lost"), "0");
    for name in [
        "all_welcomed_ms",
        "all_routable_in_db_ms",
        "server_rss_per_agent_kib",
        "steady_cpu_cores",
        "db_transactions_per_sec",
        "db_rows_written_per_sec",
        "all_inactive_ms",
    ] {
        figure(&out, name);
    }
    let acks: f64 = figure(&out, "heartbeats_acked_per_sec")
        .parse()
        .expect("a rate");
    assert!(acks > 0.0, "{out}");
}

#[test]
fn the_fleet_mode_runs_against_bare_tonic() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let bare = Running(
        Command::new(bench())
            .args(["--admin-key", "x", "bare-server", "--listen", &listen])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn bare-server"),
    );
    let url = format!("http://{listen}");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bare-server never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = bare.0.id().to_string();
    let out = run_bench(&format!(
        "--url {url} --admin-key x --server-pid {pid} --threads 1 fleet --agents 200 --seconds 1 --heartbeat-ms 500 --bare"
    ));
    assert_eq!(figure(&out, "welcomed"), "200");
    assert_eq!(figure(&out, "heartbeat_interval_ms"), "500");
    figure(&out, "steady_cpu_cores");
}
