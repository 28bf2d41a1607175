//! Command-line interface: `serve`, and `plugin` subcommands for authors and
//! operators (scaffold, upload, list, invoke, activate, roll back).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::ServerConfig;
use crate::manifest::Role;

#[path = "cli_alerts.rs"]
mod alerts;
#[path = "cli_notify.rs"]
mod notify;
#[path = "cli_pipelines.rs"]
mod pipelines;
#[path = "cli_provision.rs"]
mod provision;
#[path = "cli_trust.rs"]
mod trust;

/// Capstan: an automation server that runs sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Manage API tokens (needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage projects, which own plugins.
    #[command(subcommand)]
    Project(trust::ProjectCommand),
    /// Manage grant ceilings: what may be granted without approval.
    #[command(subcommand)]
    Ceiling(trust::CeilingCommand),
    /// Review versions held for approval.
    #[command(subcommand)]
    Approval(trust::ApprovalCommand),
    /// Deploy pipelines: store, list, start runs.
    #[command(subcommand)]
    Pipeline(pipelines::PipelineCommand),
    /// Pipeline runs: show, follow the log, cancel, rerun.
    #[command(subcommand)]
    Run(pipelines::RunCommand),
    /// Alert groups received from Alertmanager, what handlers did, routes.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Notification channels, test-sends and delivery receipts.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// Provisioned instances: plan (with diffs), apply, status, destroy.
    #[command(subcommand)]
    Provision(provision::ProvisionCommand),
    /// Maintain the secrets store (offline, on the data directory).
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-encrypt every secret under a new key and swap it into the key file.
    /// Runs on the data directory with the server stopped; a crash at any
    /// point leaves a state the server starts from.
    RotateKey {
        /// TOML config file (for data_dir and secrets_key_file).
        #[arg(long, env = "CAPSTAN_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory.
        #[arg(long, env = "CAPSTAN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The key file (default: <data-dir>/secrets.key).
        #[arg(long, env = "CAPSTAN_SECRETS_KEY_FILE")]
        secrets_key_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "CAPSTAN_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address.
    #[arg(long, env = "CAPSTAN_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (database, blobs, compiled artifacts).
    #[arg(long, env = "CAPSTAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database: `sqlite` (default, in the data directory) or a
    /// `postgres://user:password@host:port/db` URL shared by replicas.
    #[arg(long, env = "CAPSTAN_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Watched plugins directory (default: <data-dir>/plugins).
    #[arg(long, env = "CAPSTAN_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Watched pipelines directory (default: <data-dir>/pipelines).
    #[arg(long, env = "CAPSTAN_PIPELINES_DIR")]
    pipelines_dir: Option<PathBuf>,
    /// Do not install the bundled example plugins on first start.
    #[arg(long)]
    no_bundled: bool,
    /// Log JSON lines instead of text.
    #[arg(long, env = "CAPSTAN_LOG_JSON")]
    log_json: bool,
    /// Secrets encryption key (32 bytes, base64). Prefer a key file.
    #[arg(long, env = "CAPSTAN_SECRETS_KEY", hide_env_values = true)]
    secrets_key: Option<String>,
    /// File holding the secrets key (default: <data-dir>/secrets.key).
    #[arg(long, env = "CAPSTAN_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// The admin API token (stored hashed as `bootstrap-admin`). Without it,
    /// and without any admin token yet, one is generated and printed once.
    /// Prefer the environment variable: arguments are visible to other users.
    #[arg(long, env = "CAPSTAN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// PEM certificate chain: serve the API over HTTPS (with --tls-key).
    #[arg(long, env = "CAPSTAN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CAPSTAN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve `/metrics` without a token (`true`, the default) or only to a
    /// `viewer` token (`false`); overrides `[api] metrics_public`.
    #[arg(long, env = "CAPSTAN_METRICS_PUBLIC")]
    metrics_public: Option<bool>,
}

#[derive(clap::Args)]
struct Remote {
    /// Server URL (`http://` or `https://`).
    #[arg(long, env = "CAPSTAN_URL", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// PEM file of the CA certificate(s) to trust for an https server,
    /// instead of the system's roots (for a private CA or a self-signed
    /// server certificate).
    #[arg(long, env = "CAPSTAN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// API token, sent as `Authorization: Bearer`. Prefer the environment
    /// variable: arguments are visible to other users.
    #[arg(long, env = "CAPSTAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// Token name (1-64 of [A-Za-z0-9._-]).
        name: String,
        /// Global role: viewer, operator or admin.
        #[arg(long)]
        role: Option<String>,
        /// A role in one project, as PROJECT=ROLE (repeatable), e.g. team-a=operator.
        #[arg(long = "project", value_name = "PROJECT=ROLE")]
        projects: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token.
    Revoke {
        /// Token name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Scaffold a plugin crate for a role.
    New {
        /// provisioner, deploy-step, metrics-source or alert-handler.
        role: Role,
        /// Plugin name (lowercase letters, digits, `-`).
        name: String,
        /// Parent directory of the new crate.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the capstan-sdk crate (default: the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Upload a plugin version (and activate it unless --no-activate).
    Upload {
        /// The manifest (capstan.toml).
        #[arg(long)]
        manifest: PathBuf,
        /// The component (.wasm).
        #[arg(long)]
        component: PathBuf,
        /// Store without activating.
        #[arg(long)]
        no_activate: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List plugins.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Invoke a plugin with a JSON body (`-` reads stdin, `@file` reads a file).
    Invoke {
        /// Plugin name.
        name: String,
        /// JSON body.
        #[arg(long, default_value = "{}")]
        data: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a stored version active.
    Activate {
        /// Plugin name.
        name: String,
        /// Version.
        version: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Return to the previously active version.
    Rollback {
        /// Plugin name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Plugin(PluginCommand::New {
            role,
            name,
            dir,
            sdk,
        }) => {
            let path = crate::scaffold::new_plugin(role, &name, &dir, sdk.as_deref())?;
            println!("created {}", path.display());
            println!(
                "build it:  cd {} && cargo build --target wasm32-wasip2 --release",
                path.display()
            );
            println!(
                "load it:   copy target/wasm32-wasip2/release/{}.wasm and capstan.toml into the plugins directory",
                name.replace('-', "_")
            );
            Ok(())
        }
        Command::Plugin(cmd) => tokio::runtime::Runtime::new()?.block_on(remote(cmd)),
        Command::Token(cmd) => tokio::runtime::Runtime::new()?.block_on(token(cmd)),
        Command::Project(cmd) => tokio::runtime::Runtime::new()?.block_on(trust::project(cmd)),
        Command::Ceiling(cmd) => tokio::runtime::Runtime::new()?.block_on(trust::ceiling(cmd)),
        Command::Approval(cmd) => tokio::runtime::Runtime::new()?.block_on(trust::approval(cmd)),
        Command::Pipeline(cmd) => {
            tokio::runtime::Runtime::new()?.block_on(pipelines::pipeline(cmd))
        }
        Command::Run(cmd) => tokio::runtime::Runtime::new()?.block_on(pipelines::run(cmd)),
        Command::Alerts(cmd) => tokio::runtime::Runtime::new()?.block_on(alerts::alerts(cmd)),
        Command::Notify(cmd) => tokio::runtime::Runtime::new()?.block_on(notify::notify(cmd)),
        Command::Provision(cmd) => {
            tokio::runtime::Runtime::new()?.block_on(provision::provision(cmd))
        }
        Command::Secrets(SecretsCommand::RotateKey {
            config,
            data_dir,
            secrets_key_file,
        }) => rotate_key(config, data_dir, secrets_key_file),
    }
}

/// `capstan secrets rotate-key`: offline, holding the data directory.
fn rotate_key(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    use crate::capabilities::secrets::{KeySource, rotate_key};
    let mut config = match &config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    if key_file.is_some() {
        config.secrets_key_file = key_file;
    }
    if std::env::var_os("CAPSTAN_SECRETS_KEY").is_some() || config.secrets_key.is_some() {
        bail!(
            "the secrets key is given inline (CAPSTAN_SECRETS_KEY / secrets_key); rotate-key \
             rotates a key file: move the key into a file (secrets_key_file) first"
        );
    }
    crate::server::init_tracing(false);
    let _lock = crate::store::DataDirLock::acquire(&config.data_dir)?;
    let store = config
        .open_store()
        .with_context(|| format!("opening {}", config.data_dir.display()))?;
    let KeySource::File(path) =
        KeySource::resolve(None, config.secrets_key_file.as_deref(), &config.data_dir)?
    else {
        unreachable!("no inline key")
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let n = rotate_key(&path, &store, &format!("cli:{user}"))?;
    println!(
        "re-encrypted {n} secrets under a new key, now in {}",
        path.display()
    );
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if args.database.is_some() {
        config.database = args.database;
    }
    if let Some(d) = args.plugins_dir {
        config.plugins_dir = Some(d);
    }
    if let Some(d) = args.pipelines_dir {
        config.pipelines_dir = Some(d);
    }
    config.bundled_plugins &= !args.no_bundled;
    config.log_json |= args.log_json;
    if args.secrets_key.is_some() {
        config.secrets_key = args.secrets_key;
    }
    if args.secrets_key_file.is_some() {
        config.secrets_key_file = args.secrets_key_file;
    }
    if args.admin_token.is_some() {
        config.admin_token = args.admin_token;
    }
    if args.tls_cert.is_some() {
        config.api.tls_cert = args.tls_cert;
        config.api.tls_key = args.tls_key;
    }
    if let Some(public) = args.metrics_public {
        config.api.metrics_public = public;
    }
    crate::server::init_tracing(config.log_json);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let server = crate::server::Server::start(config).await?;
        server.run_until_signal().await
    })
}

impl Remote {
    /// The HTTP client: http, or https with rustls (ring) verifying the
    /// server against the system's roots or, with `--ca-cert`, that CA only.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        // reqwest is built without a crypto provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing the CA certificate {}", path.display()))?;
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            builder = builder.tls_certs_only(certs);
        }
        builder.build().context("building the HTTP client")
    }

    /// A request to `path` with the token attached.
    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let rb = client.request(
            method,
            format!("{}{path}", self.server.trim_end_matches('/')),
        );
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let response = match cmd {
        TokenCommand::Create {
            name,
            role,
            projects,
            remote,
        } => {
            let mut roles = serde_json::Map::new();
            for p in &projects {
                let (project, role) = p
                    .split_once('=')
                    .with_context(|| format!("--project `{p}`: write PROJECT=ROLE"))?;
                roles.insert(project.into(), role.into());
            }
            let role = match (role, roles.is_empty()) {
                (None, true) => Some("viewer".to_string()),
                (role, _) => role,
            };
            remote
                .request(&remote.client()?, Method::POST, "/v1/tokens")
                .json(&serde_json::json!({ "name": name, "role": role, "projects": roles }))
                .send()
                .await
        }
        TokenCommand::List { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/tokens")
                .send()
                .await
        }
        TokenCommand::Revoke { name, remote } => {
            remote
                .request(
                    &remote.client()?,
                    Method::DELETE,
                    &format!("/v1/tokens/{name}"),
                )
                .send()
                .await
        }
    };
    print_response(response).await
}

async fn remote(cmd: PluginCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let response = match cmd {
        PluginCommand::New { .. } => unreachable!("handled locally"),
        PluginCommand::Upload {
            manifest,
            component,
            no_activate,
            remote,
        } => {
            let manifest = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let component = std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?;
            let form = reqwest::multipart::Form::new()
                .text("manifest", manifest)
                .part(
                    "component",
                    reqwest::multipart::Part::bytes(component).file_name("plugin.wasm"),
                );
            remote
                .request(
                    &remote.client()?,
                    Method::POST,
                    &format!("/v1/plugins?activate={}", !no_activate),
                )
                .multipart(form)
                .send()
                .await
        }
        PluginCommand::List { remote } => {
            remote
                .request(&remote.client()?, Method::GET, "/v1/plugins")
                .send()
                .await
        }
        PluginCommand::Invoke { name, data, remote } => {
            let body = match data.as_str() {
                "-" => std::io::read_to_string(std::io::stdin())?,
                d if d.starts_with('@') => std::fs::read_to_string(&d[1..])
                    .with_context(|| format!("reading {}", &d[1..]))?,
                d => d.to_string(),
            };
            remote
                .request(
                    &remote.client()?,
                    Method::POST,
                    &format!("/v1/plugins/{name}/invoke"),
                )
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        }
        PluginCommand::Activate {
            name,
            version,
            remote,
        } => {
            remote
                .request(
                    &remote.client()?,
                    Method::PUT,
                    &format!("/v1/plugins/{name}/active"),
                )
                .json(&serde_json::json!({ "version": version }))
                .send()
                .await
        }
        PluginCommand::Rollback { name, remote } => {
            remote
                .request(
                    &remote.client()?,
                    Method::POST,
                    &format!("/v1/plugins/{name}/rollback"),
                )
                .send()
                .await
        }
    };
    print_response(response).await
}

async fn print_response(response: reqwest::Result<reqwest::Response>) -> anyhow::Result<()> {
    let response = response.context("request failed; is the server running? (see --server)")?;
    let status = response.status();
    let text = response.text().await?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or(text);
    println!("{pretty}");
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("server answered {status}: pass an API token with --token or CAPSTAN_TOKEN");
    }
    if !status.is_success() {
        bail!("server answered {status}");
    }
    Ok(())
}
