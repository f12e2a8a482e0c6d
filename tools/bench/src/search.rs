//! `search`: SearchAgents over `--manifests` manifests of 5 skills each, one
//! configuration each and `--registrations` instances among them, through
//! the SDK; then, in the same run and with the same callers and words, the
//! same query written as plain SQL `ILIKE` over the stored skills (straight
//! to PostgreSQL, no gRPC hop: the baseline the issue names), and as
//! PostgreSQL full-text search ranked by `ts_rank` over a GIN index.
//!
//! Skills are made of pseudo-words from a vocabulary of 1,000 (name 2
//! words, description 8, tags 3, one example of 6), so that a query word
//! matches about 90 skills: a realistic page of hits to rank, not an empty
//! answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentry_client::{
    AgentFilter, Client, CreateConfiguration, CreateManifest, RegisterInstance, SearchAgents, Skill,
};

use crate::Error;
use crate::cli::{Args, Load};
use crate::rss;
use crate::setup::{setup, spawn_bounded, wait_for_view};
use crate::stats::{Done, report_latencies, report_rate};

const SKILLS_PER_MANIFEST: usize = 5;
const VOCABULARY: usize = 1000;
/// The words the callers search for, in turn.
const QUERY_WORDS: usize = 50;

/// Pseudo-word `i` of the vocabulary: three syllables.
fn word(i: usize) -> String {
    const SYLLABLES: [&str; 10] = ["ka", "lo", "mi", "su", "te", "ra", "no", "vi", "de", "po"];
    let i = i % VOCABULARY;
    format!(
        "{}{}{}x",
        SYLLABLES[i % 10],
        SYLLABLES[(i / 10) % 10],
        SYLLABLES[(i / 100) % 10]
    )
}

/// `n` words drawn by a small linear congruential generator from `seed`.
fn words(seed: &mut u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            word((*seed >> 33) as usize)
        })
        .collect()
}

fn skill(manifest: usize, n: usize) -> Skill {
    let mut seed = (manifest * SKILLS_PER_MANIFEST + n) as u64 + 1;
    Skill::new(format!("skill-{n}"), words(&mut seed, 2).join(" "))
        .description(words(&mut seed, 8).join(" "))
        .tags(words(&mut seed, 3))
        .example(words(&mut seed, 6).join(" "))
}

fn agent(i: usize) -> String {
    format!("search-agent-{i:04}")
}

pub(crate) async fn run(
    args: &Args,
    db_url: &str,
    manifests: usize,
    registrations: usize,
    load: Load,
) -> Result<(), Error> {
    let s = setup(args, 0).await?;
    let admin = crate::setup::client(args, &args.admin_key).await?;
    spawn_bounded(manifests, 16, |i| {
        let admin = admin.clone();
        async move {
            let mut m =
                CreateManifest::new(agent(i), "bench", format!("Search bench {i}"), "1.0.0");
            for n in 0..SKILLS_PER_MANIFEST {
                m = m.skill(skill(i, n));
            }
            match admin.create_manifest(m).await {
                Ok(_) | Err(agentry_client::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    spawn_bounded(manifests, 16, |i| {
        let tenant = s.tenant.clone();
        async move {
            tenant
                .create_configuration(CreateConfiguration::for_agent(agent(i)).max_workload(1000))
                .await
        }
    })
    .await?;
    spawn_bounded(registrations, 64, |i| {
        let a = s.agent.clone();
        async move {
            a.register_instance(RegisterInstance::new(
                format!("search-{i}"),
                agent(i % manifests),
            ))
            .await
        }
    })
    .await?;
    println!(
        "search_setup: {manifests} manifests x {SKILLS_PER_MANIFEST} skills, {registrations} registrations"
    );
    wait_for_view(
        &s.tenant,
        1000,
        manifests.min(1000),
        Duration::from_millis(200),
    )
    .await?;

    let next = Arc::new(AtomicUsize::new(0));
    let query =
        move |next: &AtomicUsize| word(next.fetch_add(1, Ordering::Relaxed) % QUERY_WORDS * 7);
    // The answers' sizes, to show both sides found something.
    let probe = s
        .tenant
        .search_agents(SearchAgents::new(query(&AtomicUsize::new(0))))
        .await?;
    println!("search_hits_of_first_word: {}", probe.total_size);

    let clients = load.clients(args, &s.tenant_key).await?;
    // The routing read of the same page size on the same fleet, first: the
    // floor that the SDK, tonic and the view set on this machine.
    let cpu = || rss::server_cpu_ms(args.server_pid);
    let before = cpu();
    let run = load
        .run(&clients, move |client: Client| async move {
            client.get_available_agents(AgentFilter::new(), 20).await?;
            Ok(Done::Ok)
        })
        .await?;
    report_cpu(
        "available_server_cpu_us_per_call",
        before,
        cpu(),
        run.latencies.len(),
    );
    report_rate("available_calls", run.latencies.len(), run.elapsed);
    report_latencies("available_latency", run.latencies);

    let counter = next.clone();
    let before = cpu();
    let run = load
        .run(&clients, move |client: Client| {
            let q = query(&counter);
            async move {
                client.search_agents(SearchAgents::new(q)).await?;
                Ok(Done::Ok)
            }
        })
        .await?;
    report_cpu(
        "search_server_cpu_us_per_call",
        before,
        cpu(),
        run.latencies.len(),
    );
    report_rate("search_calls", run.latencies.len(), run.elapsed);
    report_latencies("search_latency", run.latencies);

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(load.concurrency.min(32)).unwrap_or(32))
        .connect(db_url)
        .await?;
    let tenant_id = Arc::new(tenant_of(&s.tenant).await?);
    let sql_hits = sqlx::query(ILIKE_SQL)
        .bind(tenant_id.as_str())
        .bind(format!("%{}%", query(&AtomicUsize::new(0))))
        .fetch_all(&pool)
        .await?
        .len();
    println!("sql_ilike_hits_of_first_word: {sql_hits} (at most the page of 20)");
    let counter = next.clone();
    let run = load
        .run(std::slice::from_ref(&pool), move |pool: sqlx::PgPool| {
            let (q, tenant) = (format!("%{}%", query(&counter)), tenant_id.clone());
            async move {
                sqlx::query(ILIKE_SQL)
                    .bind(tenant.as_str())
                    .bind(q)
                    .fetch_all(&pool)
                    .await?;
                Ok(Done::Ok)
            }
        })
        .await?;
    report_rate("sql_ilike_calls", run.latencies.len(), run.elapsed);
    report_latencies("sql_ilike_latency", run.latencies);

    // PostgreSQL's own full-text search, ranked, over an expression index
    // made for the run and dropped after it: the other way issue 16 names.
    sqlx::query(FTS_INDEX).execute(&pool).await?;
    sqlx::query("ANALYZE agent_manifests")
        .execute(&pool)
        .await?;
    let counter = next.clone();
    let tenant_id = Arc::new(tenant_of(&s.tenant).await?);
    let run = load
        .run(std::slice::from_ref(&pool), move |pool: sqlx::PgPool| {
            let (q, tenant) = (query(&counter), tenant_id.clone());
            async move {
                sqlx::query(FTS_SQL)
                    .bind(tenant.as_str())
                    .bind(q)
                    .fetch_all(&pool)
                    .await?;
                Ok(Done::Ok)
            }
        })
        .await?;
    sqlx::query("DROP INDEX IF EXISTS bench_skills_fts")
        .execute(&pool)
        .await?;
    report_rate("sql_fts_calls", run.latencies.len(), run.elapsed);
    report_latencies("sql_fts_latency", run.latencies);
    Ok(())
}

/// `{name}: µs` of server CPU per call between two readings.
fn report_cpu(name: &str, before: Option<u64>, after: Option<u64>, calls: usize) {
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "{name}: {:.0}",
            (a - b) as f64 * 1000.0 / calls.max(1) as f64
        );
    }
}

/// The tenant of `tenant`'s key, read from one of its configurations.
async fn tenant_of(tenant: &Client) -> Result<String, Error> {
    Ok(tenant
        .list_configurations(agentry_client::ListConfigurations::new().page_size(1))
        .await?
        .configurations
        .first()
        .map(|c| c.tenant_id.clone())
        .ok_or("no configuration")?)
}

const FTS_INDEX: &str = "CREATE INDEX IF NOT EXISTS bench_skills_fts ON agent_manifests \
    USING GIN (to_tsvector('simple', skills::text))";

/// The search as PostgreSQL full-text search, ranked by `ts_rank`, one page.
const FTS_SQL: &str = "SELECT c.id, m.agent_id, ts_rank(to_tsvector('simple', m.skills::text), q) AS rank \
    FROM agent_manifests m, plainto_tsquery('simple', $2) q, agent_configurations c \
    WHERE to_tsvector('simple', m.skills::text) @@ q \
      AND c.manifest_id = m.id AND c.tenant_id = $1::uuid AND c.enabled \
      AND EXISTS (SELECT 1 FROM agent_registrations r WHERE r.configuration_id = c.id AND r.routable) \
    ORDER BY rank DESC LIMIT 20";

/// The search as plain SQL: the tenant's enabled configurations with a
/// routable instance whose manifest has a skill whose name, description,
/// tags or examples contain the word; unranked (ILIKE cannot rank), one
/// page of 20.
const ILIKE_SQL: &str = "SELECT c.id, m.agent_id FROM agent_configurations c \
    JOIN agent_manifests m ON m.id = c.manifest_id \
    WHERE c.tenant_id = $1::uuid AND c.enabled \
      AND EXISTS (SELECT 1 FROM agent_registrations r WHERE r.configuration_id = c.id AND r.routable) \
      AND EXISTS (SELECT 1 FROM jsonb_array_elements(m.skills) s \
                  WHERE s->>'name' ILIKE $2 OR s->>'description' ILIKE $2 \
                     OR (s->'tags')::text ILIKE $2 OR (s->'examples')::text ILIKE $2) \
    LIMIT 20";
