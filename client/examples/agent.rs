//! An agent process: registers over the health stream, reports its load,
//! follows configuration changes and drains, and leaves cleanly on Ctrl-C.
//!
//! ```sh
//! AGENTRY_URL=http://127.0.0.1:50051 AGENTRY_API_KEY=<agent key> \
//!   cargo run -p agentry-client --example agent -- ws_conn_abc123 ide-agent
//! ```

use agentry_client::{Client, SessionEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AGENTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let key =
        std::env::var("AGENTRY_API_KEY").map_err(|_| "set AGENTRY_API_KEY to an agent key")?;
    let mut args = std::env::args().skip(1);
    let instance_id = args.next().unwrap_or_else(|| "example-instance".into());
    let agent_id = args.next().unwrap_or_else(|| "ide-agent".into());

    let client = Client::builder(url).api_key(key).connect().await?;
    let mut session = client
        .agent_session(instance_id, agent_id)
        .name("example agent")
        .connection_details(serde_json::json!({"user_agent": "agentry-example/0.1"}))
        .connect()
        .await?;
    let state = session.current();
    println!(
        "registered: epoch {}, registration {:?}",
        state.epoch,
        state.registration.map(|r| r.id)
    );

    let mut load = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = session.next_event() => match event {
                Some(SessionEvent::ConfigurationChanged(c)) => println!("new configuration: prompt {:?}", c.system_prompt),
                Some(SessionEvent::Drain(reason)) => println!("asked to drain: {reason}"),
                Some(SessionEvent::Disconnected(why)) => println!("disconnected ({why}); reconnecting"),
                Some(SessionEvent::Reconnected { epoch }) => println!("reconnected at epoch {epoch}"),
                Some(SessionEvent::Superseded { new_epoch }) => {
                    println!("another process took over this instance (epoch {new_epoch})");
                    return Ok(());
                }
                Some(other) => println!("{other:?}"),
                None => break,
            },
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                load = (load + 1) % 4;
                session.report_load(load);
            }
        }
    }
    session.close().await?;
    println!("said goodbye");
    Ok(())
}
