//! `capstan notify channels|channel-put|test|deliveries|delivery`:
//! notification channels, test-sends with the provider's real answer, and
//! delivery receipts, over the HTTP API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;

use super::{Remote, print_response};

/// `capstan notify ...`
#[derive(Subcommand)]
pub(super) enum NotifyCommand {
    /// List channels (never their secrets).
    Channels {
        #[command(flatten)]
        remote: Remote,
    },
    /// Store a channel from a JSON file (name, project, type, webhook_secret, sign_secret...).
    ChannelPut {
        /// Channel name.
        name: String,
        /// The JSON file.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Send a test message now and print the provider's answer.
    Test {
        /// Channel name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List delivery receipts, newest first.
    Deliveries {
        /// Only this channel's.
        #[arg(long)]
        channel: Option<String>,
        /// Only deliveries in this status (queued, sent, failed, batched).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// One delivery with every attempt and the provider's answers.
    Delivery {
        /// Delivery id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn notify(cmd: NotifyCommand) -> anyhow::Result<()> {
    let response = match cmd {
        NotifyCommand::Channels { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/notify/channels")
                .send()
                .await
        }
        NotifyCommand::ChannelPut { name, file, remote } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            let path = format!("/v1/notify/channels/{name}");
            remote
                .request(&remote.client()?, Method::PUT, &path)
                .json(&body)
                .send()
                .await
        }
        NotifyCommand::Test { name, remote } => {
            let path = format!("/v1/notify/channels/{name}/test");
            remote
                .request(&remote.client()?, Method::POST, &path)
                .json(&serde_json::json!({}))
                .send()
                .await
        }
        NotifyCommand::Deliveries {
            channel,
            status,
            limit,
            remote,
        } => {
            let mut query: Vec<String> = Vec::new();
            query.extend(channel.map(|c| format!("channel={}", super::alerts::encode(&c))));
            query.extend(status.map(|s| format!("status={}", super::alerts::encode(&s))));
            query.extend(limit.map(|l| format!("limit={l}")));
            let path = format!("/v1/notify/deliveries?{}", query.join("&"));
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        NotifyCommand::Delivery { id, remote } => {
            let path = format!("/v1/notify/deliveries/{id}");
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
    };
    print_response(response).await
}
