//! The trust model against a hostile operator: every route to more access
//! than an administrator allowed is refused or held for approval, and
//! audited. Projects own plugins; tokens carry roles per project.

use capstan::capabilities::AuditRecord;
use capstan_tests::{TestServer, assert_error, guest, guests, manifest, probe, status_json};
use reqwest::Method;
use serde_json::{Value, json};

/// A test server with projects `team-a` and `team-b`, a configured (but
/// never contacted) cluster `test`, and tokens:
/// `op-a` (operator of team-a), `admin-a` and `admin-a2` (admins of
/// team-a), `op-b` (operator of team-b), `viewer-b` (viewer of team-b).
struct World {
    server: TestServer,
    kubeconfig: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let kubeconfig = tempfile::tempdir().unwrap();
        let path = kubeconfig.path().join("kubeconfig.yaml");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let server = TestServer::start_with(|c| {
            c.kube.clusters = vec![capstan::capabilities::kube::ClusterConfig {
                name: "test".into(),
                kubeconfig: path,
                context: None,
                timeout_ms: 1000,
            }];
        })
        .await;
        for p in ["team-a", "team-b"] {
            let (s, b) = server
                .send(Method::POST, "/v1/projects", Some(json!({ "name": p })))
                .await;
            assert_eq!(s, 201, "{b}");
        }
        World { server, kubeconfig }
    }

    async fn token(&self, name: &str, projects: Value) -> String {
        let (s, b) = self
            .server
            .send(
                Method::POST,
                "/v1/tokens",
                Some(json!({ "name": name, "projects": projects })),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b["token"].as_str().unwrap().to_string()
    }

    async fn upload_as(&self, token: &str, manifest: &str) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest.to_string())
            .part(
                "component",
                reqwest::multipart::Part::bytes(guest(guests::PROBE)),
            );
        let r = self
            .server
            .client
            .post(format!("{}/v1/plugins", self.server.url))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    async fn send_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .server
            .client
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        status_json(rb.send().await.unwrap()).await
    }

    async fn ceiling(&self, project: &str, ceiling: Value) {
        let (s, b) = self
            .server
            .send(
                Method::PUT,
                &format!("/v1/ceilings/{project}"),
                Some(ceiling),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    async fn changes(&self, verb: &str) -> Vec<AuditRecord> {
        let q = capstan::capabilities::audit::AuditQuery {
            capability: Some("change".into()),
            limit: Some(1000),
            ..Default::default()
        };
        let all = self.server.env().audit.query(&q).await.unwrap();
        all.into_iter().filter(|r| r.verb == verb).collect()
    }

    async fn active(&self, plugin: &str) -> Value {
        let (_, b) = self.server.get(&format!("/v1/plugins/{plugin}")).await;
        b["active_version"].clone()
    }
}

const KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: { server: "https://127.0.0.1:9" }
users:
- name: u
  user: { token: "unused" }
contexts:
- name: test
  context: { cluster: test, user: u }
current-context: test
"#;

fn probe_manifest(name: &str, version: &str, project: &str, grants: &str) -> String {
    manifest(
        name,
        version,
        "deploy-step",
        &format!("project = \"{project}\"\n{grants}"),
    )
}

#[tokio::test]
async fn an_operator_cannot_grant_itself_the_host_filesystem() {
    let w = World::start().await;
    let op = w.token("op-a", json!({ "team-a": "operator" })).await;
    let root = "[[grants.fs]]\nhost_path = \"/\"\nguest_path = \"/host\"\n";
    let (s, b) = w
        .upload_as(&op, &probe_manifest("grabber", "1.0.0", "team-a", root))
        .await;
    assert_eq!(s, 202, "held, not installed: {b}");
    assert_eq!(b["active"], false);
    let held = &b["held"];
    assert_eq!(held["approver"], "global admin");
    assert!(
        held["reasons"][0].as_str().unwrap().contains("`/`"),
        "{held}"
    );
    // Nothing runs: the plugin has no active version.
    assert_eq!(w.active("grabber").await, Value::Null);
    let (s, _) = w.server.invoke("grabber", json!({})).await;
    assert_eq!(s, 404);
    // Activating it by hand is refused too, naming the approval.
    let (s, b) = w
        .send_as(
            &op,
            Method::PUT,
            "/v1/plugins/grabber/active",
            Some(json!({ "version": "1.0.0" })),
        )
        .await;
    assert_error(s, &b, 409, held["approval"].as_str().unwrap());
    // The upload is on the record, with its grants and the approval.
    let uploads = w.changes("plugin.upload").await;
    let r = uploads
        .iter()
        .find(|r| r.target == "grabber")
        .expect("audited");
    assert_eq!(r.actor, "token:op-a");
    assert_eq!(r.detail["grants"]["fs"][0]["host_path"], "/");
    assert_eq!(r.detail["held"], held["approval"]);
    assert_eq!(r.detail["digest"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn a_symlink_inside_an_allowed_root_does_not_widen_it() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("templates");
    std::fs::create_dir(&allowed).unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("escape")).unwrap();
    w.ceiling(
        "team-a",
        json!({ "fs": [{ "path": allowed, "rw": false }] }),
    )
    .await;
    let op = w.token("op-a", json!({ "team-a": "operator" })).await;
    let inside = format!(
        "[[grants.fs]]\nhost_path = \"{}\"\nguest_path = \"/t\"\n",
        allowed.display()
    );
    let (s, b) = w
        .upload_as(&op, &probe_manifest("tpl", "1.0.0", "team-a", &inside))
        .await;
    assert_eq!(s, 201, "inside the ceiling installs at once: {b}");
    assert_eq!(b["active"], true);
    let escape = format!(
        "[[grants.fs]]\nhost_path = \"{}\"\nguest_path = \"/t\"\n",
        allowed.join("escape").display()
    );
    let (s, b) = w
        .upload_as(&op, &probe_manifest("tpl2", "1.0.0", "team-a", &escape))
        .await;
    assert_eq!(s, 202, "{b}");
    let rw = format!("{inside}mode = \"rw\"\n");
    let (s, b) = w
        .upload_as(&op, &probe_manifest("tpl3", "1.0.0", "team-a", &rw))
        .await;
    assert_eq!(s, 202, "read-write is beyond a read-only root: {b}");
}

#[tokio::test]
async fn foreign_secrets_are_held_and_allowed_ones_work() {
    let w = World::start().await;
    for (name, value) in [("team-a-db", "a-pass"), ("team-b-db", "b-pass")] {
        let (s, b) = w
            .server
            .send(
                Method::PUT,
                &format!("/v1/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert!(s == 201 || s == 204 || s == 200, "{s} {b}");
    }
    w.ceiling("team-a", json!({ "secrets": ["team-a-*"] }))
        .await;
    let op = w.token("op-a", json!({ "team-a": "operator" })).await;
    let own = "[grants.secrets]\nnames = [\"team-a-db\"]\n";
    let (s, b) = w
        .upload_as(&op, &probe_manifest("reader", "1.0.0", "team-a", own))
        .await;
    assert_eq!(s, 201, "{b}");
    // Allowed (and redacted from the output, as every revealed secret is).
    assert_eq!(
        probe(
            &w.server,
            "reader",
            json!({ "op": "secret", "name": "team-a-db" })
        )
        .await,
        "ok:[REDACTED]"
    );
    let foreign = "[grants.secrets]\nnames = [\"team-a-db\", \"team-b-db\"]\n";
    let (s, b) = w
        .upload_as(&op, &probe_manifest("reader", "1.1.0", "team-a", foreign))
        .await;
    assert_eq!(s, 202, "{b}");
    let reasons = b["held"]["reasons"].to_string();
    assert!(reasons.contains("team-b-db"), "{reasons}");
    // The working version keeps serving, without the foreign secret.
    assert_eq!(w.active("reader").await, "1.0.0");
    let got = probe(
        &w.server,
        "reader",
        json!({ "op": "secret", "name": "team-b-db" }),
    )
    .await;
    assert!(got.starts_with("err:Denied"), "{got}");
}

#[tokio::test]
async fn wide_kube_scopes_and_unnamed_cluster_kinds_are_held() {
    let w = World::start().await;
    w.ceiling(
        "team-a",
        json!({ "kube": [{ "cluster": "test", "namespaces": ["team-a"],
            "resources": ["apps/Deployment", "ConfigMap"], "verbs": ["get", "apply"],
            "cluster_scoped": ["Namespace"] }] }),
    )
    .await;
    let op = w.token("op-a", json!({ "team-a": "operator" })).await;
    let inside = "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"team-a\"]\nresources = [\"apps/Deployment\"]\nverbs = [\"apply\"]\n";
    let (s, b) = w
        .upload_as(&op, &probe_manifest("deployer", "1.0.0", "team-a", inside))
        .await;
    assert_eq!(s, 201, "{b}");
    for (version, grant, needle) in [
        (
            "1.1.0",
            "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"team-a\"]\nresources = [\"*\"]\nverbs = [\"apply\"]\n",
            "resources [\"*\"]",
        ),
        (
            "1.2.0",
            "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"kube-system\"]\nresources = [\"apps/Deployment\"]\nverbs = [\"apply\"]\n",
            "kube-system",
        ),
        (
            "1.3.0",
            "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"team-a\"]\nresources = [\"*\"]\nverbs = [\"apply\"]\ncluster_scoped = [\"rbac.authorization.k8s.io/ClusterRoleBinding\"]\n",
            "ClusterRoleBinding",
        ),
        (
            "1.4.0",
            "[[grants.kube]]\ncluster = \"test\"\nnamespaces = [\"team-a\"]\nresources = [\"apps/Deployment\"]\nverbs = [\"apply\"]\nforce = true\n",
            "force",
        ),
    ] {
        let (s, b) = w
            .upload_as(&op, &probe_manifest("deployer", version, "team-a", grant))
            .await;
        assert_eq!(s, 202, "{version}: {b}");
        let reasons: Vec<&str> = b["held"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let reasons = reasons.join("\n");
        assert!(reasons.contains(needle), "{version}: {reasons}");
        assert_eq!(b["held"]["approver"], "global admin");
    }
    assert_eq!(w.active("deployer").await, "1.0.0");
    // `cluster_scoped = true` (all kinds at once) is no longer a grant at all.
    let all = "[[grants.kube]]\ncluster = \"test\"\nresources = [\"*\"]\nverbs = [\"apply\"]\ncluster_scoped = true\n";
    let (s, b) = w
        .upload_as(&op, &probe_manifest("deployer", "1.5.0", "team-a", all))
        .await;
    assert_error(s, &b, 422, "name the cluster-scoped kinds");
}

#[tokio::test]
async fn another_projects_plugin_cannot_be_published_or_read() {
    let w = World::start().await;
    let op_a = w.token("op-a", json!({ "team-a": "operator" })).await;
    let op_b = w.token("op-b", json!({ "team-b": "operator" })).await;
    let viewer_b = w.token("viewer-b", json!({ "team-b": "viewer" })).await;
    let (s, b) = w
        .upload_as(&op_a, &probe_manifest("shared-name", "1.0.0", "team-a", ""))
        .await;
    assert_eq!(s, 201, "{b}");
    // Naming another project is a conflict; naming none finds the owner.
    let (s, b) = w
        .upload_as(&op_b, &probe_manifest("shared-name", "2.0.0", "team-b", ""))
        .await;
    assert_error(s, &b, 409, "belongs to project `team-a`");
    let (s, b) = w
        .upload_as(&op_b, &manifest("shared-name", "2.0.0", "deploy-step", ""))
        .await;
    assert_error(s, &b, 403, "operator role in project `team-a`");
    // Nor activate, invoke, read or see it in the listing.
    let (s, _) = w
        .send_as(
            &op_b,
            Method::POST,
            "/v1/plugins/shared-name/invoke",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = w
        .send_as(&viewer_b, Method::GET, "/v1/plugins/shared-name", None)
        .await;
    assert_eq!(s, 403);
    let (_, list) = w.send_as(&viewer_b, Method::GET, "/v1/plugins", None).await;
    assert_eq!(list["plugins"], json!([]), "{list}");
    let (_, list) = w.send_as(&op_a, Method::GET, "/v1/plugins", None).await;
    assert_eq!(list["plugins"][0]["project"], "team-a", "{list}");
    // A project that does not exist cannot be claimed.
    let (s, b) = w
        .upload_as(&op_a, &probe_manifest("x", "1.0.0", "nowhere", ""))
        .await;
    assert_error(s, &b, 404, "nowhere");
    // Every refusal is on the record.
    let refused = w
        .server
        .env()
        .audit
        .query(&capstan::capabilities::audit::AuditQuery {
            capability: Some("api".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let by_b: Vec<_> = refused
        .iter()
        .filter(|r| r.actor == "token:op-b" && r.verb == "POST")
        .map(|r| r.outcome.as_str())
        .collect();
    assert!(by_b.contains(&"409") && by_b.contains(&"403"), "{by_b:?}");
}

#[tokio::test]
async fn a_plugin_reuploaded_under_a_deleted_name_does_not_inherit_its_kv() {
    let w = World::start().await;
    w.ceiling("*", json!({ "kv_max_bytes": 4096 })).await;
    let op_a = w.token("op-a", json!({ "team-a": "operator" })).await;
    let op_b = w.token("op-b", json!({ "team-b": "operator" })).await;
    let kv = "[grants.kv]\nmax_bytes = 4096\nmax_value_bytes = 1024\n";
    let (s, b) = w
        .upload_as(&op_a, &probe_manifest("stateful", "1.0.0", "team-a", kv))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        probe(
            &w.server,
            "stateful",
            json!({ "op": "kv-set", "key": "cred", "value": "team-a-only" })
        )
        .await,
        "ok:set"
    );
    let (s, _) = w
        .server
        .send(Method::DELETE, "/v1/plugins/stateful", None)
        .await;
    assert_eq!(s, 204);
    let deleted = w.changes("plugin.delete").await;
    assert_eq!(deleted[0].detail["kv_keys_deleted"], 1, "{:?}", deleted[0]);
    let (s, b) = w
        .upload_as(&op_b, &probe_manifest("stateful", "1.0.0", "team-b", kv))
        .await;
    assert_eq!(s, 201, "the freed name can be claimed: {b}");
    assert_eq!(b["project"], "team-b");
    assert_eq!(
        probe(
            &w.server,
            "stateful",
            json!({ "op": "kv-get", "key": "cred" })
        )
        .await,
        "ok:<none>"
    );
}

#[tokio::test]
async fn nobody_approves_their_own_widening() {
    let w = World::start().await;
    w.ceiling(
        "team-a",
        json!({ "http": ["https://api.team-a.example"], "secrets": ["team-a-*"] }),
    )
    .await;
    let op = w.token("op-a", json!({ "team-a": "operator" })).await;
    let admin_a = w.token("admin-a", json!({ "team-a": "admin" })).await;
    let admin_a2 = w.token("admin-a2", json!({ "team-a": "admin" })).await;
    let (s, b) = w
        .upload_as(&op, &probe_manifest("notifier", "1.0.0", "team-a", ""))
        .await;
    assert_eq!(s, 201, "{b}");

    // Inside the ceiling, but wider than the active version: a project
    // admin must approve; the operator who uploaded cannot.
    let http = "[grants.http]\nallow = [\"https://api.team-a.example\"]\n";
    let (s, b) = w
        .upload_as(&op, &probe_manifest("notifier", "1.1.0", "team-a", http))
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["held"]["approver"], "project admin");
    assert_eq!(
        b["held"]["diff"]["added"],
        json!(["http https://api.team-a.example"])
    );
    let id = b["held"]["approval"].as_str().unwrap().to_string();
    let (s, _) = w
        .send_as(
            &op,
            Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 403, "an operator approves nothing");
    let (s, shown) = w
        .send_as(&op, Method::GET, &format!("/v1/approvals/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        shown["detail"]["diff"]["added"][0],
        "http https://api.team-a.example"
    );
    let (s, b) = w
        .send_as(
            &admin_a,
            Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(json!({ "comment": "reviewed the origin" })),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"], "approved");
    assert_eq!(w.active("notifier").await, "1.1.0", "approval activates it");

    // Beyond the ceiling, uploaded by a project admin: only a global admin
    // may approve, and never the uploader.
    let wider = "[grants.http]\nallow = [\"https://evil.example\"]\n";
    let (s, b) = w
        .upload_as(
            &admin_a,
            &probe_manifest("notifier", "1.2.0", "team-a", wider),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["held"]["approver"], "global admin");
    let id = b["held"]["approval"].as_str().unwrap().to_string();
    let (s, b) = w
        .send_as(
            &admin_a,
            Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            None,
        )
        .await;
    assert_error(s, &b, 403, "cannot decide it");
    let (s, b) = w
        .send_as(
            &admin_a2,
            Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            None,
        )
        .await;
    assert_error(s, &b, 403, "global `admin` role");
    let (s, b) = w
        .server
        .send(
            Method::POST,
            &format!("/v1/approvals/{id}/reject"),
            Some(json!({ "comment": "no" })),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"], "rejected");
    assert_eq!(w.active("notifier").await, "1.1.0");
    let (s, b) = w
        .send_as(
            &admin_a,
            Method::PUT,
            "/v1/plugins/notifier/active",
            Some(json!({ "version": "1.2.0" })),
        )
        .await;
    assert_eq!(s, 409, "a rejected version stays inactive: {b}");

    // Narrowing needs nobody.
    let (s, b) = w
        .upload_as(&op, &probe_manifest("notifier", "1.3.0", "team-a", ""))
        .await;
    assert_eq!(s, 201, "{b}");
    let decisions = w.changes("approval.approve").await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].actor, "token:admin-a");
    assert_eq!(w.changes("approval.reject").await.len(), 1);
    let activations = w.changes("plugin.activate").await;
    let from_to: Vec<_> = activations
        .iter()
        .map(|r| (r.detail["from"].clone(), r.detail["to"].clone()))
        .collect();
    assert!(
        from_to.contains(&(json!("1.0.0"), json!("1.1.0"))),
        "{from_to:?}"
    );
}

#[tokio::test]
async fn admins_take_effect_at_once_and_every_change_is_recorded() {
    let w = World::start().await;
    let wide = "[[grants.fs]]\nhost_path = \"/tmp\"\nguest_path = \"/tmp\"\n";
    let (s, b) = w
        .server
        .upload(
            &probe_manifest("admin-tool", "1.0.0", "team-a", wide),
            &guest(guests::PROBE),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["active"], true);
    w.token("op-a", json!({ "team-a": "operator" })).await;
    w.ceiling("team-a", json!({ "kv_max_bytes": 1024 })).await;
    let tokens = w.changes("token.create").await;
    assert_eq!(
        tokens[0].detail["projects"],
        json!({ "team-a": "operator" })
    );
    let ceilings = w.changes("ceiling.set").await;
    assert_eq!(ceilings[0].target, "ceiling team-a");
    assert_eq!(ceilings[0].detail["to"]["kv_max_bytes"], 1024);
    let projects = w.changes("project.create").await;
    assert_eq!(projects.len(), 2);
    let uploads = w.changes("plugin.upload").await;
    assert_eq!(uploads[0].detail["role"], "deploy-step");
    assert_eq!(uploads[0].detail["version"], "1.0.0");
    assert!(uploads[0].actor.starts_with("token:"));
    // Ceilings can be read by members, changed only by global admins.
    let op = w.token("op-a2", json!({ "team-a": "operator" })).await;
    let (s, b) = w.send_as(&op, Method::GET, "/v1/ceilings", None).await;
    assert_eq!(s, 200);
    assert_eq!(b["ceilings"][0]["project"], "team-a");
    let (s, _) = w
        .send_as(
            &op,
            Method::PUT,
            "/v1/ceilings/team-a",
            Some(json!({ "kv_max_bytes": 1 << 30 })),
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = w
        .server
        .send(
            Method::PUT,
            "/v1/ceilings/team-a",
            Some(json!({ "fs": [{ "path": "relative" }] })),
        )
        .await;
    assert_error(s, &b, 400, "must be absolute");
    drop(w.kubeconfig);
}

#[tokio::test]
async fn an_approval_covers_only_the_content_it_was_given_for() {
    let w = World::start().await;
    w.ceiling("team-a", json!({ "secrets": ["team-a-*"] }))
        .await;
    let admin_a = w.token("admin-a", json!({ "team-a": "admin" })).await;
    let (s, b) = w
        .upload_as(&admin_a, &probe_manifest("step", "1.0.0", "team-a", ""))
        .await;
    assert_eq!(s, 201, "{b}");
    // A narrow secret beyond the ceiling, uploaded inactive, approved.
    let narrow = "[grants.secrets]\nnames = [\"shared-db\"]\n";
    let form = reqwest::multipart::Form::new()
        .text(
            "manifest",
            probe_manifest("step", "1.1.0", "team-a", narrow),
        )
        .part(
            "component",
            reqwest::multipart::Part::bytes(guest(guests::PROBE)),
        );
    let r = w
        .server
        .client
        .post(format!("{}/v1/plugins?activate=false", w.server.url))
        .bearer_auth(&admin_a)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!(s, 202, "{b}");
    let id = b["held"]["approval"].as_str().unwrap().to_string();
    let (s, b) = w
        .server
        .send(Method::POST, &format!("/v1/approvals/{id}/approve"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    // The project admin deletes the approved version and uploads the same
    // number again with wider grants: the old approval does not carry over.
    let (s, _) = w
        .send_as(
            &admin_a,
            Method::DELETE,
            "/v1/plugins/step/versions/1.1.0",
            None,
        )
        .await;
    assert_eq!(s, 204);
    let wide = "[grants.secrets]\nnames = [\"shared-db\", \"prod-root\"]\n";
    let (s, b) = w
        .upload_as(&admin_a, &probe_manifest("step", "1.1.0", "team-a", wide))
        .await;
    assert_eq!(s, 202, "a new approval is needed: {b}");
    assert_ne!(b["held"]["approval"], id.as_str());
    assert_eq!(w.active("step").await, "1.0.0");
}

#[tokio::test]
async fn uploading_the_active_version_again_unchanged_files_nothing() {
    let w = World::start().await;
    w.ceiling("team-a", json!({ "secrets": ["team-a-*"] }))
        .await;
    let op = w.token("op-a", json!({ "team-a": "operator" })).await;
    let m = probe_manifest(
        "steady",
        "1.0.0",
        "team-a",
        "[grants.secrets]\nnames = [\"team-a-db\"]\n",
    );
    let (s, b) = w.upload_as(&op, &m).await;
    assert_eq!(s, 201, "{b}");
    // The ceiling narrows; the same bytes uploaded again change nothing, so
    // they are neither held nor reported as inactive.
    w.ceiling("team-a", json!({})).await;
    let (s, b) = w.upload_as(&op, &m).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["active"], true, "{b}");
    assert_eq!(b["held"], Value::Null);
    let (_, approvals) = w.server.get("/v1/approvals").await;
    assert_eq!(approvals["approvals"], json!([]));
    // A new version with the same grants is now beyond the ceiling.
    let (s, b) = w.upload_as(&op, &m.replace("1.0.0", "1.0.1")).await;
    assert_eq!(s, 202, "{b}");
}
