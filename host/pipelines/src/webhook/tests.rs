//! Webhook signatures, events and payloads of each provider, on the
//! trimmed documented payloads in `tests/fixtures/webhooks`.

use std::collections::HashMap;

use super::*;

const GITHUB: &str = include_str!("../../../../tests/fixtures/webhooks/github-push.json");
const GITLAB: &str = include_str!("../../../../tests/fixtures/webhooks/gitlab-push.json");
const GITLAB_TAG: &str = include_str!("../../../../tests/fixtures/webhooks/gitlab-tag-push.json");
const GITEA: &str = include_str!("../../../../tests/fixtures/webhooks/gitea-push.json");

fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Sync + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    move |name| map.get(&name.to_ascii_lowercase()).cloned()
}

#[test]
fn github_signatures_match_the_documented_test_vector() {
    // docs.github.com, "Validating webhook deliveries": this secret and
    // payload give this signature.
    let (secret, body) = ("It's a Secret to Everybody", b"Hello, World!");
    let want = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign(secret, body), want);
    let good = headers(&[("X-Hub-Signature-256", &format!("sha256={want}"))]);
    assert!(verify(Provider::Github, &good, body, secret));
    assert!(!verify(Provider::Github, &good, b"Hello, World?", secret));
    assert!(!verify(Provider::Github, &good, body, "another secret"));
    // The hex alone (Gitea's form), a bad hex or no header: refused.
    for bad in [want.to_string(), "sha256=zz".into(), "sha1=abc".into()] {
        let h = headers(&[("X-Hub-Signature-256", &bad)]);
        assert!(!verify(Provider::Github, &h, body, secret), "{bad}");
    }
    assert!(!verify(Provider::Github, &headers(&[]), body, secret));
}

#[test]
fn gitea_signs_the_hex_without_prefix_and_gitlab_sends_the_token() {
    let body = GITEA.as_bytes();
    let sig = sign("s3cret", body);
    assert!(verify(
        Provider::Gitea,
        &headers(&[("X-Gitea-Signature", &sig)]),
        body,
        "s3cret"
    ));
    assert!(verify(
        Provider::Gitea,
        &headers(&[("X-Forgejo-Signature", &sig)]),
        body,
        "s3cret"
    ));
    assert!(!verify(
        Provider::Gitea,
        &headers(&[("X-Gitea-Signature", &sig)]),
        body,
        "other"
    ));
    let gh = headers(&[("X-Hub-Signature-256", &format!("sha256={sig}"))]);
    assert!(
        !verify(Provider::Gitea, &gh, body, "s3cret"),
        "Gitea's own header"
    );

    let token = headers(&[("X-Gitlab-Token", "s3cret")]);
    assert!(verify(Provider::Gitlab, &token, b"{}", "s3cret"));
    assert!(!verify(Provider::Gitlab, &token, b"{}", "s3cret2"));
    assert!(!verify(Provider::Gitlab, &token, b"{}", "s3cre"));
    assert!(!verify(Provider::Gitlab, &headers(&[]), b"{}", "s3cret"));
}

#[test]
fn events_and_delivery_ids_per_provider() {
    let gh = headers(&[
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ]);
    assert_eq!(event_kind(Provider::Github, &gh), EventKind::Push);
    assert_eq!(
        delivery_id(Provider::Github, &gh).as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    let ping = headers(&[("X-GitHub-Event", "ping")]);
    assert_eq!(
        event_kind(Provider::Github, &ping),
        EventKind::Other("ping".into())
    );
    assert_eq!(delivery_id(Provider::Github, &ping), None);

    let tag = headers(&[
        ("X-Gitlab-Event", "Tag Push Hook"),
        ("X-Gitlab-Event-UUID", "uuid-1"),
        ("Idempotency-Key", "key-1"),
    ]);
    assert_eq!(event_kind(Provider::Gitlab, &tag), EventKind::Push);
    assert_eq!(
        delivery_id(Provider::Gitlab, &tag).as_deref(),
        Some("key-1"),
        "the retry-stable key first"
    );
    let old = headers(&[
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Event-UUID", "uuid-2"),
    ]);
    assert_eq!(
        delivery_id(Provider::Gitlab, &old).as_deref(),
        Some("uuid-2")
    );
    let mr = headers(&[("X-Gitlab-Event", "Merge Request Hook")]);
    assert_eq!(
        event_kind(Provider::Gitlab, &mr),
        EventKind::Other("Merge Request Hook".into())
    );

    let gitea = headers(&[("X-Gitea-Event", "push"), ("X-Gitea-Delivery", "d-1")]);
    assert_eq!(event_kind(Provider::Gitea, &gitea), EventKind::Push);
    assert_eq!(delivery_id(Provider::Gitea, &gitea).as_deref(), Some("d-1"));
    assert_eq!(
        event_kind(Provider::Gitea, &headers(&[])),
        EventKind::Other("(no event header)".into())
    );
}

#[test]
fn each_providers_push_payload_reduces_to_one_push() {
    let gh = parse_push(Provider::Github, GITHUB.as_bytes()).unwrap();
    assert_eq!(
        gh,
        Push {
            git_ref: "refs/heads/main".into(),
            sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into(),
            repo: "Codertocat/Hello-World".into(),
            pusher: "Codertocat".into(),
            deleted: false,
        }
    );
    let t = gh.trigger(Provider::Github, "d-1");
    assert_eq!(
        (t["kind"].as_str(), t["branch"].as_str(), t["tag"].as_str()),
        (Some("push"), Some("main"), Some(""))
    );
    assert_eq!(t["started_by"], "push:Codertocat");
    for field in crate::expr::TRIGGER_FIELDS {
        assert!(t.get(*field).is_some(), "trigger.{field} is set");
    }

    let gl = parse_push(Provider::Gitlab, GITLAB.as_bytes()).unwrap();
    assert_eq!(
        (gl.repo.as_str(), gl.pusher.as_str()),
        ("mike/diaspora", "jsmith")
    );
    assert_eq!(gl.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    let tag = parse_push(Provider::Gitlab, GITLAB_TAG.as_bytes()).unwrap();
    assert_eq!(tag.trigger(Provider::Gitlab, "x")["tag"], "v1.0.0");
    assert!(!tag.deleted, "a new tag has zeros before, not after");

    let gt = parse_push(Provider::Gitea, GITEA.as_bytes()).unwrap();
    assert_eq!(
        (gt.repo.as_str(), gt.pusher.as_str(), gt.git_ref.as_str()),
        ("gitea/webhooks", "gitea", "refs/heads/develop")
    );
    assert_eq!(gt.sha, "bffeb74224043ba2feb48d137756c8a9331c449a");
}

#[test]
fn deletions_are_marked_and_broken_payloads_named() {
    let mut v: Value = serde_json::from_str(GITHUB).unwrap();
    v["after"] = "0000000000000000000000000000000000000000".into();
    v["deleted"] = true.into();
    v["head_commit"] = Value::Null;
    let p = parse_push(Provider::Github, v.to_string().as_bytes()).unwrap();
    assert!(p.deleted && p.sha.is_empty(), "{p:?}");

    let mut v: Value = serde_json::from_str(GITLAB).unwrap();
    v["after"] = "0000000000000000000000000000000000000000".into();
    v["checkout_sha"] = Value::Null;
    assert!(
        parse_push(Provider::Gitlab, v.to_string().as_bytes())
            .unwrap()
            .deleted
    );

    let err = parse_push(Provider::Gitlab, GITHUB.as_bytes()).unwrap_err();
    assert!(err.contains("project.path_with_namespace"), "{err}");
    let err = parse_push(Provider::Github, b"payload=%7B%7D").unwrap_err();
    assert!(err.contains("not JSON"), "{err}");
}
