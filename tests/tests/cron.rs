//! Cron triggers end to end, on the real binary: an every-second schedule
//! starts one run per due time; after `kill -9` and a restart no due time
//! runs twice and the time missed starts one run, not a storm; two replicas
//! on one PostgreSQL fire each due time once, also when one is killed.

use std::time::{Duration, Instant};

use capstan_tests::procs::Capstan;

/// The cron runs of `pipeline` on the process at `base`: when each was
/// created and its due time, oldest run first.
async fn cron_runs(base: &str, pipeline: &str) -> Vec<(i64, i64)> {
    let body =
        capstan_tests::procs::get_json(base, &format!("/v1/runs?pipeline={pipeline}&limit=500"))
            .await;
    let mut runs: Vec<(i64, i64)> = body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["run"]["trigger"]["kind"] == "cron")
        .map(|r| {
            assert_eq!(r["run"]["started_by"], "cron");
            let due = r["run"]["trigger"]["due_ms"].as_i64().unwrap();
            (r["created_ms"].as_i64().unwrap(), due)
        })
        .collect();
    runs.sort();
    runs
}

async fn wait_runs(proc: &Capstan, pipeline: &str, at_least: usize) -> Vec<(i64, i64)> {
    // Long enough for a replica to take over an expired scheduler lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dues = cron_runs(&proc.url(), pipeline).await;
        if dues.len() >= at_least {
            return dues;
        }
        assert!(
            Instant::now() < deadline,
            "only {} cron runs: {dues:?}\n{}",
            dues.len(),
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Uploads the `step` plugin to `base` and stores `tick`, a pipeline that
/// runs every second.
async fn every_second(base: &str) {
    let yaml = "name: tick\ntriggers:\n  - cron: {schedule: \"* * * * * *\", timezone: Europe/Berlin}\nsteps:\n  - {id: a, plugin: step, params: {}}\n";
    capstan_tests::procs::step_and_pipeline(base, "tick", yaml).await;
}

/// An every-second schedule starts a run per second; after `kill -9` and a
/// restart no due time runs twice, and the seconds missed while the server
/// was down start one run, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_each_due_time_once_across_a_kill_9_and_catches_up_once() {
    let proc = Capstan::start(None, &[]);
    proc.wait_ready().await;
    every_second(&proc.url()).await;
    let mut proc = proc;
    let before = wait_runs(&proc, "tick", 3).await;
    let dir = proc.kill_9();
    let killed_ms = now_ms();
    // Let at least three due times pass while nothing runs.
    while now_ms() < killed_ms + 3_500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted_ms = now_ms();
    let proc = Capstan::start(Some(dir), &[]);
    proc.wait_ready().await;
    let runs = wait_runs(&proc, "tick", before.len() + 3).await;
    let dues: Vec<i64> = runs.iter().map(|(_, due)| *due).collect();

    // Each due time ran once, and in order.
    let mut sorted = dues.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, dues, "a due time ran twice, or out of order");
    assert!(
        dues.iter().all(|d| d % 1000 == 0),
        "{dues:?}\n{}",
        proc.log()
    );
    // The downtime (at least three due times) started one run.
    let last = runs
        .iter()
        .filter(|(created, _)| *created < killed_ms)
        .map(|(_, due)| *due)
        .max()
        .unwrap();
    let missed: Vec<&i64> = dues
        .iter()
        .filter(|d| **d > last && **d < restarted_ms)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "one catch-up run: {dues:?}, last before the kill {last}, restarted at {restarted_ms}\n{}",
        proc.log()
    );
    assert!(
        dues.iter().filter(|d| **d >= restarted_ms).count() >= 2,
        "and on schedule again: {dues:?}"
    );
    // Each run's start is audited, in the run's own transaction: the kill
    // left no run without its record, and no record without its run.
    let base = proc.url();
    let listed = capstan_tests::procs::get_json(&base, "/v1/runs?pipeline=tick&limit=500").await;
    let audit =
        capstan_tests::procs::get_json(&base, "/v1/audit?capability=change&limit=1000").await;
    let mut audited: Vec<(String, i64)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verb"] == "run.start" && r["actor"] == "cron")
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["detail"]["due_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut started: Vec<(String, i64)> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["run"]["id"].as_str().unwrap().to_string(),
                r["run"]["trigger"]["due_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    // Runs that fire between the two reads are left out.
    let known = *dues.last().unwrap();
    audited.retain(|(_, due)| *due <= known);
    started.retain(|(_, due)| *due <= known);
    audited.sort();
    started.sort();
    assert_eq!(audited, started);
}

/// Two replicas on one PostgreSQL: each due time starts one run, and when
/// one replica is killed the other carries on (after the scheduler lease
/// expires) without running a due time twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_due_time_once_and_one_takes_over_from_the_other() {
    let Some(db) = capstan::store::testing::PgDatabase::create() else {
        assert!(
            std::env::var("CAPSTAN_REQUIRE_PG").as_deref() != Ok("1"),
            "CAPSTAN_REQUIRE_PG=1 but CAPSTAN_TEST_PG is not set"
        );
        eprintln!("note: CAPSTAN_TEST_PG is not set; the replica test needs PostgreSQL");
        return;
    };
    let env = [("CAPSTAN_DATABASE", db.url.as_str())];
    let mut replicas = [Capstan::start(None, &env), Capstan::start(None, &env)];
    for r in &replicas {
        r.wait_ready().await;
    }
    every_second(&replicas[0].url()).await;
    let before = wait_runs(&replicas[1], "tick", 4).await;
    // Kill the replica that runs the scheduler.
    let holder = scheduler(&db.url);
    let ids: Vec<String> = replicas
        .iter()
        .map(|r| {
            std::fs::read_to_string(r.dir.as_ref().unwrap().path().join("replica-id")).unwrap()
        })
        .collect();
    let killed = ids
        .iter()
        .position(|id| id.trim() == holder)
        .expect("a replica holds the lease");
    replicas[killed].kill_9();
    let survivor = &replicas[1 - killed];
    let runs = wait_runs(survivor, "tick", before.len() + 3).await;
    assert_eq!(
        scheduler(&db.url),
        ids[1 - killed].trim(),
        "the survivor took over"
    );
    let dues: Vec<i64> = runs.iter().map(|(_, due)| *due).collect();
    let mut sorted = dues.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, dues, "a due time ran twice, or out of order");
}

/// The replica holding the scheduler's lease.
fn scheduler(url: &str) -> String {
    let url = url.to_string();
    capstan::store::blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one(
            "SELECT holder FROM leases WHERE name = 'pipelines/cron'",
            &[],
        )
        .unwrap()
        .get(0)
    })
}
