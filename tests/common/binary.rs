//! The built `agentry-server` binary as a child process, as an operator runs it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long the binary may take to start serving or to exit.
pub const BINARY_DEADLINE: Duration = Duration::from_secs(60);

/// The binary cargo built for these tests.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_agentry-server")
}

/// A command of the binary with JSON logs, so tests can read them.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(exe());
    command
        .args(["--log-format", "json"])
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs the binary to its end (a subcommand, or a server that must refuse
/// to start); one still running after [`BINARY_DEADLINE`] fails the test.
pub async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentry-server");
        let until = std::time::Instant::now() + BINARY_DEADLINE;
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > until {
                let _ = child.kill();
                let output = child.wait_with_output().expect("output");
                panic!(
                    "agentry-server {args:?} still ran after {BINARY_DEADLINE:?}; stderr:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("run agentry-server")
}

/// A server process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Where it serves gRPC, from its "serving gRPC" log line.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the server with `args` (listening on a free loopback port)
    /// and waits until it logs that it serves; a server that exits first
    /// fails the test with its stderr.
    pub async fn start(args: &[&str]) -> ServerProcess {
        let mut child = command(args)
            .args(["--listen-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentry-server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (serving, serves) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = serving_addr(&line) {
                    let _ = serving.send(addr);
                }
                let mut log = log.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || serves.recv_timeout(BINARY_DEADLINE))
            .await
            .expect("wait for the server");
        match addr {
            Ok(addr) => ServerProcess {
                child,
                stderr,
                addr,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agentry-server {args:?} did not start serving; stderr:\n{}",
                    stderr.lock().expect("log")
                );
            }
        }
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("log").clone()
    }

    /// Its log lines at `level` ("WARN", "INFO", ...), as JSON.
    pub fn logged(&self, level: &str) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["level"] == level)
            .collect()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serving_addr(line: &str) -> Option<SocketAddr> {
    let line: serde_json::Value = serde_json::from_str(line).ok()?;
    if line["fields"]["message"] != "serving gRPC" {
        return None;
    }
    line["fields"]["addr"].as_str()?.parse().ok()
}

/// Text of a finished process's stderr.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Text of a finished process's stdout.
pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
