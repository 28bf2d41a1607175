//! Kubernetes capability against a real kube-apiserver + etcd on loopback
//! (built from Debian's source package by `.ci/kube-testenv.sh`). The test
//! checks the cluster's state independently with `curl` and the admin token.

use capstan::capabilities::kube::ClusterConfig;
use capstan_tests::kube_env::{self, KubeEnv};
use capstan_tests::{TestServer, bundled, guest, guests, manifest, probe};
use serde_json::{Value, json};

fn env() -> &'static KubeEnv {
    kube_env::shared()
}

/// An API request as the cluster admin, independent of Capstan.
fn admin(method: &str, path: &str, body: Option<&Value>, content_type: &str) -> (u16, Value) {
    env().admin_as(method, content_type, path, body)
}

fn ensure_namespace(ns: &str) {
    let (status, body) = admin(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({ "metadata": { "name": ns } })),
        "application/json",
    );
    assert!(
        status == 201 || status == 409,
        "create namespace {ns}: {status} {body}"
    );
}

fn deployment(ns: &str, name: &str) -> (u16, Value) {
    admin(
        "GET",
        &format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
        None,
        "application/json",
    )
}

async fn server_with_cluster() -> TestServer {
    let kubeconfig = env().kubeconfig.clone();
    TestServer::start_with(move |c| {
        c.kube.clusters = vec![ClusterConfig {
            name: "test".into(),
            kubeconfig,
            context: None,
            timeout_ms: 10_000,
        }];
        c.limits.default_deadline_ms = 20_000;
    })
    .await
}

async fn kube_audit(server: &TestServer, plugin: &str) -> Vec<capstan::capabilities::AuditRecord> {
    capstan_tests::audit(server, plugin, "kube").await
}

fn deployer_manifest(ns: &str) -> String {
    let (bundled_manifest, _) = bundled("render-deployment");
    assert!(bundled_manifest.contains("role = \"deploy-step\""));
    manifest(
        "deployer",
        "1.0.0",
        "deploy-step",
        &format!(
            r#"[settings]
cluster = "test"
forbid_latest = true
[limits]
deadline_ms = 20000
[[grants.kube]]
cluster = "test"
namespaces = ["{ns}"]
resources = ["apps/Deployment", "Service"]
verbs = ["apply", "delete"]
"#
        ),
    )
}

#[tokio::test]
async fn granted_plugin_deploys_into_its_namespace_and_is_denied_elsewhere() {
    ensure_namespace("kt-deploy-a");
    ensure_namespace("kt-deploy-b");
    let server = server_with_cluster().await;
    server
        .install(
            &deployer_manifest("kt-deploy-a"),
            &bundled("render-deployment").1,
        )
        .await;

    let params = |ns: &str| json!({ "params": { "name": "web", "namespace": ns, "image": "registry.local/web:1.2.3", "replicas": 2, "port": 8080, "apply": true } });
    let (status, body) = server.invoke("deployer", params("kt-deploy-a")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["result"]["message"]
            .as_str()
            .unwrap()
            .starts_with("applied 2 object(s)"),
        "{body}"
    );

    let (status, d) = deployment("kt-deploy-a", "web");
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/web:1.2.3"
    );
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"capstan-plugin-deployer"),
        "{managers:?}"
    );
    let (status, _) = admin(
        "GET",
        "/api/v1/namespaces/kt-deploy-a/services/web",
        None,
        "application/json",
    );
    assert_eq!(status, 200);

    // Another namespace: denied by Capstan before any request reaches the cluster.
    let (status, body) = server.invoke("deployer", params("kt-deploy-b")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"]["kind"], "denied");
    assert!(
        body["error"]["details"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace `kt-deploy-b` is not granted"),
        "{body}"
    );
    assert_eq!(deployment("kt-deploy-b", "web").0, 404);

    let records = kube_audit(&server, "deployer").await;
    assert!(records.iter().any(|r| r.allowed
        && r.verb == "apply"
        && r.target == "test:apps/v1/Deployment kt-deploy-a/web"
        && r.outcome == "ok"));
    let denied = records.iter().find(|r| !r.allowed).expect("denial audited");
    assert_eq!(denied.target, "test:apps/v1/Deployment kt-deploy-b/web");
    assert!(
        denied
            .outcome
            .contains("namespace `kt-deploy-b` is not granted")
    );

    // Rollback removes what run applied.
    let (status, body) = server
        .invoke(
            "deployer",
            json!({ "action": "rollback", "params": params("kt-deploy-a")["params"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["message"], "removed 2 object(s) of web");
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        deployment("kt-deploy-a", "web").0 == 404
    });
    assert!(gone, "deployment still there after rollback");
}

#[tokio::test]
async fn dry_run_apply_persists_nothing() {
    ensure_namespace("kt-dry");
    let server = server_with_cluster().await;
    server
        .install(
            &deployer_manifest("kt-dry"),
            &bundled("render-deployment").1,
        )
        .await;
    let (status, body) = server
        .invoke("deployer", json!({ "params": { "name": "dry", "namespace": "kt-dry", "image": "registry.local/dry:1.0.0", "apply": true, "dry_run": true } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["result"]["message"]
            .as_str()
            .unwrap()
            .starts_with("dry-run applied 1 object(s)"),
        "{body}"
    );
    let applied: Value =
        serde_json::from_str(body["result"]["outputs"]["applied"].as_str().unwrap()).unwrap();
    assert_eq!(
        applied[0]["metadata"]["name"], "dry",
        "the server answered with the object it would create"
    );
    assert_eq!(
        deployment("kt-dry", "dry").0,
        404,
        "dry run must not create the object"
    );
    let records = kube_audit(&server, "deployer").await;
    assert!(
        records
            .iter()
            .any(|r| r.verb == "apply (dry-run)" && r.allowed)
    );
}

#[tokio::test]
async fn kinds_verbs_namespaces_and_clusters_outside_the_grant_are_denied() {
    ensure_namespace("kt-scope");
    let (status, _) = admin(
        "POST",
        "/api/v1/namespaces/kt-scope/configmaps",
        Some(&json!({ "metadata": { "name": "settings" }, "data": { "color": "blue" } })),
        "application/json",
    );
    assert!(status == 201 || status == 409, "create configmap: {status}");
    let server = server_with_cluster().await;
    let grants = r#"[[grants.kube]]
cluster = "test"
namespaces = ["kt-scope"]
resources = ["ConfigMap"]
verbs = ["get", "list"]
"#;
    server
        .install(
            &manifest("scoped", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    let target = |ns: &str, kind: &str, api: &str| json!({ "cluster": "test", "api_version": api, "kind": kind, "namespace": ns, "name": "settings" });

    let mut allowed = target("kt-scope", "ConfigMap", "v1");
    allowed["op"] = json!("kube-get");
    let got = probe(&server, "scoped", allowed).await;
    assert!(
        got.starts_with("ok:") && got.contains("\"color\":\"blue\""),
        "{got}"
    );

    let attempts = vec![
        (
            "kube-get",
            target("kt-scope", "Secret", "v1"),
            "kind `Secret` is not granted",
        ),
        (
            "kube-get",
            target("default", "ConfigMap", "v1"),
            "namespace `default` is not granted",
        ),
        (
            "kube-delete",
            target("kt-scope", "ConfigMap", "v1"),
            "verb `delete` is not granted",
        ),
        (
            "kube-patch",
            target("kt-scope", "ConfigMap", "v1"),
            "verb `patch` is not granted",
        ),
        (
            "kube-get",
            json!({ "cluster": "prod", "api_version": "v1", "kind": "ConfigMap", "namespace": "kt-scope", "name": "settings" }),
            "cluster `prod` is not granted",
        ),
        (
            "kube-list",
            json!({ "cluster": "test", "api_version": "v1", "kind": "ConfigMap" }),
            "cluster-scoped access to `ConfigMap` is not granted",
        ),
        (
            "kube-apply",
            json!({ "cluster": "test", "manifest": { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "x", "namespace": "kt-scope" } } }),
            "verb `apply` is not granted",
        ),
    ];
    for (op, mut params, why) in attempts {
        params["op"] = json!(op);
        params["patch"] = json!({ "data": { "color": "red" } });
        let got = probe(&server, "scoped", params).await;
        assert!(
            got.starts_with("err:Denied") && got.contains(why),
            "{op}: expected denial `{why}`, got {got}"
        );
    }
    let (_, cm) = admin(
        "GET",
        "/api/v1/namespaces/kt-scope/configmaps/settings",
        None,
        "application/json",
    );
    assert_eq!(cm["data"]["color"], "blue", "nothing was changed");
    let records = kube_audit(&server, "scoped").await;
    assert_eq!(
        records.iter().filter(|r| !r.allowed).count(),
        7,
        "{records:#?}"
    );
    assert_eq!(records.iter().filter(|r| r.allowed).count(), 1);
}

#[tokio::test]
async fn wait_rollout_retries_until_the_deployment_is_available() {
    ensure_namespace("kt-rollout");
    let server = server_with_cluster().await;
    server
        .install(
            &deployer_manifest("kt-rollout"),
            &bundled("render-deployment").1,
        )
        .await;
    let (m, wasm) = bundled("wait-rollout");
    let m = m.replace("cluster = \"default\"", "cluster = \"test\"")
        + "\n[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"kt-rollout\"]\nresources = [\"apps/Deployment\"]\nverbs = [\"get\"]\n";
    server.install(&m, &wasm).await;
    let (status, body) = server
        .invoke("deployer", json!({ "params": { "name": "api", "namespace": "kt-rollout", "image": "registry.local/api:2.0.0", "replicas": 2, "apply": true } }))
        .await;
    assert_eq!(status, 200, "{body}");

    let wait = json!({ "params": { "name": "api", "namespace": "kt-rollout" } });
    let (status, body) = server.invoke("wait-rollout", wait.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["outcome"], "retry", "{body}");
    assert_eq!(body["result"]["retry_after_ms"], 2000);

    // No kubelet here: play its part and report the pods as available.
    let (_, d) = deployment("kt-rollout", "api");
    let status_patch = json!({ "status": {
        "observedGeneration": d["metadata"]["generation"], "replicas": 2, "updatedReplicas": 2,
        "readyReplicas": 2, "availableReplicas": 2 } });
    let (code, body) = admin(
        "PATCH",
        "/apis/apps/v1/namespaces/kt-rollout/deployments/api/status",
        Some(&status_patch),
        "application/merge-patch+json",
    );
    assert_eq!(code, 200, "{body}");
    let (status, body) = server.invoke("wait-rollout", wait).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["outcome"], "succeeded", "{body}");
    assert_eq!(body["result"]["outputs"]["available"], "2");
}

#[tokio::test]
async fn a_hung_api_server_cannot_hold_a_plugin() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("hung.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: hung\n  cluster:\n    server: https://{addr}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: hung\n  context:\n    cluster: hung\n    user: u\ncurrent-context: hung\n"
        ),
    )
    .unwrap();
    let server = TestServer::start_with(move |c| {
        c.kube.clusters = vec![ClusterConfig {
            name: "hung".into(),
            kubeconfig,
            context: None,
            timeout_ms: 500,
        }];
    })
    .await;
    let grants = "[limits]\ndeadline_ms = 5000\n[[grants.kube]]\ncluster = \"hung\"\nnamespaces = [\"x\"]\nresources = [\"ConfigMap\"]\nverbs = [\"get\"]\n";
    server
        .install(
            &manifest("hung", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    let got = probe(&server, "hung", json!({ "op": "kube-get", "cluster": "hung", "api_version": "v1", "kind": "ConfigMap", "namespace": "x", "name": "y" })).await;
    assert!(got.starts_with("err:Retryable"), "{got}");
    // The host call's own timeout fired, well before the invocation deadline.
    assert!(
        got.contains("did not answer within 500 ms") || got.contains("unreachable"),
        "{got}"
    );
}

#[tokio::test]
async fn a_grant_for_an_unknown_cluster_is_refused_at_load() {
    let server = server_with_cluster().await;
    let grants = "[[grants.kube]]\ncluster = \"prod\"\nnamespaces = [\"x\"]\nresources = [\"ConfigMap\"]\nverbs = [\"get\"]\n";
    let (status, body) = server
        .upload(
            &manifest("p", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    capstan_tests::assert_error(
        status,
        &body,
        422,
        "cluster `prod`, which is not configured",
    );
}

fn apply_op(manifest: Value) -> Value {
    json!({ "op": "kube-apply", "cluster": "test", "manifest": manifest })
}

#[tokio::test]
async fn a_wildcard_grant_reaches_only_the_cluster_scoped_kinds_it_names() {
    ensure_namespace("kt-cs");
    let server = server_with_cluster().await;
    let grants = r#"[[grants.kube]]
cluster = "test"
namespaces = ["kt-cs"]
resources = ["*"]
verbs = ["apply"]
cluster_scoped = ["Namespace"]
"#;
    server
        .install(
            &manifest("wide", "1.0.0", "deploy-step", grants),
            &guest(guests::PROBE),
        )
        .await;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": "kt-cs-escalate" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice" }],
    });
    let got = probe(&server, "wide", apply_op(binding.clone())).await;
    assert!(
        got.starts_with("err:Denied")
            && got.contains(
                "cluster-scoped access to `rbac.authorization.k8s.io/ClusterRoleBinding` is not granted"
            ),
        "{got}"
    );
    // Naming a granted namespace does not help: the kind is cluster-scoped.
    let mut in_namespace = binding;
    in_namespace["metadata"]["namespace"] = json!("kt-cs");
    let got = probe(&server, "wide", apply_op(in_namespace)).await;
    assert!(
        got.starts_with("err:InvalidInput") && got.contains("ClusterRoleBinding is cluster-scoped"),
        "{got}"
    );
    let crb = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kt-cs-escalate";
    assert_eq!(admin("GET", crb, None, "application/json").0, 404);

    let namespace =
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "kt-cs-made" } });
    let got = probe(&server, "wide", apply_op(namespace)).await;
    assert!(
        got.starts_with("ok:") && got.contains("kt-cs-made"),
        "{got}"
    );
    let (status, ns) = admin(
        "GET",
        "/api/v1/namespaces/kt-cs-made",
        None,
        "application/json",
    );
    assert_eq!(status, 200, "{ns}");

    let records = kube_audit(&server, "wide").await;
    let denied: Vec<_> = records.iter().filter(|r| !r.allowed).collect();
    assert_eq!(denied.len(), 1, "{records:#?}");
    assert_eq!(
        denied[0].target,
        "test:rbac.authorization.k8s.io/v1/ClusterRoleBinding kt-cs-escalate"
    );
    assert!(
        denied[0]
            .outcome
            .contains("cluster_scoped does not name it")
    );
    assert!(records.iter().any(|r| r.allowed
        && r.verb == "apply"
        && r.target == "test:v1/Namespace kt-cs-made"
        && r.outcome == "ok"));
}

fn config_map(ns: &str, name: &str, color: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns }, "data": { "color": color } })
}

/// Server-side applies `data.color = blue` as field manager `other-team`.
fn apply_as_other_team(ns: &str, name: &str) {
    ensure_namespace(ns);
    let path =
        format!("/api/v1/namespaces/{ns}/configmaps/{name}?fieldManager=other-team&force=true");
    let (status, body) = admin(
        "PATCH",
        &path,
        Some(&config_map(ns, name, "blue")),
        "application/apply-patch+yaml",
    );
    assert!(status == 200 || status == 201, "{status} {body}");
}

/// The ConfigMap's color and the managers listed in its managedFields.
fn color_and_managers(ns: &str, name: &str) -> (String, Vec<String>) {
    let (status, cm) = admin(
        "GET",
        &format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
        None,
        "application/json",
    );
    assert_eq!(status, 200, "{cm}");
    let managers = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str().map(str::to_string))
        .collect();
    (cm["data"]["color"].as_str().unwrap().to_string(), managers)
}

fn applier_manifest(name: &str, ns: &str, force: bool) -> String {
    manifest(
        name,
        "1.0.0",
        "deploy-step",
        &format!(
            "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"{ns}\"]\nresources = [\"ConfigMap\"]\nverbs = [\"apply\"]\nforce = {force}\n"
        ),
    )
}

#[tokio::test]
async fn without_force_a_field_owned_by_another_manager_comes_back_as_a_typed_conflict() {
    let ns = "kt-conflict";
    apply_as_other_team(ns, "owned");
    let server = server_with_cluster().await;
    server
        .install(
            &applier_manifest("careful", ns, false),
            &guest(guests::PROBE),
        )
        .await;
    let checked = |color: &str| json!({ "op": "kube-apply-checked", "cluster": "test", "manifest": config_map(ns, "owned", color) });

    let got = probe(&server, "careful", checked("red")).await;
    let owned: Value = serde_json::from_str(
        got.strip_prefix("conflict:")
            .unwrap_or_else(|| panic!("expected a conflict, got {got}")),
    )
    .unwrap();
    assert_eq!(
        owned,
        json!([{ "manager": "other-team", "field": ".data.color" }])
    );
    // The old `apply` reports the same conflict as `failed`.
    let got = probe(&server, "careful", apply_op(config_map(ns, "owned", "red"))).await;
    assert_eq!(
        got,
        "err:Failed: field manager conflict: other-team owns .data.color; the grant does not allow force"
    );
    let (color, managers) = color_and_managers(ns, "owned");
    assert_eq!(color, "blue", "the object is unchanged");
    assert_eq!(managers, ["other-team"]);

    // Agreeing on the value is no conflict: the field becomes co-owned.
    let got = probe(&server, "careful", checked("blue")).await;
    assert!(got.starts_with("ok:"), "{got}");
    let (_, managers) = color_and_managers(ns, "owned");
    assert!(
        managers.contains(&"capstan-plugin-careful".to_string()),
        "{managers:?}"
    );

    let records = kube_audit(&server, "careful").await;
    let conflicts = records
        .iter()
        .filter(|r| r.allowed && r.outcome.contains("other-team owns .data.color"))
        .count();
    assert_eq!(conflicts, 2, "{records:#?}");
}

#[tokio::test]
async fn with_force_in_the_grant_the_same_apply_takes_the_field_over() {
    let ns = "kt-force";
    apply_as_other_team(ns, "owned");
    let server = server_with_cluster().await;
    server
        .install(&applier_manifest("forcer", ns, true), &guest(guests::PROBE))
        .await;
    let got = probe(
        &server,
        "forcer",
        json!({ "op": "kube-apply-checked", "cluster": "test", "manifest": config_map(ns, "owned", "red") }),
    )
    .await;
    assert!(
        got.starts_with("ok:") && got.contains("\"color\":\"red\""),
        "{got}"
    );
    let (color, managers) = color_and_managers(ns, "owned");
    assert_eq!(color, "red");
    assert!(
        managers.contains(&"capstan-plugin-forcer".to_string()),
        "{managers:?}"
    );
}

#[tokio::test]
async fn an_all_or_nothing_cluster_scoped_grant_is_refused_at_upload() {
    let server = TestServer::start().await;
    let base = "[[grants.kube]]\ncluster = \"test\"\nresources = [\"*\"]\nverbs = [\"get\"]\n";
    for (cluster_scoped, needle) in [
        (
            "true",
            "`cluster_scoped = true` is no longer accepted: name the cluster-scoped kinds",
        ),
        ("[\"*\"]", "cluster_scoped: `*` is a wildcard"),
        (
            "[\"rbac.authorization.k8s.io/*\"]",
            "cluster_scoped: `rbac.authorization.k8s.io/*` is a wildcard",
        ),
    ] {
        let grants = format!("{base}cluster_scoped = {cluster_scoped}\n");
        let (status, body) = server
            .upload(
                &manifest("wide", "1.0.0", "deploy-step", &grants),
                &guest(guests::PROBE),
            )
            .await;
        capstan_tests::assert_error(status, &body, 422, needle);
    }
}

/// An alert handler's `kube` action runs on the host under the handler's
/// own grants: a restart in its granted namespace is done (the pod
/// template gets `kubectl.kubernetes.io/restartedAt`), the same in a
/// namespace it is not granted is denied and changes nothing.
#[tokio::test]
async fn an_alert_handlers_kube_action_runs_under_its_own_grants_only() {
    for ns in ["kt-alert-a", "kt-alert-b"] {
        ensure_namespace(ns);
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "registry.local/web:1"}]}}}});
        let (status, body) = admin(
            "POST",
            &format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            Some(&d),
            "application/json",
        );
        assert!(status == 201 || status == 409, "{status} {body}");
    }
    let server = server_with_cluster().await;
    let grants = "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"kt-alert-a\"]\nresources = [\"apps/Deployment\"]\nverbs = [\"patch\"]\n";
    for (name, ns) in [("restarter", "kt-alert-a"), ("overreach", "kt-alert-b")] {
        let extra = format!("[settings]\nkube = \"{ns}\"\n{grants}");
        server
            .install(
                &manifest(name, "1.0.0", "alert-handler", &extra),
                &guest(guests::ALERT_ACTIONS),
            )
            .await;
    }
    let route = json!({"project": "default", "handlers": ["restarter", "overreach"]});
    let (status, body) = server
        .send(
            reqwest::Method::PUT,
            "/v1/alerts/routes/restart",
            Some(route),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let group = json!({"version": "4", "groupKey": "kube", "status": "firing", "receiver": "x", "alerts": [
        {"status": "firing", "labels": {"alertname": "WebStuck"}, "startsAt": "2026-12-01T00:00:00Z", "fingerprint": "k1"}]});
    let (status, stored) = server
        .send(
            reqwest::Method::POST,
            "/v1/alerts/alertmanager/am",
            Some(group),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let id = stored["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let g = loop {
        let (_, g) = server.get(&format!("/v1/alerts/groups/{id}")).await;
        if g["state"] != "pending" {
            break g;
        }
        assert!(std::time::Instant::now() < deadline, "never handled: {g:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let outcome = |plugin: &str| {
        g["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "kube" && a["plugin"] == plugin)
            .map(|a| a["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(outcome("restarter").as_deref(), Some("succeeded"), "{g:#}");
    assert_eq!(outcome("overreach").as_deref(), Some("denied"), "{g:#}");
    let annotation = |ns: &str| {
        let (_, d) = deployment(ns, "web");
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .clone()
    };
    assert!(
        annotation("kt-alert-a").is_string(),
        "restarted in the granted namespace"
    );
    assert!(
        annotation("kt-alert-b").is_null(),
        "nothing changed outside the grant"
    );
    let denied = kube_audit(&server, "overreach").await;
    assert!(
        denied
            .iter()
            .any(|r| !r.allowed && r.target.contains("kt-alert-b")),
        "{denied:#?}"
    );
}
