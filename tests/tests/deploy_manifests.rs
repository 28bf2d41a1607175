//! The Kubernetes manifests in `deploy/kubernetes/` against a real
//! kube-apiserver (v1.20.2, see `capstan_tests::kube_env`): every document of
//! every file is accepted by a server-side apply with `dryRun=All` (the
//! namespace is created for real first, as `kubectl apply` would), a broken
//! manifest is refused by the same check, and the manifests agree with each
//! other and with the binary's config parser. No guest, no Capstan server.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use capstan_tests::kube_env;
use serde_json::Value;

/// One YAML document of a manifest file, with what the URL needs. The
/// server parses the document itself; only these top-level fields are read
/// here (from the repository's own, plainly formatted files).
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    text: String,
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every `*.yaml` file of the directory but the kustomization, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("deploy/kubernetes exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// The documents of every manifest file, the namespace first.
fn documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in manifest_files() {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for part in text.split("\n---\n") {
            let has_content = part
                .lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'));
            if has_content {
                docs.push(parse_doc(&file, part).unwrap_or_else(|e| panic!("{file}: {e:#}")));
            }
        }
    }
    docs.sort_by_key(|d| d.kind != "Namespace");
    docs
}

fn parse_doc(file: &str, text: &str) -> Result<Doc> {
    let top = |key: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .map(|v| v.trim().to_string())
    };
    // `metadata:` block: its lines indented by exactly two spaces.
    let meta = |key: &str| -> Option<String> {
        text.lines()
            .skip_while(|l| *l != "metadata:")
            .skip(1)
            .take_while(|l| l.starts_with(' ') || l.is_empty())
            .find_map(|l| l.strip_prefix(&format!("  {key}: ")))
            .map(|v| v.trim().to_string())
    };
    Ok(Doc {
        file: file.to_string(),
        text: text.to_string(),
        api_version: top("apiVersion").context("no apiVersion")?,
        kind: top("kind").context("no kind")?,
        name: meta("name").context("no metadata.name")?,
        namespace: meta("namespace"),
    })
}

/// The test apiserver as its admin, over verified TLS.
struct Api {
    server: String,
    token: String,
    http: reqwest::Client,
    discovery: tokio::sync::Mutex<HashMap<String, Value>>,
}

impl Api {
    fn new() -> Result<Api> {
        let env = kube_env::shared();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(env.ca_cert())?;
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca)?)
            .build()?;
        Ok(Api {
            server: env.server.clone(),
            token: env.admin_token.clone(),
            http,
            discovery: Default::default(),
        })
    }

    /// The plural resource name of `kind` and whether it is namespaced, from
    /// the server's discovery document for `api_version`.
    async fn resource(&self, api_version: &str, kind: &str) -> Result<(String, bool)> {
        let mut cache = self.discovery.lock().await;
        if !cache.contains_key(api_version) {
            let path = match api_version {
                "v1" => "/api/v1".to_string(),
                group => format!("/apis/{group}"),
            };
            let (status, body) = self.request(reqwest::Method::GET, &path).await?;
            if status != 200 {
                bail!("{api_version} is not served by this apiserver ({status}): {body}");
            }
            cache.insert(api_version.to_string(), body);
        }
        let resources = cache[api_version]["resources"].as_array().cloned();
        resources
            .unwrap_or_default()
            .iter()
            .find(|r| r["kind"] == kind && !r["name"].as_str().unwrap_or("/").contains('/'))
            .map(|r| {
                let plural = r["name"].as_str().unwrap_or_default().to_string();
                (plural, r["namespaced"] == true)
            })
            .with_context(|| format!("{api_version} has no kind {kind}"))
    }

    async fn path(&self, doc: &Doc) -> Result<String> {
        let (plural, namespaced) = self.resource(&doc.api_version, &doc.kind).await?;
        let prefix = match doc.api_version.as_str() {
            "v1" => "/api/v1".to_string(),
            group => format!("/apis/{group}"),
        };
        let ns = match (namespaced, &doc.namespace) {
            (true, Some(ns)) => format!("/namespaces/{ns}"),
            (true, None) => bail!("{} {} names no namespace", doc.kind, doc.name),
            (false, _) => String::new(),
        };
        Ok(format!("{prefix}{ns}/{plural}/{}", doc.name))
    }

    /// Server-side apply of `doc` (a dry run unless `for_real`): status and
    /// the object (or the error) the server answers.
    async fn apply(&self, doc: &Doc, for_real: bool) -> Result<(u16, Value)> {
        let path = self.path(doc).await?;
        self.apply_at(&path, &doc.text, for_real).await
    }

    /// Server-side apply of the YAML `text` at `path`.
    async fn apply_at(&self, path: &str, text: &str, for_real: bool) -> Result<(u16, Value)> {
        let mut query = "fieldManager=capstan-ci".to_string();
        if !for_real {
            query.push_str("&dryRun=All");
        }
        let r = self
            .http
            .patch(format!("{}{path}?{query}", self.server))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/apply-patch+yaml")
            .body(text.to_string())
            .send()
            .await?;
        Ok(capstan_tests::status_json(r).await)
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(capstan_tests::status_json(r).await)
    }

    /// Creates (for real) the namespace the manifests live in.
    async fn ensure_namespace(&self, docs: &[Doc]) -> Result<()> {
        let ns = docs
            .iter()
            .find(|d| d.kind == "Namespace")
            .context("no Namespace in deploy/kubernetes")?;
        // The tests of this file apply it at once: the one that loses the
        // race to create it gets 409 and applies again (an update then).
        let (mut status, mut body) = self.apply(ns, true).await?;
        if status == 409 {
            (status, body) = self.apply(ns, true).await?;
        }
        if status != 200 && status != 201 {
            bail!("creating namespace {}: {status} {body}", ns.name);
        }
        Ok(())
    }
}

/// Dry-run applies every document; returns the objects the server answered,
/// by `Kind/name`.
async fn dry_run_all(api: &Api) -> BTreeMap<String, Value> {
    let docs = documents();
    api.ensure_namespace(&docs).await.unwrap();
    let mut objects = BTreeMap::new();
    let mut refused = Vec::new();
    for doc in &docs {
        let (status, body) = api.apply(doc, false).await.unwrap();
        if status == 200 || status == 201 {
            assert_eq!(
                (body["kind"].as_str(), body["metadata"]["name"].as_str()),
                (Some(doc.kind.as_str()), Some(doc.name.as_str())),
                "{}",
                doc.file
            );
            objects.insert(format!("{}/{}", doc.kind, doc.name), body);
        } else {
            refused.push(format!(
                "{} {} {}: {status} {}",
                doc.file, doc.kind, doc.name, body["message"]
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "refused by the apiserver:\n{}",
        refused.join("\n")
    );
    objects
}

#[tokio::test]
async fn every_manifest_is_accepted_by_a_server_side_dry_run() {
    let api = Api::new().unwrap();
    let objects = dry_run_all(&api).await;
    for kind in [
        "Deployment/capstan",
        "Service/capstan",
        "ConfigMap/capstan",
        "Secret/capstan",
        "PodDisruptionBudget/capstan",
        "StatefulSet/capstan-postgres",
        "Service/capstan-postgres",
    ] {
        assert!(
            objects.contains_key(kind),
            "no {kind} in deploy/kubernetes: {:?}",
            objects.keys()
        );
    }
    // A dry run stores nothing: only the namespace exists.
    for doc in documents().iter().filter(|d| d.kind != "Namespace") {
        let (status, _) = api
            .request(reqwest::Method::GET, &api.path(doc).await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            status, 404,
            "{} {} was stored by a dry run",
            doc.kind, doc.name
        );
    }
}

/// The Deployment document of capstan.yaml with `edit` applied to its text.
fn broken_deployment(edit: impl Fn(&str) -> String) -> Doc {
    let mut doc = documents()
        .into_iter()
        .find(|d| d.kind == "Deployment")
        .unwrap();
    let broken = edit(&doc.text);
    assert_ne!(broken, doc.text, "the edit changed nothing");
    doc.text = broken;
    doc
}

#[tokio::test]
async fn a_broken_manifest_is_refused() {
    let api = Api::new().unwrap();
    api.ensure_namespace(&documents()).await.unwrap();

    // Pods whose labels the selector does not match: a validation error.
    let doc = broken_deployment(|t| {
        t.replacen(
            "      labels:\n        app.kubernetes.io/name: capstan\n",
            "      labels:\n        app.kubernetes.io/name: other\n",
            1,
        )
    });
    let (status, body) = api.apply(&doc, false).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("selector"),
        "{body}"
    );

    // A field the schema does not have (a typo). Kubernetes 1.20 answers
    // 500 "field not declared in schema" (later versions 4xx).
    let doc = broken_deployment(|t| t.replacen("readinessProbe:", "readinesProbe:", 1));
    let (status, body) = api.apply(&doc, false).await.unwrap();
    assert!(status >= 400, "{status} {body}");
    assert!(
        body["message"].as_str().unwrap().contains("readinesProbe"),
        "{body}"
    );

    // The PDB as policy/v1, which Kubernetes 1.20 does not serve (why
    // pdb.yaml uses policy/v1beta1).
    let pdb = documents()
        .into_iter()
        .find(|d| d.kind == "PodDisruptionBudget")
        .unwrap();
    let text = pdb
        .text
        .replace("apiVersion: policy/v1beta1", "apiVersion: policy/v1");
    let ns = pdb.namespace.as_deref().unwrap();
    let path = format!(
        "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{}",
        pdb.name
    );
    let (status, body) = api.apply_at(&path, &text, false).await.unwrap();
    assert_eq!(status, 404, "{body}");
}

/// The pod template's container named `capstan`.
fn container(deployment: &Value) -> &Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "capstan"))
        .expect("a container named capstan")
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("a selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v)
}

#[tokio::test]
async fn the_manifests_agree_with_each_other_and_the_binary() {
    let api = Api::new().unwrap();
    let o = dry_run_all(&api).await;
    let deployment = &o["Deployment/capstan"];
    let pod = &deployment["spec"]["template"];
    let c = container(deployment);

    // The ConfigMap's config is accepted by the binary's own parser.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capstan.toml");
    std::fs::write(
        &path,
        o["ConfigMap/capstan"]["data"]["capstan.toml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let config = capstan::config::ServerConfig::from_file(&path).unwrap();
    config.validate().unwrap();

    // It listens on the container port the probes and the Service use.
    let http = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap();
    assert_eq!(http["containerPort"], config.listen.port());
    assert!(
        !config.listen.ip().is_loopback(),
        "a pod must listen beyond loopback"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }
    assert_eq!(
        o["Service/capstan"]["spec"]["ports"][0]["targetPort"],
        "http"
    );

    // Service and PDB select the Deployment's pods.
    let labels = &pod["metadata"]["labels"];
    assert!(labels_match(
        &o["Service/capstan"]["spec"]["selector"],
        labels
    ));
    assert!(labels_match(
        &o["PodDisruptionBudget/capstan"]["spec"]["selector"]["matchLabels"],
        labels
    ));
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);

    // Shutdown fits in the grace period: preStop sleep, then drain, then the
    // longest default request.
    let pre_stop = &c["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], "sleep");
    let sleep: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let needed = sleep * 1000 + config.api.drain_delay_ms + config.limits.default_deadline_ms;
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace * 1000 > needed,
        "grace {grace} s < {needed} ms of drain"
    );

    // The root filesystem is read-only: the data directory is a volume.
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| config
            .data_dir
            .starts_with(m["mountPath"].as_str().unwrap())
            && m["mountPath"] != "/"),
        "data_dir {:?} is not on a volume",
        config.data_dir
    );

    // Every Secret key the pods read exists.
    let env = c["env"].as_array().unwrap();
    let pg = &o["StatefulSet/capstan-postgres"]["spec"]["template"]["spec"]["containers"][0]["env"];
    for var in env.iter().chain(pg.as_array().unwrap()) {
        let Some(r) = var["valueFrom"]["secretKeyRef"].as_object() else {
            continue;
        };
        let secret = &o[&format!("Secret/{}", r["name"].as_str().unwrap())];
        let data = secret["data"]
            .as_object()
            .or(secret["stringData"].as_object())
            .unwrap();
        assert!(data.contains_key(r["key"].as_str().unwrap()), "{var}");
    }
    assert!(env.iter().any(|v| v["name"] == "CAPSTAN_DATABASE"));

    // kustomization.yaml lists every file.
    let kustomization =
        std::fs::read_to_string(manifests_dir().join("kustomization.yaml")).unwrap();
    for file in manifest_files() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            kustomization.contains(&format!("  - {name}\n")),
            "{name} not in kustomization.yaml"
        );
    }
}

/// `deploy/prometheus/capstan-rules.yaml` is valid for Prometheus's own
/// checker, and its unit tests (`capstan-rules.test.yaml`: the drift alert
/// fires after 15 min of drift, on one replica's gauge, labelled by the
/// provisioned instance) pass under `promtool test rules`.
#[test]
fn the_prometheus_rules_check_and_pass_their_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        ["check", "rules", "capstan-rules.yaml"],
        ["test", "rules", "capstan-rules.test.yaml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian's prometheus package; tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
