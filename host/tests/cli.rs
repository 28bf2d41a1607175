//! The real `capstan` binary as a user runs it: `serve --metrics-public false`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "cli-test-admin-token";

struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["serve", "--no-bundled", "--listen"])
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
