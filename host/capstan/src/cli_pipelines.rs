//! `capstan pipeline|run`: deploy pipelines and their runs from the command
//! line, over the HTTP API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;

use super::{Remote, print_response};

/// `capstan pipeline ...`
#[derive(Subcommand)]
pub(super) enum PipelineCommand {
    /// Store a pipeline file as its next revision (validated first).
    Put {
        /// The YAML file.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// List pipelines (and files of the watched directory that failed).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a pipeline's current revision.
    Show {
        /// Pipeline name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a pipeline (runs in flight finish).
    Delete {
        /// Pipeline name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a run, with parameters as NAME=VALUE (values are JSON if they
    /// parse as JSON, text otherwise).
    Run {
        /// Pipeline name.
        name: String,
        /// A parameter (repeatable), e.g. tag=v1.2.3.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `capstan run ...`
#[derive(Subcommand)]
pub(super) enum RunCommand {
    /// Start a run of PIPELINE, with parameters as NAME=VALUE.
    Start {
        /// Pipeline name.
        pipeline: String,
        /// A parameter (repeatable), e.g. tag=v1.2.3.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Watch a run's steps change state until it finishes.
    Watch {
        /// Run id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve the run's pending approval gate (or --step's).
    Approve {
        /// Run id.
        id: String,
        /// The gate, if several wait.
        #[arg(long)]
        step: Option<String>,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Reject instead.
        #[arg(long)]
        reject: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List runs, newest first.
    List {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a run: status, every step, outputs, approvals.
    Show {
        /// Run id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a run's log; with -f, until the run finishes.
    #[command(alias = "log")]
    Logs {
        /// Run id.
        id: String,
        /// Keep printing new lines until the run finishes.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a run; --rollback undoes its completed steps first.
    Cancel {
        /// Run id.
        id: String,
        /// Roll back completed steps (newest first).
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run a finished run again from one step, reusing earlier outputs.
    Rerun {
        /// Run id.
        id: String,
        /// The step to run again from.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn pipeline(cmd: PipelineCommand) -> anyhow::Result<()> {
    let response = match cmd {
        PipelineCommand::Put { file, remote } => {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = name_in(&yaml)
                .with_context(|| format!("{}: no top-level `name:`", file.display()))?;
            remote
                .request(
                    &remote.client()?,
                    Method::PUT,
                    &format!("/v1/pipelines/{name}"),
                )
                .header("content-type", "application/yaml")
                .body(yaml)
                .send()
                .await
        }
        PipelineCommand::List { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/pipelines")
                .send()
                .await
        }
        PipelineCommand::Show { name, remote } => {
            let path = format!("/v1/pipelines/{name}");
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        PipelineCommand::Delete { name, remote } => {
            let path = format!("/v1/pipelines/{name}");
            remote
                .request(&remote.client()?, Method::DELETE, &path)
                .send()
                .await
        }
        PipelineCommand::Run {
            name,
            params,
            remote,
        } => {
            let mut map = serde_json::Map::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("--param {p}: expected NAME=VALUE"))?;
                let value =
                    serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
                map.insert(k.to_string(), value);
            }
            let path = format!("/v1/pipelines/{name}/runs");
            remote
                .request(&remote.client()?, Method::POST, &path)
                .json(&serde_json::json!({ "params": map }))
                .send()
                .await
        }
    };
    print_response(response).await
}

pub(super) async fn run(cmd: RunCommand) -> anyhow::Result<()> {
    let response = match cmd {
        RunCommand::List { pipeline, remote } => {
            let path = match pipeline {
                Some(p) => format!("/v1/runs?pipeline={p}"),
                None => "/v1/runs".into(),
            };
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        RunCommand::Show { id, remote } => {
            let path = format!("/v1/runs/{id}");
            remote
                .request(&remote.client()?, Method::GET, &path)
                .send()
                .await
        }
        RunCommand::Logs { id, follow, remote } => return log(&id, follow, &remote).await,
        RunCommand::Start {
            pipeline: name,
            params,
            remote,
        } => {
            return pipeline(PipelineCommand::Run {
                name,
                params,
                remote,
            })
            .await;
        }
        RunCommand::Watch { id, remote } => return watch(&id, &remote).await,
        RunCommand::Approve {
            id,
            step,
            comment,
            reject,
            remote,
        } => {
            let approval = pending_gate(&id, step.as_deref(), &remote).await?;
            let verb = if reject { "reject" } else { "approve" };
            let path = format!("/v1/approvals/{approval}/{verb}");
            remote
                .request(&remote.client()?, Method::POST, &path)
                .json(&serde_json::json!({ "comment": comment }))
                .send()
                .await
        }
        RunCommand::Cancel {
            id,
            rollback,
            remote,
        } => {
            let path = format!("/v1/runs/{id}/cancel");
            remote
                .request(&remote.client()?, Method::POST, &path)
                .json(&serde_json::json!({ "rollback": rollback }))
                .send()
                .await
        }
        RunCommand::Rerun { id, from, remote } => {
            let path = format!("/v1/runs/{id}/rerun");
            remote
                .request(&remote.client()?, Method::POST, &path)
                .json(&serde_json::json!({ "from": from }))
                .send()
                .await
        }
    };
    print_response(response).await
}

/// Prints log lines as `time [step] message`; with `follow`, reads the
/// server-sent events until the run's `end`.
async fn log(id: &str, follow: bool, remote: &Remote) -> anyhow::Result<()> {
    let path = format!(
        "/v1/runs/{id}/log{}",
        if follow { "?follow=true" } else { "" }
    );
    let response = remote
        .request(&remote.client()?, Method::GET, &path)
        .send()
        .await
        .context("request failed; is the server running? (see --server)")?;
    if !response.status().is_success() {
        return print_response(Ok(response)).await;
    }
    if !follow {
        let body: serde_json::Value = response.json().await?;
        for line in body["lines"].as_array().into_iter().flatten() {
            print_line(line);
        }
        return Ok(());
    }
    let mut response = response;
    let mut buf = String::new();
    while let Some(chunk) = response.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let kind = field(&event, "event").unwrap_or_default();
            let data = field(&event, "data").unwrap_or_default();
            match kind.as_str() {
                "line" => print_line(&serde_json::from_str(&data).unwrap_or_default()),
                "end" => {
                    println!("run {id} finished: {data}");
                    return Ok(());
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn field(event: &str, name: &str) -> Option<String> {
    event
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim_start().to_string())
}

fn print_line(line: &serde_json::Value) {
    let step = line["step"].as_str().unwrap_or("-");
    let message = line["message"].as_str().unwrap_or_default();
    println!("{} [{step}] {message}", line["at_ms"]);
}

/// The top-level `name:` of a pipeline document.
fn name_in(yaml: &str) -> Option<String> {
    yaml.lines().find_map(|l| {
        let v = l.strip_prefix("name:")?.trim();
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The id of the pending pipeline-gate approval of run `id` (at `step`).
async fn pending_gate(id: &str, step: Option<&str>, remote: &Remote) -> anyhow::Result<String> {
    let list: serde_json::Value = remote
        .request(
            &remote.client()?,
            Method::GET,
            "/v1/approvals?state=pending",
        )
        .send()
        .await
        .context("request failed; is the server running? (see --server)")?
        .json()
        .await?;
    let prefix = format!("{id}/");
    let gates: Vec<&serde_json::Value> = list["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["kind"] == "pipeline-step")
        .filter(|a| {
            let subject = a["subject"].as_str().unwrap_or_default();
            subject.starts_with(&prefix) && step.is_none_or(|s| subject == format!("{prefix}{s}"))
        })
        .collect();
    match gates.as_slice() {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_string()),
        [] => anyhow::bail!(
            "run {id} has no pending approval gate{}",
            step.map(|s| format!(" at `{s}`")).unwrap_or_default()
        ),
        many => anyhow::bail!(
            "run {id} has {} gates waiting; name one with --step ({})",
            many.len(),
            many.iter()
                .filter_map(|a| a["subject"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Prints each step's state as it changes, like `gh run watch`, until the
/// run finishes; fails if the run did not succeed.
async fn watch(id: &str, remote: &Remote) -> anyhow::Result<()> {
    let client = remote.client()?;
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        let response = remote
            .request(&client, Method::GET, &format!("/v1/runs/{id}"))
            .send()
            .await
            .context("request failed; is the server running? (see --server)")?;
        if !response.status().is_success() {
            return print_response(Ok(response)).await;
        }
        let body: serde_json::Value = response.json().await?;
        let run = &body["run"];
        for (step, record) in run["steps"].as_object().into_iter().flatten() {
            let state = &record["state"];
            let name = state["state"].as_str().unwrap_or_default();
            let detail = match name {
                "running" | "waiting-retry" => format!("{name} (attempt {})", record["attempt"]),
                "failed" => format!(
                    "failed ({}): {}",
                    state["kind"].as_str().unwrap_or("?"),
                    state["message"].as_str().unwrap_or_default()
                ),
                _ => name.to_string(),
            };
            if last.get(step) != Some(&detail) {
                println!("{step:<20} {detail}");
                last.insert(step.clone(), detail);
            }
        }
        let status = run["status"].as_str().unwrap_or_default();
        if status != "queued" && status != "running" {
            println!(
                "run {id}: {status}{}",
                run["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
            if status != "succeeded" {
                anyhow::bail!("run {id} ended {status}");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
