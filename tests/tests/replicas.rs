//! Two `capstan` processes sharing one PostgreSQL, behind a real HAProxy
//! (Debian's), as the platform team runs it: changes made on one replica
//! serve on the other, and a replica killed with `kill -9` under load fails
//! over without losing an acknowledged upload or activation.
//!
//! Needs `CAPSTAN_TEST_PG` (tests/run.sh starts a PostgreSQL) and HAProxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstan::store::testing::PgDatabase;
use capstan_tests::procs::{Capstan, TOKEN};
use capstan_tests::{client, guest, guests, manifest, peers};
use serde_json::{Value, json};

/// A replica on the shared database.
fn replica(db: &str) -> Capstan {
    Capstan::start(None, &[("CAPSTAN_DATABASE", db)])
}

async fn upload(base: &str, version: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("manifest", manifest("step", version, "deploy-step", ""))
        .part(
            "component",
            reqwest::multipart::Part::bytes(guest(guests::FAULT_STEP)),
        );
    match client()
        .post(format!("{base}/v1/plugins"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
    {
        Ok(r) => capstan_tests::status_json(r).await,
        Err(e) => (0, json!({ "transport": e.to_string() })),
    }
}

/// Invokes `step`; the version that served, or why it failed.
async fn invoke(base: &str) -> Result<String, String> {
    let r = client()
        .post(format!("{base}/v1/plugins/step/invoke"))
        .bearer_auth(TOKEN)
        .json(&json!({ "params": { "echo": 1 } }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let (status, body) = capstan_tests::status_json(r).await;
    match body["invocation"]["version"].as_str() {
        Some(v) if status == 200 => Ok(v.to_string()),
        _ => Err(format!("{status} {body}")),
    }
}

/// Calls `base` from `workers` tasks until `stop`; counts answers and
/// failures.
fn load(base: String, workers: usize, stop: Arc<AtomicBool>) -> Load {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks = (0..workers)
        .map(|_| {
            let (base, stop, ok, failed, errors) = (
                base.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match invoke(&base).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    Load {
        ok,
        failed,
        errors,
        tasks,
        stop,
    }
}

struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Waits until `base` serves `version` of `step`; returns how long it took.
async fn wait_serving(base: &str, version: &str) -> Duration {
    let started = Instant::now();
    loop {
        if invoke(base).await.as_deref() == Ok(version) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{base} never served step {version}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pg() -> Option<PgDatabase> {
    let db = PgDatabase::create();
    if db.is_none() {
        assert!(
            std::env::var("CAPSTAN_REQUIRE_PG").as_deref() != Ok("1"),
            "CAPSTAN_REQUIRE_PG=1 but CAPSTAN_TEST_PG is not set"
        );
        eprintln!("note: CAPSTAN_TEST_PG is not set; the replica tests need PostgreSQL");
    }
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_one_replica_serves_on_the_other_without_a_failed_call() {
    let Some(db) = pg() else { return };
    let (a, b) = (replica(&db.url), replica(&db.url));
    a.wait_ready().await;
    b.wait_ready().await;
    let (status, body) = upload(&a.url(), "1.0.0").await;
    assert_eq!(status, 201, "{body}");
    let first = wait_serving(&b.url(), "1.0.0").await;
    // Under load on b, a new version uploaded on a swaps in on b.
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(b.url(), 4, stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = upload(&a.url(), "2.0.0").await;
    assert_eq!(status, 201, "{body}");
    let swap = wait_serving(&b.url(), "2.0.0").await;
    // A rollback on b serves on a.
    let r = client()
        .post(format!("{}/v1/plugins/step/rollback", b.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rollback = wait_serving(&a.url(), "1.0.0").await;
    let (ok, failed, errors) = running.finish().await;
    eprintln!(
        "replica b served a's upload after {first:?}, a's new version after {swap:?}; \
         a served b's rollback after {rollback:?}; {ok} calls on b meanwhile, {failed} failed"
    );
    assert!(ok > 0);
    assert_eq!(failed, 0, "calls failed during the swap: {errors:?}");
    // A deletion on a unloads on b.
    let r = client()
        .delete(format!("{}/v1/plugins/step", a.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let started = Instant::now();
    while invoke(&b.url()).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "b still serves a deleted plugin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A token created on b works on a.
    let r = client()
        .post(format!("{}/v1/tokens", b.url()))
        .bearer_auth(TOKEN)
        .json(&json!({ "name": "made-on-b", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let secret = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    loop {
        let r = client()
            .get(format!("{}/v1/plugins", a.url()))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a never accepted b's token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_replica_under_load_fails_over_and_loses_no_acknowledged_change() {
    let Some(db) = pg() else { return };
    let (mut a, b) = (replica(&db.url), replica(&db.url));
    a.wait_ready().await;
    b.wait_ready().await;
    let lb = peers::haproxy(&[a.addr, b.addr], "/readyz").unwrap();
    lb.wait_until(|s| s.iter().all(|s| s.up())).unwrap();
    let (status, body) = upload(&lb.url(), "1.0.0").await;
    assert_eq!(status, 201, "{body}");
    wait_serving(&a.url(), "1.0.0").await;
    wait_serving(&b.url(), "1.0.0").await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(lb.url(), 8, stop);
    // Uploads (each activates a new version) go on through the balancer
    // while replica a dies.
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for i in 1..=20 {
        let version = format!("1.{i}.0");
        if i == 8 {
            let _ = a.kill_9();
        }
        match upload(&lb.url(), &version).await {
            (201, _) => acknowledged.push(version),
            (status, body) => refused.push(format!("{version}: {status} {body}")),
        }
    }
    lb.wait_until(|s| s.iter().any(|s| s.name == "replica0" && !s.up()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, errors) = running.finish().await;
    eprintln!(
        "failover: {ok} calls answered, {failed} failed through HAProxy while replica a was \
         killed; {} of 20 uploads acknowledged, refused: {refused:?}; failures: {errors:?}",
        acknowledged.len()
    );
    assert!(ok > 0);
    assert!(
        acknowledged.len() >= 19,
        "uploads kept working: {refused:?}"
    );
    // Every acknowledged upload is stored, and the last one is what serves.
    let r = client()
        .get(format!("{}/v1/plugins/step", lb.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let detail: Value = r.json().await.unwrap();
    let stored: Vec<&str> = detail["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("{detail}"))
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    for v in &acknowledged {
        assert!(
            stored.contains(&v.as_str()),
            "acknowledged {v} is lost: {stored:?}"
        );
    }
    let last = acknowledged.last().unwrap();
    assert_eq!(invoke(&lb.url()).await.as_deref(), Ok(last.as_str()));
    assert_eq!(invoke(&b.url()).await.as_deref(), Ok(last.as_str()));
}
