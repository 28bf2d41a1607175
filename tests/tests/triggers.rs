//! Push triggers end to end: webhooks of GitHub, GitLab and Gitea over real
//! HTTP, with the payloads each provider documents (`tests/fixtures/webhooks`)
//! signed by `openssl` as the provider would sign them. Cron triggers are in
//! `cron.rs`.

use std::time::{Duration, Instant};

use capstan_tests::{TestServer, client, guest, guests, manifest, status_json};
use reqwest::Method;
use serde_json::{Value, json};

const KV: &str = "[grants.kv]\nmax_bytes = 65536\nmax_value_bytes = 1024\n";
const GITHUB: &str = include_str!("../fixtures/webhooks/github-push.json");
const GITLAB: &str = include_str!("../fixtures/webhooks/gitlab-push.json");
const GITLAB_TAG: &str = include_str!("../fixtures/webhooks/gitlab-tag-push.json");
const GITEA: &str = include_str!("../fixtures/webhooks/gitea-push.json");

/// A server with the `step` test plugin and the secret `hook-secret`.
async fn server() -> TestServer {
    let server = TestServer::start().await;
    server
        .install(
            &manifest("step", "1.0.0", "deploy-step", KV),
            &guest(guests::PIPELINE_STEP),
        )
        .await;
    let (status, body) = server
        .send(
            Method::PUT,
            "/v1/secrets/hook-secret",
            Some(json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    server
}

const SECRET: &str = "webhook secret: 7f3a9c";

async fn put(server: &TestServer, name: &str, yaml: &str) {
    let r = server
        .request(Method::PUT, &format!("/v1/pipelines/{name}"))
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 201, "{body}");
}

/// A pipeline of one step whose outputs are the trigger's fields.
fn pipeline(name: &str, trigger: &str) -> String {
    format!(
        r#"
name: {name}
triggers:
  - {trigger}
steps:
  - id: show
    plugin: step
    params:
      outputs:
        repo: "${{{{ trigger.repo }}}}"
        branch: "${{{{ trigger.branch }}}}"
        tag: "${{{{ trigger.tag }}}}"
        sha: "${{{{ trigger.sha }}}}"
        pusher: "${{{{ trigger.pusher }}}}"
    outputs: [repo, branch, tag, sha, pusher]
"#
    )
}

/// The hex HMAC-SHA256 of `body` under `key`, computed by `openssl`.
fn hmac_hex(key: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-hex"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl command signs the test deliveries");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().last().unwrap().to_string()
}

/// Posts a delivery without any bearer token, as a provider does.
async fn deliver(
    server: &TestServer,
    provider: &str,
    pipeline: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut rb = client()
        .post(format!("{}/v1/hooks/{provider}/{pipeline}", server.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    status_json(rb.send().await.unwrap()).await
}

fn github(event: &str, delivery: &str, key: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("User-Agent", "GitHub-Hookshot/044aadd".into()),
        ("X-GitHub-Event", event.into()),
        ("X-GitHub-Delivery", delivery.into()),
        ("X-GitHub-Hook-ID", "292430182".into()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(key, body)),
        ),
    ]
}

async fn runs(server: &TestServer, pipeline: &str) -> Vec<Value> {
    let (status, body) = server
        .get(&format!("/v1/runs?pipeline={pipeline}&limit=500"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["runs"].as_array().unwrap().clone()
}

async fn wait_done(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = server.get(&format!("/v1/runs/{id}")).await;
        let status = body["run"]["status"].as_str().unwrap_or_default();
        if status != "queued" && status != "running" {
            return body["run"].clone();
        }
        assert!(Instant::now() < deadline, "run never finished: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The refusals audited for `actor`: (outcome, target, reason).
async fn refusals(server: &TestServer, actor: &str) -> Vec<(String, String, String)> {
    let (status, body) = server
        .get("/v1/audit?capability=api&allowed=false&limit=1000")
        .await;
    assert_eq!(status, 200, "{body}");
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"] == actor)
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                r["detail"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_signed_github_push_starts_one_run_and_a_bad_signature_starts_nothing() {
    let server = server().await;
    let trigger = "push: {provider: github, repo: codertocat/hello-world, branches: [main], secret: hook-secret}";
    put(&server, "hello", &pipeline("hello", trigger)).await;
    let body = GITHUB.as_bytes();

    // Signed with another key, unsigned, or signed over other bytes: 401.
    let wrong = github("push", "d-wrong", "not the secret", body);
    let (status, answer) = deliver(&server, "github", "hello", &wrong, body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(!answer.to_string().contains("hook-secret"), "{answer}");
    let mut unsigned = github("push", "d-unsigned", SECRET, body);
    unsigned.retain(|(k, _)| *k != "X-Hub-Signature-256");
    assert_eq!(
        deliver(&server, "github", "hello", &unsigned, body).await.0,
        401
    );
    let tampered = GITHUB.replace("Codertocat", "Mallory").into_bytes();
    let signed_original = github("push", "d-tampered", SECRET, body);
    assert_eq!(
        deliver(&server, "github", "hello", &signed_original, &tampered)
            .await
            .0,
        401
    );
    assert!(runs(&server, "hello").await.is_empty(), "nothing started");
    let audited = refusals(&server, "webhook:github").await;
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert!(
        audited
            .iter()
            .all(|(outcome, target, _)| outcome == "401" && target == "/v1/hooks/github/hello"),
        "{audited:?}"
    );

    // A ping (sent when the hook is created) is answered and starts nothing.
    let ping = br#"{"zen":"Design for failure.","hook_id":292430182}"#;
    let (status, answer) = deliver(
        &server,
        "github",
        "hello",
        &github("ping", "d-ping", SECRET, ping),
        ping,
    )
    .await;
    assert_eq!(
        (status, answer["ignored"].as_str()),
        (200, Some("`ping` event")),
        "{answer}"
    );

    // The real push: 202 with the run, whose steps see the trigger.
    let headers = github("push", "72d3162e-cc78-11e3-81ab-4c9367dc0958", SECRET, body);
    let (status, answer) = deliver(&server, "github", "hello", &headers, body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["run"].as_str().unwrap().to_string();
    let run = wait_done(&server, &id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["trigger"],
        json!({
            "kind": "push", "provider": "github", "repo": "Codertocat/Hello-World",
            "ref": "refs/heads/main", "branch": "main", "tag": "",
            "sha": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "pusher": "Codertocat",
            "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "started_by": "push:Codertocat",
        })
    );
    assert_eq!(run["started_by"], "push:Codertocat");
    let audited = server.changes(&id).await;
    assert_eq!(audited.len(), 1, "{audited:#?}");
    assert_eq!(
        (
            &audited[0]["verb"],
            &audited[0]["actor"],
            &audited[0]["detail"]["delivery"]
        ),
        (
            &json!("run.start"),
            &json!("webhook:github"),
            &json!("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        ),
        "{audited:#?}"
    );
    let outputs = &run["steps"]["show"]["outputs"];
    assert_eq!(
        (&outputs["sha"], &outputs["branch"]),
        (
            &json!("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"),
            &json!("main")
        )
    );

    // GitHub redelivers it (same delivery id): nothing new starts.
    let (status, answer) = deliver(&server, "github", "hello", &headers, body).await;
    assert_eq!((status, &answer), (200, &json!({ "duplicate": true })));
    assert_eq!(runs(&server, "hello").await.len(), 1);
}

#[tokio::test]
async fn branch_filters_deletions_and_unknown_targets() {
    let server = server().await;
    let trigger = "push: {provider: github, repo: Codertocat/Hello-World, branches: [main], secret: hook-secret}";
    put(&server, "hello", &pipeline("hello", trigger)).await;
    let send = |event: &'static str, delivery: &'static str, body: String| {
        let server = &server;
        async move {
            let headers = github(event, delivery, SECRET, body.as_bytes());
            deliver(server, "github", "hello", &headers, body.as_bytes()).await
        }
    };
    // Another branch, a tag (the trigger lists only branches), another repo.
    let other = GITHUB.replace("refs/heads/main", "refs/heads/feature/x");
    let tag = GITHUB.replace("refs/heads/main", "refs/tags/v1.0.0");
    let repo = GITHUB.replace("Codertocat/Hello-World", "Codertocat/Other");
    for (delivery, body) in [("d-branch", other), ("d-tag", tag), ("d-repo", repo)] {
        let (status, answer) = send("push", delivery, body).await;
        assert_eq!(status, 200, "{answer}");
        let why = answer["ignored"].as_str().unwrap();
        assert!(why.contains("matches no push trigger"), "{why}");
    }
    // Deleting main: nothing to deploy.
    let mut deletion: Value = serde_json::from_str(GITHUB).unwrap();
    deletion["after"] = json!("0000000000000000000000000000000000000000");
    deletion["deleted"] = json!(true);
    deletion["head_commit"] = Value::Null;
    deletion["commits"] = json!([]);
    let (status, answer) = send("push", "d-delete", deletion.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["ignored"].as_str().unwrap().contains("deleted"),
        "{answer}"
    );
    assert!(runs(&server, "hello").await.is_empty());

    // Signed, but not a push payload: 400.
    let (status, answer) = send("push", "d-junk", r#"{"zen":"x"}"#.into()).await;
    assert_eq!(status, 400, "{answer}");

    let body = GITHUB.as_bytes();
    let headers = github("push", "d-404", SECRET, body);
    for (provider, name) in [
        ("github", "nosuch"),
        ("gitlab", "hello"),
        ("bitbucket", "hello"),
    ] {
        let (status, answer) = deliver(&server, provider, name, &headers, body).await;
        assert_eq!(status, 404, "{provider}/{name}: {answer}");
    }
    // A push of 3 MiB (over the 2 MiB of other routes) is read; 5 MiB is the cap.
    let mut padded: Value = serde_json::from_str(GITHUB).unwrap();
    padded["ref"] = json!("refs/heads/feature/big");
    padded["head_commit"]["message"] = json!("x".repeat(3 << 20));
    let (status, answer) = send("push", "d-big", padded.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].as_str().unwrap().contains("feature/big"));
    let big = vec![b' '; (5 << 20) + 1];
    let (status, answer) = deliver(&server, "github", "hello", &headers, &big).await;
    assert_eq!(status, 413, "{answer}");
    let audited = refusals(&server, "webhook:github").await;
    let outcomes: Vec<&str> = audited.iter().map(|(o, _, _)| o.as_str()).collect();
    for want in ["400", "404", "413"] {
        assert!(outcomes.contains(&want), "{want} audited: {audited:?}");
    }
    assert!(refusals(&server, "webhook:bitbucket").await.len() == 1);
}

fn gitlab(event: &str, token: &str, key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Gitlab-Event", event.into()),
        ("X-Gitlab-Token", token.into()),
        ("X-Gitlab-Instance", "https://gitlab.example.com".into()),
        ("X-Gitlab-Event-UUID", format!("uuid-{key}")),
        ("Idempotency-Key", key.into()),
    ]
}

#[tokio::test]
async fn gitlab_tag_pushes_match_tag_filters_and_branch_pushes_branch_filters() {
    let server = server().await;
    let branches =
        "push: {provider: gitlab, repo: mike/diaspora, branches: [master], secret: hook-secret}";
    let tags =
        r#"push: {provider: gitlab, repo: jsmith/example, tags: ["v*"], secret: hook-secret}"#;
    put(&server, "branches", &pipeline("branches", branches)).await;
    put(&server, "tags", &pipeline("tags", tags)).await;

    let (status, _) = deliver(
        &server,
        "gitlab",
        "tags",
        &gitlab("Tag Push Hook", "guess", "k-0"),
        GITLAB_TAG.as_bytes(),
    )
    .await;
    assert_eq!(status, 401, "a wrong token");

    // A tag push on the branch-filtered pipeline is ignored...
    let tag_on_branches = GITLAB_TAG.replace("jsmith/example", "mike/diaspora");
    let (status, answer) = deliver(
        &server,
        "gitlab",
        "branches",
        &gitlab("Tag Push Hook", SECRET, "k-1"),
        tag_on_branches.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].is_string(), "{answer}");
    // ...and starts the tag-filtered one, with trigger.tag set.
    let (status, answer) = deliver(
        &server,
        "gitlab",
        "tags",
        &gitlab("Tag Push Hook", SECRET, "k-2"),
        GITLAB_TAG.as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let run = wait_done(&server, answer["run"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let out = &run["steps"]["show"]["outputs"];
    assert_eq!(
        (&out["tag"], &out["branch"], &out["pusher"]),
        (&json!("v1.0.0"), &json!(""), &json!("jsmith"))
    );
    // A branch push starts the branch-filtered one; its retry does not.
    let hook = gitlab("Push Hook", SECRET, "k-3");
    let (status, answer) = deliver(&server, "gitlab", "branches", &hook, GITLAB.as_bytes()).await;
    assert_eq!(status, 202, "{answer}");
    let run = wait_done(&server, answer["run"].as_str().unwrap()).await;
    assert_eq!(run["trigger"]["branch"], "master");
    assert_eq!(
        run["trigger"]["sha"],
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
    let (status, answer) = deliver(&server, "gitlab", "branches", &hook, GITLAB.as_bytes()).await;
    assert_eq!((status, answer["duplicate"].clone()), (200, json!(true)));
    assert_eq!(runs(&server, "branches").await.len(), 1);
    assert_eq!(runs(&server, "tags").await.len(), 1);
}

#[tokio::test]
async fn gitea_deliveries_are_verified_and_a_delivery_sent_twice_at_once_starts_one_run() {
    let server = server().await;
    let trigger =
        "push: {provider: gitea, repo: gitea/webhooks, branches: [develop], secret: hook-secret}";
    put(&server, "gitea", &pipeline("gitea", trigger)).await;
    let body = GITEA.as_bytes();
    let headers = |key: &str, delivery: &str| {
        vec![
            ("X-Gitea-Event", "push".to_string()),
            ("X-Gitea-Event-Type", "push".to_string()),
            ("X-Gitea-Delivery", delivery.to_string()),
            ("X-Gitea-Signature", hmac_hex(key, body)),
        ]
    };
    let (status, _) = deliver(&server, "gitea", "gitea", &headers("wrong", "g-0"), body).await;
    assert_eq!(status, 401);
    let good = headers(SECRET, "f6266f16-1bf3-46a5-9ea4-602e06ead473");
    let (a, b) = tokio::join!(
        deliver(&server, "gitea", "gitea", &good, body),
        deliver(&server, "gitea", "gitea", &good, body)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 202], "{a:?} {b:?}");
    let started = if a.0 == 202 { &a.1 } else { &b.1 };
    let run = wait_done(&server, started["run"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["trigger"]["pusher"], "gitea");
    assert_eq!(
        run["trigger"]["sha"],
        "bffeb74224043ba2feb48d137756c8a9331c449a"
    );
    assert_eq!(runs(&server, "gitea").await.len(), 1);
}

#[tokio::test]
async fn the_webhook_route_is_documented_as_public_with_every_answer() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    let op = &doc["paths"]["/v1/hooks/{provider}/{pipeline}"]["post"];
    assert_eq!(op["security"], json!([{}]), "no bearer token: {op:#}");
    let answers: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
    for status in [
        "200", "202", "400", "401", "404", "413", "422", "429", "503",
    ] {
        assert!(
            answers.iter().any(|a| *a == status),
            "{status} in {answers:?}"
        );
    }
    // And no token is needed to reach it: an unknown pipeline is a 404, not a 401.
    let r = client()
        .post(format!("{}/v1/hooks/github/nosuch", server.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
