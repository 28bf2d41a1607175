//! The test cluster as its admin sees it, independent of Capstan: requests
//! with `curl` and the admin token, and a stand-in for the quota controller
//! (kube-controller-manager does not run here).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::kube_env::KubeEnv;

impl KubeEnv {
    /// An API request as the cluster admin: the status and the JSON body
    /// (`null` if there is none).
    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.admin_as(method, "application/json", path, body)
    }

    /// A merge patch as the cluster admin (`path` may be a `/status`
    /// subresource); the status.
    pub fn admin_patch(&self, path: &str, patch: &Value) -> u16 {
        self.admin_patch_as("application/merge-patch+json", path, patch)
    }

    /// A patch of `content_type` (e.g. `application/apply-patch+yaml` for a
    /// server-side apply) as the cluster admin; the status.
    pub fn admin_patch_as(&self, content_type: &str, path: &str, patch: &Value) -> u16 {
        self.admin_as("PATCH", content_type, path, Some(patch)).0
    }

    /// A request with a body of `content_type` as the cluster admin: the
    /// status and the JSON body. Panics with the apiserver's log tail if it
    /// does not answer at all.
    pub fn admin_as(
        &self,
        method: &str,
        content_type: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let e = match request(
            &self.server,
            &self.admin_token,
            method,
            content_type,
            path,
            body,
        ) {
            Ok(answer) => return answer,
            Err(e) => e,
        };
        let log =
            std::fs::read_to_string(self.dir().join("kube-apiserver.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.contains("Observed a panic"))
            .filter(|l| !l.starts_with('\t'))
            .take(40)
            .collect();
        panic!("{method} {path}: {e}; apiserver log tail: {tail:#?}");
    }

    /// Plays the quota controller until the returned flag is set: every
    /// ResourceQuota in `namespaces` (all namespaces if `None`) gets
    /// `status.hard` = its `spec.hard` and zero usage, as
    /// kube-controller-manager would write.
    pub fn quota_controller(&self, namespaces: Option<Vec<String>>) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (server, token) = (self.server.clone(), self.admin_token.clone());
        let lists: Vec<String> = match namespaces {
            Some(ns) => ns
                .iter()
                .map(|ns| format!("/api/v1/namespaces/{ns}/resourcequotas"))
                .collect(),
            None => vec!["/api/v1/resourcequotas".into()],
        };
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for list in &lists {
                    count_quotas(&server, &token, list);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        stop
    }
}

fn count_quotas(server: &str, token: &str, list: &str) {
    // The stand-in keeps going through a restart of the apiserver.
    let Ok((200, list)) = request(server, token, "GET", "application/json", list, None) else {
        return;
    };
    for q in list["items"].as_array().into_iter().flatten() {
        if q["status"]["hard"].is_object() && q["status"]["hard"] == q["spec"]["hard"] {
            continue;
        }
        let hard = q["spec"]["hard"].clone();
        let used: serde_json::Map<String, Value> = hard
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| (k.clone(), json!("0")))
            .collect();
        let (ns, name) = (&q["metadata"]["namespace"], &q["metadata"]["name"]);
        let (ns, name) = (
            ns.as_str().unwrap_or_default(),
            name.as_str().unwrap_or_default(),
        );
        let _ = request(
            server,
            token,
            "PATCH",
            "application/merge-patch+json",
            &format!("/api/v1/namespaces/{ns}/resourcequotas/{name}/status"),
            Some(&json!({ "status": { "hard": hard, "used": used } })),
        );
    }
}

/// One `curl` request: the status and the JSON body (`null` if there is
/// none), or why no status came back.
fn request(
    server: &str,
    token: &str,
    method: &str,
    content_type: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sk", "-X", method, "-w", "\n%{http_code}"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-H")
        .arg(format!("Content-Type: {content_type}"));
    if let Some(b) = body {
        cmd.arg("--data-binary").arg(b.to_string());
    }
    let out = cmd
        .arg(format!("{server}{path}"))
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    match code.trim().parse::<u16>() {
        Ok(code) if code != 0 => Ok((code, serde_json::from_str(body).unwrap_or(Value::Null))),
        _ => Err(format!(
            "no answer ({}); stdout={text:?} stderr={}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}
