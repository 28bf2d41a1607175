//! `capstan provision plan|apply|status|destroy`: provisioned instances from
//! the command line, over the HTTP API. Plans print as `kubectl diff` does
//! (a unified diff per object, live against merged); apply and destroy
//! print their progress per wave as it happens.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::Remote;

/// `capstan provision ...`
#[derive(Subcommand)]
pub(super) enum ProvisionCommand {
    /// Store the instance's spec (creating it on first use) and plan it:
    /// prints each object's verdict and diff, and the plan id to apply.
    Plan {
        /// Instance name.
        name: String,
        /// Provisioner plugin.
        #[arg(long)]
        plugin: String,
        /// Cluster (from the server's `[[kube.clusters]]`).
        #[arg(long)]
        cluster: String,
        /// The spec: a JSON file, or `-` for standard input.
        #[arg(long)]
        spec: PathBuf,
        /// Owning project (default: the token's only project).
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Apply a reviewed plan; prints progress per wave.
    Apply {
        /// Instance name.
        name: String,
        /// Plan id (from `provision plan`).
        plan: String,
        /// Take over fields other field managers own.
        #[arg(long)]
        force: bool,
        /// Delete and re-create objects whose change touches an immutable field.
        #[arg(long)]
        recreate: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show an instance: state, drift and its last apply or destroy.
    Status {
        /// Instance name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete the instance's objects in reverse wave order.
    Destroy {
        /// Instance name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

async fn call(
    remote: &Remote,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut rb = remote.request(&remote.client()?, method, path);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb
        .send()
        .await
        .context("request failed; is the server running? (see --server)")?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn fail(status: u16, body: &Value) -> anyhow::Error {
    let msg = body["error"]["message"].as_str().unwrap_or("");
    let details = &body["error"]["details"];
    if details.is_null() {
        anyhow::anyhow!("server answered {status}: {msg}")
    } else {
        anyhow::anyhow!(
            "server answered {status}: {msg}\n{}",
            serde_json::to_string_pretty(details).unwrap_or_default()
        )
    }
}

/// A plan as `kubectl diff` shows it, then a summary.
pub(super) fn render_plan(plan: &Value) -> String {
    let mut out = String::new();
    for o in plan["objects"].as_array().into_iter().flatten() {
        let label = format!(
            "{}/{} {}{}",
            o["api_version"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
            o["namespace"]
                .as_str()
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            o["name"].as_str().unwrap_or("")
        );
        out.push_str(&format!(
            "# {label}: {}\n",
            o["verdict"].as_str().unwrap_or("")
        ));
        for (key, what) in [("note", "note"), ("immutable", "immutable field")] {
            if let Some(n) = o[key].as_str() {
                out.push_str(&format!("#   {what}: {n}\n"));
            }
        }
        for c in o["conflicts"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "#   conflict: {} owns {}\n",
                c["manager"].as_str().unwrap_or(""),
                c["field"].as_str().unwrap_or("")
            ));
        }
        if let Some(d) = o["diff"].as_str().filter(|d| !d.is_empty()) {
            out.push_str(&format!("diff -u -N live/{label} merged/{label}\n{d}"));
            if !d.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    for k in plan["kept"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "# kept {} {}: {}\n",
            k["kind"].as_str().unwrap_or(""),
            k["name"].as_str().unwrap_or(""),
            k["note"].as_str().unwrap_or("")
        ));
    }
    let summary: Vec<String> = plan["summary"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    out.push_str(&format!(
        "plan {}: {}\n",
        plan["id"].as_str().unwrap_or(""),
        summary.join(", ")
    ));
    out
}

/// Prints a job's progress lines from `from`; returns how many there are.
fn print_progress(job: &Value, from: usize) -> usize {
    let lines = job["progress"].as_array().cloned().unwrap_or_default();
    for l in lines.iter().skip(from) {
        println!(
            "{:<28} {}",
            l["step"].as_str().unwrap_or(""),
            l["message"].as_str().unwrap_or("")
        );
    }
    lines.len()
}

async fn follow(
    remote: &Remote,
    mut job: Value,
    poll: impl Fn(&Value) -> String,
) -> anyhow::Result<Value> {
    let mut seen = print_progress(&job, 0);
    while matches!(job["state"].as_str(), Some("queued" | "running")) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = call(remote, Method::GET, &poll(&job), None).await?;
        if status != 200 {
            return Err(fail(status, &body));
        }
        job = if body.get("job").is_some() {
            body["job"].clone()
        } else {
            body["last_job"].clone()
        };
        seen = print_progress(&job, seen);
    }
    Ok(job)
}

pub(super) async fn provision(cmd: ProvisionCommand) -> anyhow::Result<()> {
    match cmd {
        ProvisionCommand::Plan {
            name,
            plugin,
            cluster,
            spec,
            project,
            remote,
        } => {
            let text = if spec.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&spec)
                    .with_context(|| format!("reading {}", spec.display()))?
            };
            let spec: Value = serde_json::from_str(&text).context("the spec must be JSON")?;
            let body = json!({ "name": name, "plugin": plugin, "cluster": cluster, "spec": spec, "project": project });
            let (status, b) = call(&remote, Method::POST, "/v1/provisions", Some(body)).await?;
            if !(200..300).contains(&status) {
                return Err(fail(status, &b));
            }
            let (status, plan) = call(
                &remote,
                Method::POST,
                &format!("/v1/provisions/{name}/plans"),
                None,
            )
            .await?;
            if status != 201 {
                return Err(fail(status, &plan));
            }
            print!("{}", render_plan(&plan));
            Ok(())
        }
        ProvisionCommand::Apply {
            name,
            plan,
            force,
            recreate,
            remote,
        } => {
            let path = format!("/v1/provisions/{name}/plans/{plan}/apply");
            let (status, job) = call(
                &remote,
                Method::POST,
                &path,
                Some(json!({ "force": force, "recreate": recreate })),
            )
            .await?;
            if !(200..300).contains(&status) {
                return Err(fail(status, &job));
            }
            if job["state"] == "awaiting-approval" {
                println!(
                    "plan {plan} awaits approval: see `capstan approvals` (kind provision-plan)"
                );
                return Ok(());
            }
            let done = follow(&remote, job, |_| {
                format!("/v1/provisions/{name}/plans/{plan}")
            })
            .await?;
            match done["state"].as_str() {
                Some("done") => Ok(()),
                other => bail!(
                    "apply {}: {}",
                    other.unwrap_or("?"),
                    done["result"]["message"].as_str().unwrap_or("")
                ),
            }
        }
        ProvisionCommand::Status { name, remote } => {
            let (status, i) = call(
                &remote,
                Method::GET,
                &format!("/v1/provisions/{name}"),
                None,
            )
            .await?;
            if status != 200 {
                return Err(fail(status, &i));
            }
            println!(
                "{name}: {} on {} (plugin {}, project {}, spec revision {})",
                i["state"].as_str().unwrap_or(""),
                i["cluster"].as_str().unwrap_or(""),
                i["plugin"].as_str().unwrap_or(""),
                i["project"].as_str().unwrap_or(""),
                i["revision"]
            );
            println!("drift: {}", i["drift"].as_str().unwrap_or(""));
            if let Some(d) = i["detail"].as_str().filter(|d| !d.is_empty()) {
                println!("detail: {d}");
            }
            if i["last_job"].is_object() {
                println!(
                    "last {} ({}):",
                    i["last_job"]["kind"].as_str().unwrap_or(""),
                    i["last_job"]["state"].as_str().unwrap_or("")
                );
                print_progress(&i["last_job"], 0);
            }
            Ok(())
        }
        ProvisionCommand::Destroy { name, remote } => {
            let path = format!("/v1/provisions/{name}/destroy");
            let (status, job) = call(&remote, Method::POST, &path, Some(json!({}))).await?;
            if !(200..300).contains(&status) {
                return Err(fail(status, &job));
            }
            if job["state"] == "awaiting-approval" {
                println!(
                    "destroy of {name} awaits approval {}: see `capstan approvals` (kind provision-destroy)",
                    job["result"]["approval"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            let done = follow(&remote, job, |_| format!("/v1/provisions/{name}")).await?;
            match done["state"].as_str() {
                Some("done") => Ok(()),
                _ => bail!(
                    "{}",
                    done["result"]["message"]
                        .as_str()
                        .or(done["result"]["terminating"]
                            .as_array()
                            .map(|_| "objects are still terminating"))
                        .unwrap_or("destroy did not finish")
                ),
            }
        }
    }
}
