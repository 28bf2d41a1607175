//! `capstan project|ceiling|approval`: the trust model from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;

use super::{Remote, print_response};

/// `capstan project ...`
#[derive(Subcommand)]
pub(super) enum ProjectCommand {
    /// Create a project (global admin).
    Create {
        /// Name: a DNS label.
        name: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the projects you have a role in.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a project that owns no plugin (global admin).
    Delete {
        /// Name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `capstan ceiling ...`
#[derive(Subcommand)]
pub(super) enum CeilingCommand {
    /// List ceilings.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Set the ceiling of a project (or `*`), or of one plugin with --plugin,
    /// from a TOML file with the fields of `[[ceilings]]` (global admin).
    Set {
        /// Project name, or `*`.
        project: String,
        /// Only this plugin of the project.
        #[arg(long)]
        plugin: Option<String>,
        /// TOML file: `fs`, `secrets`, `http`, `private_networks`, `kv_max_bytes`, `[[kube]]`.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a ceiling (global admin).
    Delete {
        /// Project name, or `*`.
        project: String,
        /// Only this plugin's ceiling.
        #[arg(long)]
        plugin: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `capstan approval ...`
#[derive(Subcommand)]
pub(super) enum ApprovalCommand {
    /// List approvals (default: pending ones).
    List {
        /// pending, approved, rejected or all.
        #[arg(long, default_value = "pending")]
        state: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one approval with the grant diff.
    Show {
        /// Approval id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve (an admin who did not request it).
    Approve {
        /// Approval id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reject.
    Reject {
        /// Approval id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn project(cmd: ProjectCommand) -> anyhow::Result<()> {
    let response = match cmd {
        ProjectCommand::Create {
            name,
            description,
            remote,
        } => {
            remote
                .request(&remote.client()?, Method::POST, "/v1/projects")
                .json(&serde_json::json!({ "name": name, "description": description }))
                .send()
                .await
        }
        ProjectCommand::List { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/projects")
                .send()
                .await
        }
        ProjectCommand::Delete { name, remote } => {
            let path = format!("/v1/projects/{name}");
            remote
                .request(&remote.client()?, Method::DELETE, &path)
                .send()
                .await
        }
    };
    print_response(response).await
}

fn ceiling_path(project: &str, plugin: Option<&str>) -> String {
    let project = if project == "*" { "%2A" } else { project };
    match plugin {
        Some(p) => format!("/v1/ceilings/{project}/{p}"),
        None => format!("/v1/ceilings/{project}"),
    }
}

pub(super) async fn ceiling(cmd: CeilingCommand) -> anyhow::Result<()> {
    let response = match cmd {
        CeilingCommand::List { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/ceilings")
                .send()
                .await
        }
        CeilingCommand::Set {
            project,
            plugin,
            file,
            remote,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let ceiling: crate::trust::ceilings::Ceiling =
                toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            remote
                .request(
                    &remote.client()?,
                    Method::PUT,
                    &ceiling_path(&project, plugin.as_deref()),
                )
                .json(&ceiling)
                .send()
                .await
        }
        CeilingCommand::Delete {
            project,
            plugin,
            remote,
        } => {
            remote
                .request(
                    &remote.client()?,
                    Method::DELETE,
                    &ceiling_path(&project, plugin.as_deref()),
                )
                .send()
                .await
        }
    };
    print_response(response).await
}

pub(super) async fn approval(cmd: ApprovalCommand) -> anyhow::Result<()> {
    let response = match cmd {
        ApprovalCommand::List { state, remote } => {
            let path = if state == "all" {
                "/v1/approvals".to_string()
            } else {
                format!("/v1/approvals?state={state}")
            };
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        ApprovalCommand::Show { id, remote } => {
            let path = format!("/v1/approvals/{id}");
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        ApprovalCommand::Approve {
            id,
            comment,
            remote,
        } => decide(&remote, &id, "approve", &comment).await?,
        ApprovalCommand::Reject {
            id,
            comment,
            remote,
        } => decide(&remote, &id, "reject", &comment).await?,
    };
    print_response(response).await
}

async fn decide(
    remote: &Remote,
    id: &str,
    verb: &str,
    comment: &str,
) -> anyhow::Result<reqwest::Result<reqwest::Response>> {
    let client = remote.client()?;
    Ok(remote
        .request(&client, Method::POST, &format!("/v1/approvals/{id}/{verb}"))
        .json(&serde_json::json!({ "comment": comment }))
        .send()
        .await)
}
