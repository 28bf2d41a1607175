//! A data directory written by the previous release (before projects,
//! ceilings and approvals; `tests/fixtures/make-datadir-0.1.0.sh` made it)
//! upgrades in place: plugins, versions, history, kv, secrets, tokens and
//! the audit log are all still there and work.

use std::path::Path;

use capstan_tests::{TestServer, probe};
use serde_json::json;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/datadir-0.1.0");
const ADMIN: &str = "fixture-admin-token-0123456789abcdef";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_data_directory_of_the_previous_release_upgrades_in_place() {
    if capstan_tests::sqlite_only("the previous release's SQLite data directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(FIXTURE), dir.path());
    let server = TestServer::start_in(dir, |c| c.admin_token = Some(ADMIN.into())).await;

    let (status, plugin) = server.get("/v1/plugins/stateful").await;
    assert_eq!(status, 200, "{plugin}");
    assert_eq!(plugin["active_version"], "1.1.0");
    assert_eq!(
        plugin["project"], "default",
        "old plugins join the default project"
    );
    assert_eq!(plugin["versions"].as_array().unwrap().len(), 2);
    let actions: Vec<&str> = plugin["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["upload", "activate", "upload", "activate"]);

    // kv written by the old release is read back by the plugin.
    assert_eq!(
        probe(
            &server,
            "stateful",
            json!({ "op": "kv-get", "key": "cursor" })
        )
        .await,
        "ok:42"
    );
    // The secret stored by the old release still decrypts (and is redacted).
    assert_eq!(
        probe(
            &server,
            "stateful",
            json!({ "op": "secret", "name": "fixture-secret" })
        )
        .await,
        "ok:[REDACTED]"
    );
    let (_, secrets) = server.get("/v1/secrets").await;
    assert_eq!(secrets["secrets"], json!(["fixture-secret"]));

    // The operator token created by the old release is still an operator.
    let ci = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/datadir-0.1.0.ci-token"
    ))
    .unwrap();
    let r = server
        .client
        .post(format!("{}/v1/plugins/stateful/invoke", server.url))
        .bearer_auth(ci.trim())
        .json(&json!({ "params": { "op": "kv-get", "key": "cursor" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, tokens) = server.get("/v1/tokens").await;
    let ci_info = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .cloned()
        .unwrap();
    assert_eq!(ci_info["role"], "operator");
    assert_eq!(ci_info["projects"], json!({}));

    // The old audit records are kept.
    let (_, audit) = server.get("/v1/audit?capability=api&limit=1000").await;
    let old = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"] == "token:bootstrap-admin" && r["target"] == "/v1/tokens")
        .count();
    assert_eq!(old, 1, "{audit}");

    // And the new model works on the old data: the old plugin keeps its
    // project, and the default project has no ceiling yet.
    let (status, projects) = server.get("/v1/projects").await;
    assert_eq!(status, 200);
    assert_eq!(projects["projects"][0]["name"], "default");
}
