//! The real `capstan` binary as a user runs it: the CLI against a server
//! serving HTTPS (a self-signed certificate trusted with `--ca-cert` or
//! `CAPSTAN_CA_CERT`), and `serve --metrics-public false`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TOKEN: &str = "cli-test-admin-token";

mod common;

use common::{Proc, free_port};

/// A self-signed end-entity certificate for 127.0.0.1 and localhost, made
/// with the `openssl` command in `dir`; returns (cert, key) PEM paths.
fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key, config) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("openssl.cnf"),
    );
    std::fs::write(
        &config,
        "[req]\ndistinguished_name = dn\nx509_extensions = leaf\nprompt = no\n\
         [dn]\nCN = localhost\n\
         [leaf]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .unwrap();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-config",
        ])
        .arg(&config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command is needed to make a test certificate");
    assert!(out.status.success(), "openssl: {out:?}");
    (cert, key)
}

/// Starts `capstan serve` (no bundled plugins) with `extra` flags and
/// `env`, and waits until `client` gets 200 from `/healthz`.
async fn serve(
    data: &Path,
    scheme: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    client: &reqwest::Client,
) -> Proc {
    serve_with(
        data,
        scheme,
        &[&["--no-bundled"], extra].concat(),
        env,
        client,
    )
    .await
}

/// [`serve`] with the bundled plugins unless `extra` says `--no-bundled`.
async fn serve_with(
    data: &Path,
    scheme: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    client: &reqwest::Client,
) -> Proc {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .envs(env.iter().copied())
        .env("CAPSTAN_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start capstan");
    let proc = Proc {
        child,
        url: format!("{scheme}://127.0.0.1:{port}"),
    };
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("{}/healthz", proc.url)).send().await
            && r.status() == 200
        {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("capstan did not answer on {}", proc.url);
}

/// Runs the CLI with `args` and `env`, off the async runtime.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args(args).env_remove("CAPSTAN_CA_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn cli_speaks_https_with_a_private_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(certs.path());
    let trusting = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let proc = serve(
        data.path(),
        "https",
        &["--tls-cert", cert_s, "--tls-key", key_s],
        &[],
        &trusting,
    )
    .await;
    let url = proc.url.as_str();
    let token = [("CAPSTAN_TOKEN", TOKEN)];

    // Trusting the server's certificate: --ca-cert, or CAPSTAN_CA_CERT.
    let out = cli(
        &["plugin", "list", "--server", url, "--ca-cert", cert_s],
        &token,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"plugins\""),
        "{}",
        text(&out)
    );
    let with_env = [
        ("CAPSTAN_TOKEN", TOKEN),
        ("CAPSTAN_CA_CERT", cert_s),
        ("CAPSTAN_URL", url),
    ];
    let out = cli(&["token", "create", "ci", "--role", "operator"], &with_env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cap_"),
        "{}",
        text(&out)
    );
    let out = cli(&["token", "list"], &with_env).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"ci\""),
        "{}",
        text(&out)
    );

    // Not trusting it (the system's roots do not hold it): refused, no request made.
    let out = cli(&["plugin", "list", "--server", url], &token).await;
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("issuer"),
        "{}",
        text(&out)
    );
    // A file without a certificate is a clear error.
    let out = cli(
        &["plugin", "list", "--server", url, "--ca-cert", key_s],
        &token,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no PEM certificate"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn serve_flag_makes_metrics_need_a_viewer_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    // (flags, environment, status of an anonymous scrape)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], u16);
    let cases: [Case<'_>; 3] = [
        (&["--metrics-public", "false"], &[], 401),
        (&[], &[("CAPSTAN_METRICS_PUBLIC", "false")], 401),
        (&[], &[], 200),
    ];
    for (flags, env, anonymous) in cases {
        let data = tempfile::tempdir().unwrap();
        let proc = serve(data.path(), "http", flags, env, &client).await;
        let metrics = format!("{}/metrics", proc.url);
        let r = client.get(&metrics).send().await.unwrap();
        assert_eq!(r.status(), anonymous, "{flags:?} {env:?}");
        let r = client
            .get(&metrics)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("capstan_plugins_loaded"));
    }
}

#[tokio::test]
async fn a_pipeline_is_stored_run_and_its_log_followed_from_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let client = common::client();
    let proc = serve_with(data.path(), "http", &[], &[], &client).await;
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{}/readyz", proc.url)).send().await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file = data.path().join("render.yaml");
    std::fs::write(
        &file,
        "name: render\nparams:\n  image: {type: string, default: \"nginx:1.27\"}\nsteps:\n  - id: render\n    plugin: render-deployment\n    params: {name: web, image: \"${{ params.image }}\", replicas: 1, port: 80}\n",
    )
    .unwrap();
    let env = [("CAPSTAN_URL", proc.url.as_str()), ("CAPSTAN_TOKEN", TOKEN)];
    let out = cli(&["pipeline", "put", file.to_str().unwrap()], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"revision\": 1"), "{}", text(&out));
    let out = cli(
        &["pipeline", "run", "render", "--param", "image=nginx:1.28"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(run["run"]["params"]["image"], "nginx:1.28");
    let out = cli(&["run", "log", &id, "--follow"], &env).await;
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("[render] attempt 1 started"), "{log}");
    assert!(
        log.contains(&format!("run {id} finished: succeeded")),
        "{log}"
    );
    // A gated pipeline: `run start`, `run approve` (not by its starter),
    // `run watch` until it succeeds.
    std::fs::write(
        &file,
        "name: gated\nsteps:\n  - {id: gate, approval: {approvers: {role: admin}}}\n  - {id: render, plugin: render-deployment, needs: [gate], params: {name: web, image: \"nginx:1\", replicas: 1, port: 80}}\n",
    )
    .unwrap();
    assert!(
        cli(&["pipeline", "put", file.to_str().unwrap()], &env)
            .await
            .status
            .success()
    );
    let out = cli(&["run", "start", "gated"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gated = run["run"]["id"].as_str().unwrap().to_string();
    let approve = loop {
        let out = cli(&["run", "approve", &gated, "--comment", "mine"], &env).await;
        if !text(&out).contains("no pending approval gate") {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !approve.status.success(),
        "the starter may not approve: {}",
        text(&approve)
    );
    assert!(text(&approve).contains("403"), "{}", text(&approve));
    let out = cli(
        &["token", "create", "second-admin", "--role", "admin"],
        &env,
    )
    .await;
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env2 = [
        ("CAPSTAN_URL", proc.url.as_str()),
        ("CAPSTAN_TOKEN", second["token"].as_str().unwrap()),
    ];
    let out = cli(&["run", "approve", &gated, "--comment", "ship it"], &env2).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&["run", "watch", &gated], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let watched = text(&out);
    assert!(
        watched.contains("render") && watched.contains(&format!("run {gated}: succeeded")),
        "{watched}"
    );
    let out = cli(&["run", "logs", "-f", &gated], &env).await;
    assert!(
        text(&out).contains("approved by token:second-admin"),
        "{}",
        text(&out)
    );
    // A bad file is refused with the reason.
    std::fs::write(&file, "name: render\nsteps: [{id: a, plugin: nosuch}]\n").unwrap();
    let out = cli(&["pipeline", "put", file.to_str().unwrap()], &env).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("nosuch"), "{}", text(&out));
}

/// A test-send through a channel whose endpoint does not answer fails
/// loudly (no "test OK but nothing arrived"), and its receipt is listed.
#[tokio::test]
async fn notify_channels_test_sends_and_receipts_from_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let client = common::client();
    let proc = serve(data.path(), "http", &[], &[], &client).await;
    let env = [("CAPSTAN_URL", proc.url.as_str()), ("CAPSTAN_TOKEN", TOKEN)];
    // Nothing listens on this port: the webhook cannot be delivered.
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let r = client
        .put(format!("{}/v1/secrets/hook-url", proc.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "value": dead }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let spec = data.path().join("hook.json");
    std::fs::write(
        &spec,
        r#"{"name": "hook", "project": "default", "type": "webhook", "webhook_secret": "hook-url"}"#,
    )
    .unwrap();
    let out = cli(
        &["notify", "channel-put", "hook", spec.to_str().unwrap()],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&["notify", "channels"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"hook\""), "{}", text(&out));
    assert!(
        !text(&out).contains(&dead),
        "the URL is a secret: {}",
        text(&out)
    );

    let out = cli(&["notify", "test", "hook"], &env).await;
    assert!(
        !out.status.success(),
        "a failed test-send fails: {}",
        text(&out)
    );
    let out = cli(&["notify", "deliveries", "--channel", "hook"], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deliveries = listed["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{listed:#}");
    assert_ne!(deliveries[0]["status"], "sent", "{listed:#}");
    let id = deliveries[0]["id"].as_str().unwrap();
    let out = cli(&["notify", "delivery", id], &env).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("attempts"), "{}", text(&out));
}
