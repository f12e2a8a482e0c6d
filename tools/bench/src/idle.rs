//! `idle`: open `--streams` health streams that only say hello, hold them
//! for `--seconds`, and report the server's RSS per stream.

use std::time::Duration;

use crate::Error;
use crate::cli::Args;
use crate::rss::server_rss_kib;
use crate::setup::setup;
use crate::stream::{goodbye_all, open_many};

pub(crate) async fn run(args: &Args, count: usize, seconds: u64) -> Result<(), Error> {
    let s = setup(args, 1).await?;
    let before =
        server_rss_kib(args.server_pid).ok_or("cannot read the server's RSS: pass --server-pid")?;
    let streams = open_many(args, &s.agent_key, count).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = server_rss_kib(args.server_pid).unwrap_or(before);
    println!("streams: {}", streams.len());
    println!("server_rss_before_kib: {before}");
    println!("server_rss_after_kib: {after}");
    println!(
        "server_rss_per_stream_kib: {:.2}",
        after.saturating_sub(before) as f64 / streams.len().max(1) as f64
    );
    goodbye_all(&streams, "").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}
