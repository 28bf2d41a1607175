//! `capstan alerts list|show|routes|route-put|route-delete`: received alert
//! groups, what the handlers did, and routes, over the HTTP API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;

use super::{Remote, print_response};

/// `capstan alerts ...`
#[derive(Subcommand)]
pub(super) enum AlertsCommand {
    /// List received groups, newest first.
    List {
        /// Only groups in this state (pending, duplicate, processed, muted, unrouted, failed).
        #[arg(long)]
        state: Option<String>,
        /// Only groups posted to this receiver.
        #[arg(long)]
        receiver: Option<String>,
        /// Only groups with an alert of this name.
        #[arg(long)]
        alertname: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a group: its alerts and every action with its outcome.
    Show {
        /// Group id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List routes in the order they are tried.
    Routes {
        #[command(flatten)]
        remote: Remote,
    },
    /// Store a route from a JSON file (name, project, matchers, handlers, continue, order, mute).
    RoutePut {
        /// Route name.
        name: String,
        /// The JSON file.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a route stored through the API.
    RouteDelete {
        /// Route name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn alerts(cmd: AlertsCommand) -> anyhow::Result<()> {
    let response = match cmd {
        AlertsCommand::List {
            state,
            receiver,
            alertname,
            limit,
            remote,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(state.map(|s| ("state", s)));
            query.extend(receiver.map(|s| ("receiver", s)));
            query.extend(alertname.map(|s| ("alertname", s)));
            query.extend(limit.map(|l| ("limit", l.to_string())));
            let query: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            let path = format!("/v1/alerts/groups?{}", query.join("&"));
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        AlertsCommand::Show { id, remote } => {
            let path = format!("/v1/alerts/groups/{id}");
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        AlertsCommand::Routes { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/alerts/routes")
                .send()
                .await
        }
        AlertsCommand::RoutePut { name, file, remote } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            let path = format!("/v1/alerts/routes/{name}");
            remote
                .request(&remote.client()?, Method::PUT, &path)
                .json(&body)
                .send()
                .await
        }
        AlertsCommand::RouteDelete { name, remote } => {
            let path = format!("/v1/alerts/routes/{name}");
            remote
                .request(&remote.client()?, Method::DELETE, &path)
                .send()
                .await
        }
    };
    print_response(response).await
}

/// Percent-encodes a query value.
pub(super) fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
