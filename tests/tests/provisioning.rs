//! The provisioning engine against a real kube-apiserver (v1.20.2, see
//! `capstan_tests::kube_env`), through the HTTP API. Each test is a case
//! that burned users of kubectl, Argo CD, Flux or Terraform. The plugin is
//! the `echo-provisioner` test guest, whose plan is its spec; the cluster's
//! state is checked independently with `curl` as the cluster admin.

use std::time::{Duration, Instant};

use capstan::capabilities::kube::ClusterConfig;
use capstan_tests::kube_env;
use capstan_tests::procs::Capstan;
use capstan_tests::{TestServer, guest, guests, manifest};
use reqwest::Method;
use serde_json::{Value, json};

/// An API request as the cluster admin, independent of Capstan.
fn admin(method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    kube_env::shared().admin(method, path, body)
}

/// A merge patch as the cluster admin (`path` may be a `/status` subresource).
fn admin_patch(path: &str, patch: &Value) -> u16 {
    kube_env::shared().admin_patch(path, patch)
}

/// Plays the quota controller (none runs here) for `namespaces` until
/// the returned flag is set.
fn quota_controller(namespaces: Vec<String>) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    kube_env::shared().quota_controller(Some(namespaces))
}

fn configmap_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps/{name}")
}

fn namespace(name: &str) -> Value {
    json!({ "wave": 0, "manifest": { "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } } })
}

fn configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({ "wave": 1, "manifest": { "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns }, "data": data } })
}

const ECHO_GRANTS: &str = r#"
[limits]
deadline_ms = 10000
[[grants.kube]]
cluster = "test"
namespaces = ["*"]
resources = ["*"]
verbs = ["get", "list", "apply", "delete"]
cluster_scoped = ["Namespace"]
[[grants.kube]]
cluster = "prod"
namespaces = ["*"]
resources = ["*"]
verbs = ["get", "list", "apply", "delete"]
cluster_scoped = ["Namespace"]
"#;

async fn server_in(dir: tempfile::TempDir) -> TestServer {
    let kubeconfig = kube_env::shared().kubeconfig.clone();
    TestServer::start_in(dir, move |c| {
        c.kube.clusters = ["test", "prod"]
            .map(|name| ClusterConfig {
                name: name.into(),
                kubeconfig: kubeconfig.clone(),
                context: None,
                timeout_ms: 10_000,
            })
            .into();
        c.limits.default_deadline_ms = 10_000;
        c.provisioning.wait_timeout_secs = 4;
        c.provisioning.drift_interval_secs = 0;
    })
    .await
}

/// A server with the cluster `test` (and `prod`, which needs approvals) and
/// the echo provisioner installed.
async fn server() -> TestServer {
    let s = server_in(tempfile::tempdir().expect("tempdir")).await;
    s.install(
        &manifest("echo", "1.0.0", "provisioner", ECHO_GRANTS),
        &guest(guests::ECHO_PROVISIONER),
    )
    .await;
    s
}

/// Creates or updates an instance of the echo provisioner with `objects`.
/// The request body of an echo-provisioner instance with `objects`.
fn instance(name: &str, cluster: &str, objects: Vec<Value>) -> Value {
    json!({ "name": name, "plugin": "echo", "cluster": cluster, "project": "default",
        "spec": { "objects": objects, "labels": { "capstan.dev/instance": name } } })
}

async fn put(s: &TestServer, name: &str, cluster: &str, objects: Vec<Value>) -> Value {
    let body = instance(name, cluster, objects);
    let (status, body) = s.send(Method::POST, "/v1/provisions", Some(body)).await;
    assert!(
        status == 200 || status == 201,
        "put {name}: {status} {body}"
    );
    body
}

async fn plan(s: &TestServer, name: &str) -> Value {
    let (status, body) = s
        .send(Method::POST, &format!("/v1/provisions/{name}/plans"), None)
        .await;
    assert_eq!(status, 201, "plan {name}: {body}");
    body
}

async fn apply(s: &TestServer, name: &str, plan: &Value, options: Value) -> (u16, Value) {
    let id = plan["id"].as_str().expect("plan id");
    s.send(
        Method::POST,
        &format!("/v1/provisions/{name}/plans/{id}/apply"),
        Some(options),
    )
    .await
}

async fn apply_ok(s: &TestServer, name: &str, plan: &Value) -> Value {
    let (status, job) = apply(s, name, plan, json!({})).await;
    assert_eq!(status, 200, "apply {name}: {job}");
    assert_eq!(job["state"], "done", "{job:#}");
    job
}

/// Each object's verdict in a plan, as `Kind name -> verdict`.
fn verdicts(plan: &Value) -> Vec<(String, String)> {
    plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| {
            (
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap(),
                    o["name"].as_str().unwrap()
                ),
                o["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn verdict_of(plan: &Value, kind: &str, name: &str) -> String {
    verdicts(plan)
        .into_iter()
        .find(|(k, _)| k == &format!("{kind} {name}"))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{kind} {name} not in plan {plan:#}"))
}

fn kept_note(plan: &Value, name: &str) -> String {
    plan["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o["note"].as_str())
        .unwrap_or_else(|| panic!("{name} not kept in {plan:#}"))
        .to_string()
}

fn rv(ns: &str, name: &str) -> String {
    let (status, cm) = admin("GET", &configmap_path(ns, name), None);
    assert_eq!(status, 200, "{cm}");
    cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_its_contents_in_one_plan() {
    let s = server().await;
    let ns = "prov-nsplan";
    put(&s, "nsplan", "test", vec![
        namespace(ns),
        configmap(ns, "settings", json!({ "color": "blue" })),
        json!({ "wave": 1, "manifest": { "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": { "name": "quota", "namespace": ns }, "spec": { "hard": { "pods": "10" } } } }),
        json!({ "wave": 1, "manifest": { "apiVersion": "v1", "kind": "LimitRange",
            "metadata": { "name": "limits", "namespace": ns },
            "spec": { "limits": [{ "type": "Container", "defaultRequest": { "cpu": "100m" } }] } } }),
    ])
    .await;
    let quota = quota_controller(vec![ns.into()]);
    let p = plan(&s, "nsplan").await;
    // The dry-run of objects in a namespace that does not exist yet answers
    // NotFound: the plan says so instead of failing (kubernetes#83562).
    assert_eq!(verdict_of(&p, "Namespace", ns), "create");
    for (kind, name) in [
        ("ConfigMap", "settings"),
        ("ResourceQuota", "quota"),
        ("LimitRange", "limits"),
    ] {
        assert_eq!(verdict_of(&p, kind, name), "cannot-validate-yet", "{p:#}");
    }
    // Order: the Namespace, then LimitRange before ResourceQuota, then the rest.
    let order: Vec<String> = verdicts(&p).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        order,
        [
            format!("Namespace {ns}"),
            "LimitRange limits".into(),
            "ResourceQuota quota".into(),
            "ConfigMap settings".into()
        ]
    );
    assert!(
        p["objects"][0]["diff"]
            .as_str()
            .unwrap()
            .contains(&format!("+  name: {ns}")),
        "{p:#}"
    );

    let job = apply_ok(&s, "nsplan", &p).await;
    let steps: Vec<&str> = job["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        steps
            .iter()
            .any(|m| m.starts_with("wave 0 (namespaces/CRDs): ready")),
        "{steps:#?}"
    );
    assert!(
        steps
            .iter()
            .any(|m| m.starts_with("wave 1 (limit ranges): ready")),
        "{steps:#?}"
    );

    // Members carry the ApplySet label; the parent records the set as kubectl does.
    let (status, cm) = admin("GET", &configmap_path(ns, "settings"), None);
    assert_eq!(status, 200, "{cm}");
    let set = p["applyset"].as_str().unwrap();
    assert_eq!(
        cm["metadata"]["labels"]["applyset.kubernetes.io/part-of"],
        set
    );
    let (status, parent) = admin("GET", &configmap_path(ns, "capstan-applyset-nsplan"), None);
    assert_eq!(status, 200, "{parent}");
    assert_eq!(
        parent["metadata"]["labels"]["applyset.kubernetes.io/id"],
        set
    );
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,LimitRange,Namespace,ResourceQuota"
    );
    assert!(set.starts_with("applyset-") && set.ends_with("-v1"));

    let (_, inst) = s.get("/v1/provisions/nsplan").await;
    assert_eq!(
        (inst["state"].as_str(), inst["drift"].as_str()),
        (Some("applied"), Some("in-sync")),
        "{inst:#}"
    );
    quota.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_reapply_does_not_bump_resource_versions() {
    let s = server().await;
    let ns = "prov-noop";
    let objects = vec![namespace(ns), configmap(ns, "a", json!({ "k": "v" }))];
    put(&s, "noop", "test", objects).await;
    apply_ok(&s, "noop", &plan(&s, "noop").await).await;
    let before = rv(ns, "a");
    let again = plan(&s, "noop").await;
    assert_eq!(
        verdict_of(&again, "ConfigMap", "a"),
        "unchanged",
        "{again:#}"
    );
    assert_eq!(
        verdict_of(&again, "Namespace", ns),
        "unchanged",
        "{again:#}"
    );
    assert_eq!(again["objects"][1]["diff"], "");
    apply_ok(&s, "noop", &again).await;
    assert_eq!(rv(ns, "a"), before, "an unchanged object was written again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_after_the_set_shrinks() {
    let s = server().await;
    let ns = "prov-prune";
    put(
        &s,
        "prune",
        "test",
        vec![
            namespace(ns),
            configmap(ns, "a", json!({})),
            configmap(ns, "b", json!({})),
        ],
    )
    .await;
    apply_ok(&s, "prune", &plan(&s, "prune").await).await;
    put(
        &s,
        "prune",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({}))],
    )
    .await;
    let p = plan(&s, "prune").await;
    assert_eq!(verdict_of(&p, "ConfigMap", "b"), "prune", "{p:#}");
    assert!(
        p["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "b" && o["diff"].as_str().unwrap().contains("-kind: ConfigMap"))
    );
    apply_ok(&s, "prune", &p).await;
    assert_eq!(admin("GET", &configmap_path(ns, "b"), None).0, 404);
    assert_eq!(admin("GET", &configmap_path(ns, "a"), None).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_object_with_copied_labels_is_not_deleted() {
    let s = server().await;
    let ns = "prov-foreign";
    put(
        &s,
        "foreign",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({}))],
    )
    .await;
    apply_ok(&s, "foreign", &plan(&s, "foreign").await).await;
    // Someone copies our labels onto their own object (argo-cd#8683).
    let (_, a) = admin("GET", &configmap_path(ns, "a"), None);
    let copied = json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "theirs", "namespace": ns, "labels": a["metadata"]["labels"] } });
    let (status, body) = admin(
        "POST",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(&copied),
    );
    assert_eq!(status, 201, "{body}");
    put(&s, "foreign", "test", vec![namespace(ns)]).await;
    let p = plan(&s, "foreign").await;
    assert_eq!(verdict_of(&p, "ConfigMap", "a"), "prune");
    assert!(
        kept_note(&p, "theirs").contains("never applied by it"),
        "{p:#}"
    );
    apply_ok(&s, "foreign", &p).await;
    assert_eq!(
        admin("GET", &configmap_path(ns, "theirs"), None).0,
        200,
        "the foreign object was deleted"
    );
    assert_eq!(admin("GET", &configmap_path(ns, "a"), None).0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_object_is_not_deleted() {
    let s = server().await;
    let ns = "prov-recreated";
    put(
        &s,
        "recreated",
        "test",
        vec![
            namespace(ns),
            configmap(ns, "a", json!({})),
            configmap(ns, "b", json!({})),
        ],
    )
    .await;
    apply_ok(&s, "recreated", &plan(&s, "recreated").await).await;
    // Someone deletes b and creates their own b, labels and all: a new UID.
    let (_, old) = admin("GET", &configmap_path(ns, "b"), None);
    assert_eq!(admin("DELETE", &configmap_path(ns, "b"), None).0, 200);
    let mine = json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "b", "namespace": ns, "labels": old["metadata"]["labels"] }, "data": { "owner": "someone" } });
    assert_eq!(
        admin(
            "POST",
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(&mine)
        )
        .0,
        201
    );
    put(
        &s,
        "recreated",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({}))],
    )
    .await;
    let p = plan(&s, "recreated").await;
    assert!(
        kept_note(&p, "b").contains("recreated by someone else"),
        "{p:#}"
    );
    apply_ok(&s, "recreated", &p).await;
    let (status, b) = admin("GET", &configmap_path(ns, "b"), None);
    assert_eq!(
        (status, b["data"]["owner"].as_str()),
        (200, Some("someone")),
        "{b}"
    );
}

/// A real crash: the `capstan` process is killed with kill -9 after the
/// plan's objects are applied and before its prune, then restarted on the
/// same data. The restarted job resumes and prunes what the set dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_apply_and_prune_still_prunes() {
    let pg = capstan_tests::on_postgres()
        .then(capstan::store::testing::PgDatabase::create)
        .flatten();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("capstan.toml");
    let kubeconfig = kube_env::shared().kubeconfig.display().to_string();
    std::fs::write(
        &config,
        format!(
            "[[kube.clusters]]\nname = \"test\"\nkubeconfig = \"{kubeconfig}\"\n\
             [[kube.clusters]]\nname = \"prod\"\nkubeconfig = \"{kubeconfig}\"\n\
             [provisioning]\nwait_timeout_secs = 120\ndrift_interval_secs = 0\n"
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let mut env = vec![("CAPSTAN_CONFIG", config.as_str())];
    if let Some(db) = &pg {
        env.push(("CAPSTAN_DATABASE", db.url.as_str()));
    }
    let mut p = Capstan::start(Some(dir), &env);
    p.wait_ready().await;
    let (status, body) = p
        .upload(
            &manifest("echo", "1.0.0", "provisioner", ECHO_GRANTS),
            &guest(guests::ECHO_PROVISIONER),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let ns = "prov-crash";
    let v1 = vec![
        namespace(ns),
        configmap(ns, "a", json!({})),
        configmap(ns, "b", json!({})),
    ];
    p.call(
        Method::POST,
        "/v1/provisions",
        Some(instance("crash", "test", v1)),
    )
    .await;
    let (_, plan1) = p
        .call(Method::POST, "/v1/provisions/crash/plans", None)
        .await;
    let apply = |id: &str| format!("/v1/provisions/crash/plans/{id}/apply");
    let (status, job) = p
        .call(
            Method::POST,
            &apply(plan1["id"].as_str().unwrap()),
            Some(json!({ "wait_ms": 30000 })),
        )
        .await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("done")),
        "{job:#}"
    );

    // The set drops `b` and gains a quota in wave 2, which no quota
    // controller makes ready: the job waits there, applied but not pruned.
    let quota = json!({ "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": { "name": "q", "namespace": ns }, "spec": { "hard": { "pods": "10" } } });
    let v2 = vec![
        namespace(ns),
        configmap(ns, "a", json!({ "v": "2" })),
        json!({ "wave": 2, "manifest": quota }),
    ];
    p.call(
        Method::POST,
        "/v1/provisions",
        Some(instance("crash", "test", v2)),
    )
    .await;
    let (_, plan2) = p
        .call(Method::POST, "/v1/provisions/crash/plans", None)
        .await;
    assert_eq!(verdict_of(&plan2, "ConfigMap", "b"), "prune", "{plan2:#}");
    let id = plan2["id"].as_str().unwrap().to_string();
    let (status, _) = p
        .call(Method::POST, &apply(&id), Some(json!({ "wait_ms": 0 })))
        .await;
    assert_eq!(status, 202);
    let view_path = format!("/v1/provisions/crash/plans/{id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = p.call(Method::GET, &view_path, None).await;
        let lines = view["job"]["progress"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if lines.iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("wave 2 (quotas): applied"))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quota was never applied: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = p.kill_9();
    assert_eq!(
        admin("GET", &configmap_path(ns, "a"), None).1["data"]["v"],
        "2"
    );
    assert_eq!(
        admin("GET", &configmap_path(ns, "b"), None).0,
        200,
        "pruned before the crash"
    );
    // The parent recorded every kind of the old and new set before any prune.
    let (_, parent) = admin("GET", &configmap_path(ns, "capstan-applyset-crash"), None);
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,Namespace,ResourceQuota"
    );

    let quotas = quota_controller(vec![ns.to_string()]);
    let p = Capstan::start(Some(dir), &env);
    p.wait_ready().await;
    // The same data directory is the same replica (`replica-id`): it takes
    // its own job lease back at once and resumes after the last journaled step.
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let (_, view) = p.call(Method::GET, &view_path, None).await;
        if view["job"]["state"] == "done" || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    quotas.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(view["job"]["state"], "done", "{view:#}\n{}", p.log());
    assert!(
        view["job"]["done"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "prune"),
        "{view:#}"
    );
    assert_eq!(
        admin("GET", &configmap_path(ns, "b"), None).0,
        404,
        "b was not pruned after the restart"
    );
    assert_eq!(admin("GET", &configmap_path(ns, "a"), None).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_field_change_needs_recreate() {
    let s = server().await;
    let ns = "prov-immutable";
    let binding = |role: &str| {
        json!({ "wave": 1, "manifest": { "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "team", "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "Group", "name": "team", "apiGroup": "rbac.authorization.k8s.io" }] } })
    };
    put(
        &s,
        "immutable",
        "test",
        vec![namespace(ns), binding("view")],
    )
    .await;
    apply_ok(&s, "immutable", &plan(&s, "immutable").await).await;
    let path = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/team");
    let old_uid = admin("GET", &path, None).1["metadata"]["uid"].clone();
    put(
        &s,
        "immutable",
        "test",
        vec![namespace(ns), binding("edit")],
    )
    .await;
    let p = plan(&s, "immutable").await;
    let rb = p["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "RoleBinding")
        .unwrap()
        .clone();
    assert!(
        rb["immutable"]
            .as_str()
            .unwrap()
            .contains("cannot change roleRef"),
        "{rb:#}"
    );
    assert!(
        rb["diff"].as_str().unwrap().contains("+  name: edit"),
        "{rb:#}"
    );
    let (status, body) = apply(&s, "immutable", &p, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["details"]["reason"], "immutable-field",
        "{body}"
    );
    assert_eq!(admin("GET", &path, None).1["roleRef"]["name"], "view");
    let (status, job) = apply(&s, "immutable", &p, json!({ "recreate": true })).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("done")),
        "{job:#}"
    );
    let now = admin("GET", &path, None).1;
    assert_eq!(now["roleRef"]["name"], "edit");
    assert_ne!(now["metadata"]["uid"], old_uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_plan_is_refused() {
    let s = server().await;
    let ns = "prov-stale";
    put(
        &s,
        "stale",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({ "k": "1" }))],
    )
    .await;
    apply_ok(&s, "stale", &plan(&s, "stale").await).await;
    put(
        &s,
        "stale",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({ "k": "2" }))],
    )
    .await;
    let p = plan(&s, "stale").await;
    assert_eq!(verdict_of(&p, "ConfigMap", "a"), "update");
    // Someone changes the object after the plan was reviewed.
    let patch = json!({ "metadata": { "annotations": { "touched": "yes" } } });
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
        ])
        .arg("-H")
        .arg(format!(
            "Authorization: Bearer {}",
            kube_env::shared().admin_token
        ))
        .arg("--data-binary")
        .arg(patch.to_string())
        .arg(format!(
            "{}{}",
            kube_env::shared().server,
            configmap_path(ns, "a")
        ))
        .output()
        .expect("curl");
    assert!(out.status.success());
    let (status, body) = apply(&s, "stale", &p, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "stale", "{body}");
    assert_eq!(
        body["error"]["details"]["objects"][0]["object"],
        format!("ConfigMap {ns}/a")
    );
    assert_eq!(
        admin("GET", &configmap_path(ns, "a"), None).1["data"]["k"],
        "1",
        "a stale plan was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_are_masked_in_plans_and_diffs() {
    let s = server().await;
    let ns = "prov-secret";
    let secret = |v: &str| {
        json!({ "wave": 1, "manifest": { "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "db", "namespace": ns }, "stringData": { "password": v } } })
    };
    put(
        &s,
        "secret",
        "test",
        vec![namespace(ns), secret("hunter2-first")],
    )
    .await;
    let p = plan(&s, "secret").await;
    apply_ok(&s, "secret", &p).await;
    put(
        &s,
        "secret",
        "test",
        vec![namespace(ns), secret("hunter2-second")],
    )
    .await;
    let p = plan(&s, "secret").await;
    assert_eq!(verdict_of(&p, "Secret", "db"), "update");
    let (_, view) = s
        .get(&format!(
            "/v1/provisions/secret/plans/{}",
            p["id"].as_str().unwrap()
        ))
        .await;
    let text = view.to_string();
    for value in ["hunter2", "aHVudGVyMi1maXJzdA", "aHVudGVyMi1zZWNvbmQ"] {
        assert!(!text.contains(value), "{value} is in the plan: {text}");
    }
    let d = p["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Secret")
        .unwrap()["diff"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains("-  password: \"*** (before)\"") && d.contains("+  password: \"*** (after)\""),
        "{d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_waits_for_and_reports_namespace_termination() {
    let s = server().await;
    let ns = "prov-destroy";
    put(
        &s,
        "destroy",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({}))],
    )
    .await;
    apply_ok(&s, "destroy", &plan(&s, "destroy").await).await;
    let (status, job) = s
        .send(
            Method::POST,
            "/v1/provisions/destroy/destroy",
            Some(json!({ "wait_ms": 20000 })),
        )
        .await;
    // No namespace controller runs here: the Namespace stays Terminating on
    // its `kubernetes` finalizer, and destroy says so instead of hanging
    // or stripping the finalizer.
    assert_eq!(status, 202, "{job:#}");
    let waiting = job["result"]["terminating"]
        .as_array()
        .expect("terminating")
        .clone();
    assert_eq!(waiting.len(), 1, "{job:#}");
    let report = waiting[0].as_str().unwrap();
    assert!(
        report.starts_with(&format!("Namespace {ns}: phase Terminating")),
        "{report}"
    );
    assert!(report.contains("spec.finalizers [kubernetes]"), "{report}");
    assert_eq!(
        admin("GET", &configmap_path(ns, "a"), None).0,
        404,
        "contents go first"
    );
    let (_, ns_live) = admin("GET", &format!("/api/v1/namespaces/{ns}"), None);
    assert_eq!(
        ns_live["spec"]["finalizers"],
        json!(["kubernetes"]),
        "finalizers were stripped"
    );
    let (_, inst) = s.get("/v1/provisions/destroy").await;
    assert_eq!(inst["state"], "destroying");
    assert!(
        inst["detail"]
            .as_str()
            .unwrap()
            .starts_with("terminating, waiting on: Namespace prov-destroy"),
        "{inst:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_outside_the_grant_are_refused_before_anything_is_sent() {
    let s = server().await;
    let ns = "prov-grant";
    put(&s, "grant", "test", vec![
        namespace(ns),
        configmap(ns, "a", json!({})),
        json!({ "wave": 1, "manifest": { "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "prov-grant-admin" }, "rules": [] } }),
    ])
    .await;
    let (status, body) = s
        .send(Method::POST, "/v1/provisions/grant/plans", None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "outside_grant");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ClusterRole"),
        "{body}"
    );
    let records = capstan_tests::audit(&s, "echo", "kube").await;
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.actor == "provision:grant")
        .collect();
    assert!(
        mine.iter()
            .any(|r| !r.allowed && r.target.contains("ClusterRole")),
        "{mine:#?}"
    );
    assert!(
        mine.iter().all(|r| !r.allowed),
        "calls were sent: {mine:#?}"
    );
    assert_eq!(
        admin("GET", &format!("/api/v1/namespaces/{ns}"), None).0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_applies_and_destroys_wait_for_an_approval() {
    let mut s = server().await;
    let ns = "prov-approval";
    put(&s, "approval", "prod", vec![namespace(ns)]).await;
    let p = plan(&s, "approval").await;
    let (status, job) = apply(&s, "approval", &p, json!({})).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (202, Some("awaiting-approval")),
        "{job:#}"
    );
    assert_eq!(
        admin("GET", &format!("/api/v1/namespaces/{ns}"), None).0,
        404
    );
    let (_, view) = s
        .get(&format!(
            "/v1/provisions/approval/plans/{}",
            p["id"].as_str().unwrap()
        ))
        .await;
    let approval = view["approval"].as_str().expect("approval id").to_string();
    // The requester cannot approve their own plan; another admin can.
    let (status, _) = s
        .send(
            Method::POST,
            &format!("/v1/approvals/{approval}/approve"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403);
    let approver = approver_token(&s).await;
    approve_as(&mut s, &approver, &approval, "ok").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let inst = loop {
        let (_, inst) = s.get("/v1/provisions/approval").await;
        if inst["state"] == "applied" || Instant::now() > deadline {
            break inst;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        inst["state"], "applied",
        "approved plan not applied: {inst:#}"
    );
    assert_eq!(
        admin("GET", &format!("/api/v1/namespaces/{ns}"), None).0,
        200
    );

    // Destroying it waits for an approval too; nothing is deleted before.
    let (status, job) = s
        .send(
            Method::POST,
            "/v1/provisions/approval/destroy",
            Some(json!({ "wait_ms": 2000 })),
        )
        .await;
    assert_eq!(
        (status, job["state"].as_str()),
        (202, Some("awaiting-approval")),
        "{job:#}"
    );
    let (_, live) = admin("GET", &format!("/api/v1/namespaces/{ns}"), None);
    assert!(live["metadata"]["deletionTimestamp"].is_null(), "{live:#}");
    let approval = job["result"]["approval"].as_str().expect("approval id");
    let (_, pending) = s.get(&format!("/v1/approvals/{approval}")).await;
    assert_eq!(pending["kind"], "provision-destroy", "{pending:#}");
    approve_as(&mut s, &approver, approval, "decommissioned").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let (_, live) = admin("GET", &format!("/api/v1/namespaces/{ns}"), None);
        if !live["metadata"]["deletionTimestamp"].is_null() || Instant::now() > deadline {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Terminating: no namespace controller runs here to finish it.
    assert!(
        !live["metadata"]["deletionTimestamp"].is_null(),
        "approved destroy did not delete: {live:#}"
    );
}

/// Approves `approval` with `token` (another admin than the requester),
/// then goes back to the server's own token.
async fn approve_as(s: &mut TestServer, token: &str, approval: &str, comment: &str) {
    let requester = s.token.replace(token.to_string());
    let (status, body) = s
        .send(
            Method::POST,
            &format!("/v1/approvals/{approval}/approve"),
            Some(json!({ "comment": comment })),
        )
        .await;
    s.token = requester;
    assert_eq!(status, 200, "{body}");
}

/// A new admin token: another actor than the requester.
async fn approver_token(s: &TestServer) -> String {
    let (status, token) = s
        .send(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "approver", "role": "admin" })),
        )
        .await;
    assert!(status == 201 || status == 200, "{token}");
    token["token"].as_str().expect("token").to_string()
}

/// The bundled provisioner's grants, as its `capstan.toml` documents them.
const PROJECT_GRANTS: &str = r#"
[[grants.kube]]
cluster = "test"
namespaces = ["*"]
resources = ["Namespace", "LimitRange", "ResourceQuota", "ConfigMap", "PersistentVolumeClaim",
             "rbac.authorization.k8s.io/RoleBinding", "networking.k8s.io/NetworkPolicy"]
verbs = ["get", "list", "apply", "delete"]
cluster_scoped = ["Namespace"]
[[grants.kube]]
cluster = "test"
resources = ["storage.k8s.io/StorageClass"]
verbs = ["get"]
cluster_scoped = ["storage.k8s.io/StorageClass"]
"#;

/// A StorageClass that binds on first consumer (as Ceph RBD classes often do).
fn wffc_class(name: &str) {
    let sc = json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": { "name": name }, "provisioner": "rbd.csi.ceph.com",
        "volumeBindingMode": "WaitForFirstConsumer" });
    let (status, body) = admin("POST", "/apis/storage.k8s.io/v1/storageclasses", Some(&sc));
    assert!(status == 201 || status == 409, "{body}");
}

async fn bundled_server() -> TestServer {
    let s = server().await;
    let (m, wasm) = capstan_tests::bundled("project-provisioner");
    s.install(&format!("{m}\n{PROJECT_GRANTS}"), &wasm).await;
    s
}

fn project_spec(name: &str, envs: &[&str]) -> Value {
    json!({ "name": name, "team": "payments", "workspace": "retail", "environments": envs,
        "quota": { "cpu": "8", "memory": "16Gi", "pods": 40 },
        "groups": { "admins": ["payments-leads"], "operators": ["payments"], "viewers": ["auditors"] },
        "storage": { "class": "ceph-rbd-wffc", "quota": "200Gi", "claim": "10Gi" } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_project_applies_with_a_pvc_on_a_wffc_class() {
    let s = bundled_server().await;
    wffc_class("ceph-rbd-wffc");
    let ns = "shop1-dev";
    let quota = quota_controller(vec![ns.into()]);
    let body = json!({ "name": "shop1", "plugin": "project-provisioner", "cluster": "test", "project": "default",
        "spec": project_spec("shop1", &["dev"]) });
    let (status, created) = s.send(Method::POST, "/v1/provisions", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let p = plan(&s, "shop1").await;
    let kinds: Vec<String> = verdicts(&p).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "Namespace shop1-dev",
            "LimitRange project-defaults",
            "ResourceQuota project-quota",
            "NetworkPolicy allow-ingress",
            "NetworkPolicy default-deny",
            "RoleBinding project-admin",
            "RoleBinding project-operator",
            "RoleBinding project-viewer",
            "PersistentVolumeClaim data",
        ]
        .map(String::from)
    );
    let job = apply_ok(&s, "shop1", &p).await;
    quota.store(true, std::sync::atomic::Ordering::Relaxed);
    // The claim stays Pending (no consumer), and counts as ready.
    let (_, pvc) = admin(
        "GET",
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/data"),
        None,
    );
    assert_eq!(pvc["status"]["phase"], "Pending", "{pvc}");
    assert!(
        job["progress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "wave 2 (the rest): ready"),
        "{job:#}"
    );
    let (_, nsobj) = admin("GET", &format!("/api/v1/namespaces/{ns}"), None);
    assert_eq!(
        nsobj["metadata"]["labels"]["kubesphere.io/workspace"],
        "retail"
    );
    let (_, q) = admin(
        "GET",
        &format!("/api/v1/namespaces/{ns}/resourcequotas/project-quota"),
        None,
    );
    assert_eq!(
        q["spec"]["hard"]["ceph-rbd-wffc.storageclass.storage.k8s.io/requests.storage"],
        "200Gi"
    );
    // Drift: someone edits the quota by hand.
    assert_eq!(
        admin_patch(
            &format!("/api/v1/namespaces/{ns}/resourcequotas/project-quota"),
            &json!({ "spec": { "hard": { "pods": "400" } } })
        ),
        200
    );
    let (status, d) = s
        .send(Method::POST, "/v1/provisions/shop1/drift", None)
        .await;
    assert_eq!((status, d["drift"].as_str()), (200, Some("drifted")), "{d}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("ResourceQuota shop1-dev/project-quota (update)"),
        "{d}"
    );
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap_or("")
            .contains("capstan_provision_drifted{provision=\"shop1\"} 1"),
        "{metrics}"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Benchmarks for BENCHMARKS.md:
/// `cargo test -p capstan-tests --test provisioning -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_provisioning() {
    let s = bundled_server().await;
    // 1. Plan and diff of a 100-object instance (99 ConfigMaps and their Namespace), every object updated.
    let ns = "prov-bench";
    let objects = |v: &str| -> Vec<Value> {
        let mut o = vec![namespace(ns)];
        o.extend((0..99).map(|i| {
            configmap(
                ns,
                &format!("cm-{i:02}"),
                json!({ "v": v, "i": i.to_string() }),
            )
        }));
        o
    };
    put(&s, "bench", "test", objects("1")).await;
    apply_ok(&s, "bench", &plan(&s, "bench").await).await;
    put(&s, "bench", "test", objects("2")).await;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p = plan(&s, "bench").await;
        times.push(t.elapsed());
        assert_eq!(p["summary"]["update"], 99, "{}", p["summary"]);
    }
    println!(
        "BENCH plan+diff 100 objects (99 updates): median {:?} of 5 ({times:?})",
        median(times.clone())
    );

    // 2. Apply of the bundled project (2 environments, 9 objects each, PVC on a WFFC class).
    wffc_class("ceph-rbd-wffc");
    let mut times = Vec::new();
    for run in 0..3 {
        let name = format!("benchp{run}");
        let namespaces = vec![format!("{name}-dev"), format!("{name}-prod")];
        let quota = quota_controller(namespaces);
        let body = json!({ "name": name, "plugin": "project-provisioner", "cluster": "test", "project": "default",
            "spec": project_spec(&name, &["dev", "prod"]) });
        assert_eq!(
            s.send(Method::POST, "/v1/provisions", Some(body)).await.0,
            201
        );
        let t = Instant::now();
        let p = plan(&s, &name).await;
        apply_ok(&s, &name, &p).await;
        times.push(t.elapsed());
        quota.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    println!(
        "BENCH plan+apply bundled project (2 envs, 18 objects): median {:?} of 3 ({times:?})",
        median(times.clone())
    );

    // 3. A drift sweep over 100 applied instances (one ConfigMap each).
    let ns = "prov-bench-drift";
    assert!(matches!(
        admin(
            "POST",
            "/api/v1/namespaces",
            Some(&json!({ "metadata": { "name": ns } }))
        )
        .0,
        201 | 409
    ));
    for i in 0..100 {
        let name = format!("drift{i:03}");
        put(
            &s,
            &name,
            "test",
            vec![configmap(
                ns,
                &format!("cm-{i:03}"),
                json!({ "i": i.to_string() }),
            )],
        )
        .await;
        apply_ok(&s, &name, &plan(&s, &name).await).await;
    }
    let engine = s.server.as_ref().unwrap().provisioning.clone();
    let t = Instant::now();
    let checked = engine.sweep().await.expect("sweep");
    let took = t.elapsed();
    assert!(checked >= 100, "{checked}");
    println!(
        "BENCH drift sweep over {checked} instances: {took:?} ({:?} per instance)",
        took / checked as u32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_manager_conflict_is_reported_not_forced() {
    let s = server().await;
    let ns = "prov-conflict";
    put(
        &s,
        "conflict",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({ "k": "1" }))],
    )
    .await;
    apply_ok(&s, "conflict", &plan(&s, "conflict").await).await;
    // Another tool takes the field over with its own server-side apply.
    let theirs = json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "a", "namespace": ns }, "data": { "k": "theirs" } });
    let status = kube_env::shared().admin_patch_as(
        "application/apply-patch+yaml",
        &format!(
            "{}?fieldManager=other-team&force=true",
            configmap_path(ns, "a")
        ),
        &theirs,
    );
    assert_eq!(status, 200);
    put(
        &s,
        "conflict",
        "test",
        vec![namespace(ns), configmap(ns, "a", json!({ "k": "2" }))],
    )
    .await;
    let p = plan(&s, "conflict").await;
    let a = p["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        a["conflicts"],
        json!([{ "manager": "other-team", "field": ".data.k" }]),
        "{a:#}"
    );
    let (status, body) = apply(&s, "conflict", &p, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["details"]["reason"], "field-manager-conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("other-team"),
        "{body}"
    );
    // Asking for force is not enough: the echo provisioner's grant has no `force = true`.
    let (status, body) = apply(&s, "conflict", &p, json!({ "force": true })).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("outside_grant")),
        "{body}"
    );
    assert_eq!(
        admin("GET", &configmap_path(ns, "a"), None).1["data"]["k"],
        "theirs"
    );
}

/// Runs the `capstan` CLI against `s` with its token; (exit ok, stdout+stderr).
async fn capstan_cli(s: &TestServer, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(capstan_tests::procs::capstan_bin());
    cmd.args(args)
        .env("CAPSTAN_URL", &s.url)
        .env("CAPSTAN_TOKEN", s.token.as_deref().unwrap_or_default());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("capstan runs"))
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `capstan provision plan|apply|status|destroy` as a user runs them: the
/// plan as `kubectl diff` shows it, apply's progress per wave, the status,
/// a clear error for a used plan, and destroy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_plans_applies_shows_and_destroys() {
    let s = server().await;
    let ns = "prov-cli";
    let (status, _) = admin(
        "POST",
        "/api/v1/namespaces",
        Some(&namespace(ns)["manifest"]),
    );
    assert!(status == 201 || status == 409, "namespace: {status}");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    let objects = [
        configmap(ns, "a", json!({ "k": "v" })),
        configmap(ns, "b", json!({})),
    ];
    std::fs::write(&spec, json!({ "objects": objects }).to_string()).unwrap();
    let spec = spec.display().to_string();

    let plan_args = [
        "provision",
        "plan",
        "cli",
        "--plugin",
        "echo",
        "--cluster",
        "test",
    ];
    let (ok, out) = capstan_cli(
        &s,
        &[&plan_args[..], &["--spec", &spec, "--project", "default"]].concat(),
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("# v1/ConfigMap {ns}/a: create")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "diff -u -N live/v1/ConfigMap {ns}/a merged/v1/ConfigMap {ns}/a"
        )),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with('+') && l.contains("k: v")),
        "{out}"
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains(": 2 create"), "{out}");
    let plan_id = last
        .strip_prefix("plan ")
        .and_then(|l| l.split(':').next())
        .expect("plan id")
        .to_string();

    let (ok, out) = capstan_cli(&s, &["provision", "apply", "cli", &plan_id]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("wave 1 (the rest): applied 2 object(s)"),
        "{out}"
    );
    assert!(out.contains("wave 1 (the rest): ready"), "{out}");
    assert_eq!(
        admin("GET", &configmap_path(ns, "a"), None).1["data"]["k"],
        "v"
    );

    // A plan is applied once; the error says what to do.
    let (ok, out) = capstan_cli(&s, &["provision", "apply", "cli", &plan_id]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("server answered 409") && out.contains("make a new plan"),
        "{out}"
    );

    let (ok, out) = capstan_cli(&s, &["provision", "status", "cli"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("cli: applied on test (plugin echo, project default"),
        "{out}"
    );
    assert!(out.contains("last apply (done):"), "{out}");

    let (ok, out) = capstan_cli(&s, &["provision", "destroy", "cli"]).await;
    assert!(ok, "{out}");
    for name in ["a", "b", "capstan-applyset-cli"] {
        assert_eq!(
            admin("GET", &configmap_path(ns, name), None).0,
            404,
            "{name}: {out}"
        );
    }
}

/// A CustomResourceDefinition and a resource of its kind in one plan: the
/// resource cannot be validated before the CRD exists, so the plan says so,
/// and the apply creates the CRD, waits for it to be established, then
/// creates the resource (the discovery cache does not keep the kind unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_and_its_resource_in_one_plan() {
    let s = server().await;
    let grants = r#"
[limits]
deadline_ms = 10000
[[grants.kube]]
cluster = "test"
namespaces = ["*"]
resources = ["*"]
verbs = ["get", "list", "apply", "delete"]
cluster_scoped = ["Namespace", "apiextensions.k8s.io/CustomResourceDefinition"]
"#;
    s.install(
        &manifest("echo-crd", "1.0.0", "provisioner", grants),
        &guest(guests::ECHO_PROVISIONER),
    )
    .await;
    let ns = "prov-crd";
    let crd = json!({ "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.crdtest.capstan.dev" },
        "spec": { "group": "crdtest.capstan.dev", "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList" },
            "versions": [{ "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object",
                    "properties": { "spec": { "type": "object",
                        "properties": { "size": { "type": "integer" } } } } } } }] } });
    let widget = json!({ "apiVersion": "crdtest.capstan.dev/v1", "kind": "Widget",
        "metadata": { "name": "w1", "namespace": ns }, "spec": { "size": 3 } });
    let mut body = instance(
        "crd",
        "test",
        vec![
            namespace(ns),
            json!({ "wave": 0, "manifest": crd }),
            json!({ "wave": 1, "manifest": widget }),
        ],
    );
    body["plugin"] = json!("echo-crd");
    let (status, body) = s.send(Method::POST, "/v1/provisions", Some(body)).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let p = plan(&s, "crd").await;
    assert_eq!(
        verdict_of(
            &p,
            "CustomResourceDefinition",
            "widgets.crdtest.capstan.dev"
        ),
        "create",
        "{p:#}"
    );
    assert_eq!(
        verdict_of(&p, "Widget", "w1"),
        "cannot-validate-yet",
        "{p:#}"
    );
    let job = apply_ok(&s, "crd", &p).await;
    assert_eq!(job["state"], "done", "{job:#}");
    let (status, live) = admin(
        "GET",
        &format!("/apis/crdtest.capstan.dev/v1/namespaces/{ns}/widgets/w1"),
        None,
    );
    assert_eq!(
        (status, &live["spec"]["size"]),
        (200, &json!(3)),
        "{live:#}"
    );
    // Planned again, everything is known and unchanged.
    let p = plan(&s, "crd").await;
    assert_eq!(verdict_of(&p, "Widget", "w1"), "unchanged", "{p:#}");
}
