//! Packaging: the Dockerfile's build context, compose.yaml and the
//! Kubernetes manifests checked against the server they package, and the
//! `health` subcommand their probes run. No Docker engine exists here:
//! assembling the context and resolving the workspace in it stands in for
//! `docker build`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use agentry_server::Config;
use agentry_server::config::{Command, MigrateMode};
use clap::{CommandFactory, Parser};
use common::binary::{run, stderr_of, stdout_of};
use common::{TestDb, TestServer, eventually};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- Dockerfile

/// One instruction of the Dockerfile, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("read Dockerfile");
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (keyword, args) = pending
                    .split_once(char::is_whitespace)
                    .expect("instruction");
                instructions.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                });
                pending.clear();
            }
        }
    }
    instructions
}

/// The instructions of each stage, each stage opening with its FROM.
fn stages() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for i in dockerfile() {
        if i.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("FROM first").push(i);
    }
    stages
}

/// A JSON-array (exec form) argument of ENTRYPOINT, CMD, HEALTHCHECK CMD.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec form ({e}): {args}"))
}

/// The runtime stage's ENV, as (name, value).
fn runtime_env() -> Vec<(String, String)> {
    let runtime = stages().pop().expect("a runtime stage");
    runtime
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("ENV name=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn runtime_instruction(keyword: &str) -> String {
    let runtime = stages().pop().expect("a runtime stage");
    runtime
        .iter()
        .rfind(|i| i.keyword == keyword)
        .unwrap_or_else(|| panic!("the runtime stage has no {keyword}"))
        .args
        .clone()
}

/// The binary the image runs.
fn entrypoint() -> String {
    exec_form(&runtime_instruction("ENTRYPOINT"))
        .into_iter()
        .next()
        .expect("ENTRYPOINT names the binary")
}

// ------------------------------------------------------------- .dockerignore

/// `.dockerignore`, matched as Docker does: the last matching pattern wins,
/// `!` re-includes, a pattern matching a folder matches what it holds.
struct DockerIgnore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    fn load() -> DockerIgnore {
        let text =
            std::fs::read_to_string(repo().join(".dockerignore")).expect("read .dockerignore");
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (include, pattern) = match l.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, l),
                };
                let segments = pattern
                    .trim_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(str::to_owned)
                    .collect();
                (include, segments)
            })
            .collect();
        DockerIgnore { patterns }
    }

    /// Whether `path` (relative to the context, `/`-separated) stays out.
    fn ignores(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        let mut ignored = false;
        for (include, pattern) in &self.patterns {
            let matched = (1..=segments.len()).any(|n| glob(pattern, &segments[..n]));
            if matched {
                ignored = !include;
            }
        }
        ignored
    }
}

/// Path segments against pattern segments: `**` spans any number of
/// segments, `*` and `?` stay within one.
fn glob(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| glob(rest, &path[skip..]))
        }
        Some((first, rest)) => path.split_first().is_some_and(|(segment, tail)| {
            wildcard(first.as_bytes(), segment.as_bytes()) && glob(rest, tail)
        }),
    }
}

fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && wildcard(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && wildcard(rest, &text[1..]),
    }
}

// ------------------------------------------------------- the build, simulated

/// Copies `from` (a file or a folder of the repository) to `to`, leaving
/// out what `.dockerignore` excludes.
fn copy_into_context(ignore: &DockerIgnore, from: &str, to: &Path) {
    let source = repo().join(from);
    if ignore.ignores(from) {
        return;
    }
    if source.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(&source).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("utf-8 name");
            copy_into_context(ignore, &format!("{from}/{name}"), &to.join(&name));
        }
    } else {
        assert!(source.is_file(), "COPY names {from}, which does not exist");
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&source, to).expect("copy");
    }
}

/// What `cargo metadata --locked --offline` says in `dir`.
fn cargo_metadata(dir: &Path) -> Result<Value, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .expect("run cargo metadata");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("metadata JSON"))
}

/// Plays the build stage into a fresh folder: COPY lines through
/// `.dockerignore`, RUN lines' shell steps as they are, and in place of
/// each `cargo build`, `cargo metadata --locked --offline` plus a look at
/// the files the build reads. Returns the folder and what each cargo step saw.
fn play_build_stage() -> (tempfile::TempDir, Vec<Value>) {
    let ignore = DockerIgnore::load();
    let context = tempfile::tempdir().expect("tempdir");
    let build = stages().into_iter().next().expect("a build stage");
    assert!(
        build[0].args.contains("AS build"),
        "first stage is the build: {:?}",
        build[0]
    );
    let mut seen = Vec::new();
    for i in &build[1..] {
        match i.keyword.as_str() {
            "WORKDIR" => assert_eq!(i.args, "/src", "paths below are relative to /src"),
            "COPY" => {
                let words: Vec<&str> = i
                    .args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (dest, sources) = words.split_last().expect("COPY source dest");
                let into_folder = dest.ends_with('/') || sources.len() > 1;
                for source in sources {
                    let target = if into_folder {
                        let name = Path::new(source).file_name().expect("name");
                        context.path().join(dest).join(name)
                    } else {
                        context.path().join(dest)
                    };
                    copy_into_context(&ignore, source, &target);
                }
            }
            "RUN" => {
                for step in i.args.split("&&").map(str::trim) {
                    if step.starts_with("cargo ") {
                        assert!(step.contains("--locked"), "the build is --locked: {step}");
                        let metadata = cargo_metadata(context.path()).unwrap_or_else(|e| {
                            panic!(
                                "the build context does not load as a workspace at `{step}`:\n{e}"
                            )
                        });
                        assert_build_inputs(context.path(), &metadata);
                        seen.push(metadata);
                        continue;
                    }
                    let status = std::process::Command::new("sh")
                        .args(["-c", step])
                        .current_dir(context.path())
                        .status()
                        .expect("sh");
                    assert!(status.success(), "RUN step failed: {step}");
                }
            }
            _ => {}
        }
    }
    (context, seen)
}

/// The files cargo reads to build the server exist where the manifest says.
fn assert_build_inputs(dir: &Path, metadata: &Value) {
    let server = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "agentry-server")
        .expect("agentry-server is a package of the context");
    for target in server["targets"].as_array().expect("targets") {
        let kinds = target["kind"].as_array().expect("kind");
        if kinds
            .iter()
            .any(|k| k == "lib" || k == "bin" || k == "custom-build")
        {
            let path = Path::new(target["src_path"].as_str().expect("src_path"));
            assert!(
                path.is_file(),
                "the build needs {}, missing from the context",
                path.display()
            );
        }
    }
    assert!(
        dir.join("proto/agentry/v1").is_dir(),
        "build.rs compiles proto/"
    );
}

#[test]
fn the_dockerfile_build_context_loads_as_a_locked_workspace_at_each_cargo_build() {
    let (context, steps) = play_build_stage();
    assert_eq!(steps.len(), 2, "a dependency layer and the real build");
    let dir = context.path();
    // The last build has the real sources, everything sqlx::migrate! embeds.
    for folder in ["server", "migrations"] {
        let ours: BTreeSet<_> = walk(&repo().join(folder));
        let theirs: BTreeSet<_> = walk(&dir.join(folder));
        assert_eq!(ours, theirs, "{folder}/ is not copied whole");
    }
    for metadata in &steps {
        let members: Vec<_> = metadata["workspace_members"]
            .as_array()
            .expect("members")
            .to_vec();
        assert_eq!(
            members.len(),
            3,
            "every workspace member loads: {members:?}"
        );
    }
}

fn walk(dir: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel);
            }
        }
    }
    files
}

#[test]
fn dockerignore_keeps_build_output_and_history_out_and_sources_in() {
    let ignore = DockerIgnore::load();
    for out in [
        "target",
        "target/debug/agentry-server",
        "client/target/x",
        ".git",
        ".git/HEAD",
    ] {
        assert!(
            ignore.ignores(out),
            ".dockerignore lets {out} into the context"
        );
    }
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "server/main.rs",
        "migrations/0001_foundation.sql",
        "proto/agentry/v1/routing.proto",
        "client/Cargo.toml",
        "tools/bench/Cargo.toml",
    ] {
        assert!(
            !ignore.ignores(kept),
            ".dockerignore keeps {kept} out of the context"
        );
    }
}

#[test]
fn the_image_exposes_grpc_and_metrics_runs_unprivileged_and_checks_health() {
    let exposed: BTreeSet<u16> = runtime_instruction("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("port"))
        .collect();
    let config = parse_with_env(&[], &runtime_env());
    assert!(
        exposed.contains(&config.serve.listen_addr.port()),
        "EXPOSE {exposed:?} misses the gRPC port"
    );
    assert_eq!(
        config.serve.metrics_addr.map(|a| a.port()),
        Some(9090),
        "the image serves metrics on 9090"
    );
    assert!(
        exposed.contains(&9090),
        "EXPOSE {exposed:?} misses the metrics port"
    );
    let user = runtime_instruction("USER");
    assert!(
        user.split(':')
            .next()
            .expect("uid")
            .parse::<u32>()
            .is_ok_and(|uid| uid != 0),
        "USER {user} is not a numeric non-root uid"
    );
    let healthcheck = runtime_instruction("HEALTHCHECK");
    let (_, cmd) = healthcheck.split_once("CMD ").expect("HEALTHCHECK CMD");
    let argv = exec_form(cmd);
    assert_eq!(argv[0], entrypoint());
    assert!(matches!(
        parse_with_env(&argv[1..], &runtime_env()).command,
        Some(Command::Health { .. })
    ));
    for base in stages().iter().map(|s| &s[0].args) {
        let image = base.split_whitespace().next().expect("image");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()),
            "{image} is not pinned by version"
        );
    }
}

// ------------------------------------------------- the server's configuration

/// Long flag names and environment names the server accepts, over every
/// subcommand.
fn surface() -> (BTreeSet<String>, BTreeSet<String>) {
    fn walk(cmd: &clap::Command, longs: &mut BTreeSet<String>, envs: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                longs.insert(long.to_owned());
            }
            if let Some(env) = arg.get_env() {
                envs.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, longs, envs);
        }
    }
    let (mut longs, mut envs) = (BTreeSet::new(), BTreeSet::new());
    walk(&Config::command(), &mut longs, &mut envs);
    (longs, envs)
}

/// The flag that reads environment variable `env`.
fn flag_of_env(env: &str) -> String {
    Config::command()
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .and_then(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| panic!("the server reads no environment variable {env}"))
}

/// Parses a container's arguments as the server would, its environment
/// (values from a Secret left out) turned into the flags they stand for, so
/// that names and values are both checked. `base` is the image's ENV.
fn parse_with_env(args: &[String], env: &[(String, String)]) -> Config {
    let (longs, envs) = surface();
    for arg in args {
        if let Some(long) = arg.strip_prefix("--") {
            let long = long.split('=').next().expect("name");
            assert!(longs.contains(long), "the server has no flag --{long}");
        }
    }
    let mut argv = vec!["agentry-server".to_owned()];
    let mut merged: Vec<(String, String)> = runtime_env();
    for (k, v) in env {
        assert!(
            envs.contains(k),
            "the server reads no environment variable {k}"
        );
        merged.retain(|(name, _)| name != k);
        merged.push((k.clone(), v.clone()));
    }
    for (k, v) in merged {
        argv.push(format!("{}={v}", flag_of_env(&k)));
    }
    argv.extend(args.iter().cloned());
    Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("the server refuses {argv:?}:\n{e}"))
}

fn yaml(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ compose

fn compose_env(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|kv| {
                let (k, v) = kv.as_str().expect("K=V").split_once('=').expect("K=V");
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_runs_a_migration_then_two_replicas_with_flags_the_server_has() {
    let compose = yaml("compose.yaml").remove(0);
    let services = compose["services"].as_object().expect("services");
    assert!(
        services.values().any(|s| s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:15"))),
        "compose runs PostgreSQL 15"
    );
    let ours: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("agentry:"))
        })
        .collect();
    let mut migrations = Vec::new();
    let mut replicas = Vec::new();
    for (name, service) in &ours {
        let env = compose_env(service);
        let config = parse_with_env(&strings(&service["command"]), &env);
        match config.command {
            Some(Command::Migrate) => migrations.push(name.as_str()),
            None => {
                assert_eq!(
                    config.migrate,
                    MigrateMode::Off,
                    "{name}: replicas leave the schema to the migration"
                );
                let port = config.serve.listen_addr.port();
                for mapping in strings(&service["ports"]) {
                    let container = mapping.rsplit(':').next().expect("port");
                    assert_eq!(
                        container.parse::<u16>().ok(),
                        Some(port),
                        "{name}: {mapping} is not the listen port {port}"
                    );
                }
                assert!(
                    !strings(&service["ports"]).is_empty(),
                    "{name} publishes its port"
                );
                let test = strings(&service["healthcheck"]["test"]);
                assert_eq!(
                    test.first().map(String::as_str),
                    Some("CMD"),
                    "{name}: exec-form health check"
                );
                assert_eq!(
                    test[1],
                    entrypoint(),
                    "{name}: health check runs the image's binary"
                );
                let health = parse_with_env(&test[2..], &env);
                assert!(
                    matches!(health.command, Some(Command::Health { .. })),
                    "{name}: health check asks health"
                );
                replicas.push((name.as_str(), service));
            }
            other => panic!("{name} runs {other:?}"),
        }
    }
    assert_eq!(migrations.len(), 1, "one migration service");
    assert_eq!(replicas.len(), 2, "two replicas");
    for (name, service) in replicas {
        assert_eq!(
            service["depends_on"][migrations[0]]["condition"], "service_completed_successfully",
            "{name} waits for the migration to complete"
        );
    }
}

// --------------------------------------------------------------- Kubernetes

fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let rel = path
            .strip_prefix(repo())
            .expect("inside")
            .to_string_lossy()
            .into_owned();
        docs.extend(yaml(&rel));
    }
    docs
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn k8s_env(container: &Value) -> Vec<(String, String)> {
    let (_, envs) = surface();
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e["name"].as_str().expect("env name").to_owned();
            assert!(
                envs.contains(&name),
                "the server reads no environment variable {name}"
            );
            e["value"].as_str().map(|v| (name, v.to_owned()))
        })
        .collect()
}

fn args_of(container: &Value) -> Vec<String> {
    let command = strings(&container["command"]);
    if let Some(binary) = command.first() {
        assert_eq!(*binary, entrypoint(), "containers run the image's binary");
    }
    command
        .into_iter()
        .skip(1)
        .chain(strings(&container["args"]))
        .collect()
}

fn assert_locked_down(what: &str, pod: &Value, container: &Value) {
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"], true,
        "{what}: runAsNonRoot"
    );
    let security = &container["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"], true,
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"], false,
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        ["ALL"],
        "{what}: capabilities drop ALL"
    );
    assert!(
        container["resources"]["requests"].is_object(),
        "{what}: resources"
    );
}

/// The `grpc:` probes' health names, with their ports.
fn grpc_probes(container: &Value) -> Vec<(u16, String)> {
    ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .filter_map(|p| container[p]["grpc"].as_object())
        .map(|g| {
            (
                g["port"].as_u64().expect("grpc probe port is a number") as u16,
                g.get("service")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn kubernetes_manifests_use_flags_env_ports_and_probes_the_server_has() {
    let docs = manifests();
    let deployments = of_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    let deployment = deployments[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_locked_down("Deployment", pod, container);
    let env = k8s_env(container);
    let secret_env: Vec<_> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        secret_env,
        ["DATABASE_URL"],
        "the database URL comes from a Secret"
    );
    let config = parse_with_env(&args_of(container), &env);
    assert!(config.command.is_none(), "the Deployment runs the server");
    assert_ne!(
        config.migrate,
        MigrateMode::Auto,
        "replicas leave DDL to the Job"
    );
    let port = config.serve.listen_addr.port();
    let ports = container["ports"].as_array().expect("ports");
    let grpc = ports
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a port named grpc");
    assert_eq!(
        grpc["containerPort"].as_u64(),
        Some(u64::from(port)),
        "containerPort is the listen port"
    );
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(
        metrics["containerPort"].as_u64(),
        config.serve.metrics_addr.map(|a| u64::from(a.port())),
        "the metrics containerPort is the image's metrics port"
    );
    let probes = grpc_probes(container);
    assert!(
        container["readinessProbe"]["grpc"].is_object(),
        "readiness is a grpc probe"
    );
    for (probe_port, _) in &probes {
        assert_eq!(*probe_port, port, "grpc probes ask the listen port");
    }
    for p in ["readinessProbe", "livenessProbe"] {
        let exec = strings(&container[p]["exec"]["command"]);
        if let Some(binary) = exec.first() {
            assert_eq!(*binary, entrypoint());
            let health = parse_with_env(&exec[1..], &env);
            assert!(
                matches!(health.command, Some(Command::Health { .. })),
                "{p} runs health"
            );
        }
    }
    assert!(container["livenessProbe"].is_object(), "a liveness probe");

    let service = of_kind(&docs, "Service")[0];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[k], v, "the Service selects the Deployment's pods");
    }
    let service_port = &service["spec"]["ports"][0];
    assert!(
        service_port["targetPort"] == grpc["name"]
            || service_port["targetPort"] == grpc["containerPort"],
        "the Service targets the gRPC port"
    );
    let pdb = of_kind(&docs, "PodDisruptionBudget")[0];
    assert_eq!(
        &pdb["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["selector"]["matchLabels"]
    );

    let job = of_kind(&docs, "Job")[0];
    let job_pod = &job["spec"]["template"]["spec"];
    let migrate = &job_pod["containers"][0];
    assert_locked_down("Job", job_pod, migrate);
    let job_config = parse_with_env(&args_of(migrate), &k8s_env(migrate));
    assert!(
        matches!(job_config.command, Some(Command::Migrate)),
        "the Job migrates"
    );
    assert!(
        migrate["env"][0]["valueFrom"]["secretKeyRef"].is_object(),
        "the Job's URL comes from a Secret"
    );
}

#[tokio::test]
async fn kubernetes_grpc_probes_ask_health_names_the_server_serves() {
    let docs = manifests();
    let container = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    let probes = grpc_probes(container);
    assert!(!probes.is_empty());
    let s = TestServer::start().await;
    for (_, service) in probes {
        let output = run(&[
            "health",
            "--addr",
            &s.addr.to_string(),
            "--service",
            &service,
        ])
        .await;
        assert!(
            output.status.success() && stdout_of(&output).trim() == "SERVING",
            "probe service {service:?}: {} {}",
            stdout_of(&output),
            stderr_of(&output)
        );
    }
}

// ------------------------------------------------------ the health subcommand

#[tokio::test]
async fn health_exits_zero_when_serving_for_the_server_and_a_named_service() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    for service in ["", "agentry.v1.RoutingService"] {
        let output = run(&["health", "--addr", &addr, "--service", service]).await;
        assert!(
            output.status.success(),
            "{service:?}: {}",
            stderr_of(&output)
        );
        assert_eq!(stdout_of(&output).trim(), "SERVING");
    }
    // Without --addr: the port of --listen-addr, on loopback for 0.0.0.0,
    // as in the image (AGENTRY_LISTEN_ADDR=0.0.0.0:50051).
    let wildcard = format!("0.0.0.0:{}", s.addr.port());
    let output = run(&["--listen-addr", &wildcard, "health"]).await;
    assert!(
        output.status.success(),
        "default address: {}",
        stderr_of(&output)
    );
}

#[tokio::test]
async fn health_exits_one_for_an_unknown_name_an_absent_server_and_not_serving() {
    let s = TestServer::start().await;
    let unknown = run(&[
        "health",
        "--addr",
        &s.addr.to_string(),
        "--service",
        "no.Such",
    ])
    .await;
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(stdout_of(&unknown).trim(), "SERVICE_UNKNOWN");

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let absent = run(&["health", "--addr", &free.to_string(), "--timeout", "2s"]).await;
    assert_eq!(absent.status.code(), Some(1));
    assert!(
        stderr_of(&absent).contains(&format!("cannot reach {free}")),
        "{}",
        stderr_of(&absent)
    );

    let db = TestDb::new().await;
    let (proxy, pool) = db.through_proxy().await;
    let outage = TestServer::with_pool(pool).await;
    proxy.cut();
    let addr = outage.addr.to_string();
    eventually(
        Duration::from_secs(20),
        "health prints NOT_SERVING and exits 1",
        || {
            let addr = addr.clone();
            async move {
                // "" stays SERVING through an outage; the services that need
                // the database do not.
                let output = run(&[
                    "health",
                    "--addr",
                    &addr,
                    "--service",
                    "agentry.v1.ManifestService",
                ])
                .await;
                output.status.code() == Some(1) && stdout_of(&output).trim() == "NOT_SERVING"
            }
        },
    )
    .await;
}
