//! Parsing the pipeline document, triggers, parameters and backoff.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

const FULL: &str = r#"
name: release
project: shop
triggers:
  - push:
      provider: github
      repo: Acme/Shop
      branches: [main, "release/*"]
      tags: ["v*"]
      secret: shop-webhook
  - cron:
      schedule: "0 3 * * 1-5"
      timezone: Europe/Berlin
  - manual
params:
  image: {type: string, required: true}
  replicas: {type: number, default: 2}
  tier: {type: enum, values: [small, large], default: small}
environments:
  test: {}
  prod: {lock: supersede}
concurrency: 2
steps:
  - id: render
    plugin: render-deployment@1.0.0
    params:
      name: shop
      image: "${{ params.image }}"
      replicas: 3
    outputs: [manifest]
    timeout: 2m
    retries: {count: 2, backoff: {initial: 500ms, max: 10s, factor: 3, jitter: false}, on: [transient]}
  - id: gate
    needs: [render]
    approval:
      approvers: {role: release-manager}
      required: 2
      timeout: 24h
  - id: prod
    plugin: wait-rollout
    needs: [gate]
    if: params.tier == "large"
    environment: prod
    on_failure: rollback
finally:
  - id: notify
    plugin: render-deployment
"#;

#[test]
fn parses_every_field_of_a_full_pipeline() {
    let p = Pipeline::from_yaml(FULL).expect("parses");
    assert_eq!(p.name, "release");
    assert_eq!(p.project, "shop");
    assert_eq!(p.triggers.len(), 3);
    assert!(
        matches!(&p.triggers[0], Trigger::Push(t) if t.provider == Provider::Github && t.tags == ["v*"] && t.secret.as_deref() == Some("shop-webhook"))
    );
    assert!(matches!(&p.triggers[1], Trigger::Cron(c) if c.timezone == "Europe/Berlin"));
    assert_eq!(p.triggers[2], Trigger::Manual);
    assert_eq!(p.params["replicas"].default, Some(json!(2)));
    assert_eq!(p.params["tier"].kind, ParamType::Enum);
    assert_eq!(p.environments["test"].lock, LockPolicy::Queue);
    assert_eq!(p.environments["prod"].lock, LockPolicy::Supersede);
    assert_eq!(p.concurrency, Some(2));

    let render = p.step("render").expect("render step");
    let plugin = render.plugin.as_ref().expect("plugin");
    assert_eq!(
        (plugin.name.as_str(), plugin.version.as_deref()),
        ("render-deployment", Some("1.0.0"))
    );
    assert_eq!(render.params["image"], json!("${{ params.image }}"));
    assert_eq!(render.params["replicas"], json!(3));
    assert_eq!(
        render.timeout.as_ref().map(DurationText::ms),
        Some(Ok(120_000))
    );
    let retries = render.retries.as_ref().expect("retries");
    assert_eq!(
        (retries.count, retries.on.as_slice()),
        (2, &[ErrorKind::Transient][..])
    );

    let gate = p.step("gate").expect("gate");
    let approval = gate.approval.as_ref().expect("approval");
    assert_eq!((approval.required, approval.allow_self), (2, false));
    assert_eq!(gate.output_names(), ["approved_by", "comments"]);

    let prod = p.step("prod").expect("prod");
    assert_eq!(prod.condition.as_deref(), Some(r#"params.tier == "large""#));
    assert_eq!(prod.on_failure, OnFailure::Rollback);
    assert!(p.is_finally("notify") && !p.is_finally("prod"));
}

#[test]
fn defaults_fill_project_policy_and_retry_kinds() {
    let p =
        Pipeline::from_yaml("name: x\nsteps:\n  - id: a\n    plugin: p\n    retries: {count: 1}\n")
            .expect("parses");
    assert_eq!(p.project, "default");
    let a = &p.steps[0];
    assert_eq!(a.on_failure, OnFailure::Stop);
    let r = a.retry_policy();
    assert_eq!(r.on, [ErrorKind::Transient, ErrorKind::Timeout]);
    assert!(r.allows(0, ErrorKind::Timeout) && !r.allows(1, ErrorKind::Timeout));
    assert!(!r.allows(0, ErrorKind::InvalidInput));
    assert_eq!(p.steps[0].retry_policy().backoff, Backoff::default());
}

#[test]
fn unknown_fields_and_bad_plugin_refs_are_refused_with_a_location() {
    let err = Pipeline::from_yaml("name: x\nsteps:\n  - id: a\n    plugin: p\n    neds: [b]\n")
        .expect_err("typo refused")
        .to_string();
    assert!(err.contains("neds"), "{err}");
    assert!(err.contains("line 5") || err.contains("5:"), "{err}");

    let err = Pipeline::from_yaml("name: x\nsteps:\n  - id: a\n    plugin: \"p@\"\n")
        .expect_err("empty version refused")
        .to_string();
    assert!(err.contains("name@version"), "{err}");
}

fn push(git_ref: &str) -> PushEvent {
    PushEvent {
        provider: Provider::Github,
        repo: "acme/shop".into(),
        git_ref: git_ref.into(),
    }
}

#[test]
fn push_triggers_filter_branches_and_tags_with_globs() {
    let p = Pipeline::from_yaml(FULL).expect("parses");
    let Trigger::Push(t) = &p.triggers[0] else {
        panic!("push trigger first")
    };
    assert!(t.check().is_empty());
    assert!(t.matches(&push("refs/heads/main")));
    assert!(t.matches(&push("refs/heads/release/1.2")));
    assert!(
        !t.matches(&push("refs/heads/release/1.2/hotfix")),
        "* stops at /"
    );
    assert!(!t.matches(&push("refs/heads/feature")));
    assert!(t.matches(&push("refs/tags/v1.0.0")));
    assert!(!t.matches(&push("refs/tags/nightly")));
    let gitlab = PushEvent {
        provider: Provider::Gitlab,
        ..push("refs/heads/main")
    };
    assert!(!t.matches(&gitlab), "provider must match");

    let only_branches = PushTrigger {
        tags: vec![],
        ..t.clone()
    };
    assert!(!only_branches.matches(&push("refs/tags/v1.0.0")));
    let unfiltered = PushTrigger {
        branches: vec![],
        tags: vec![],
        ..t.clone()
    };
    assert!(unfiltered.matches(&push("refs/tags/anything")));

    let bad = PushTrigger {
        branches: vec!["[main".into()],
        ..t.clone()
    };
    assert_eq!(bad.check().len(), 1);
    assert_eq!(bad.check()[0].0, "branches");
}

#[test]
fn cron_triggers_fire_in_their_time_zone() {
    let berlin = CronTrigger {
        schedule: "0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
    };
    assert!(berlin.check().is_empty());
    // 2026-01-15 00:00:00 UTC; 03:00 in Berlin (UTC+1 in winter) is 02:00 UTC.
    let midnight = 1_768_435_200_000;
    assert_eq!(berlin.next_after(midnight), Ok(midnight + 2 * 3_600_000));
    assert_eq!(
        berlin.next_after(midnight + 789),
        Ok(midnight + 2 * 3_600_000),
        "due times are whole seconds"
    );
    let every_second = CronTrigger {
        schedule: "* * * * * *".into(),
        timezone: "UTC".into(),
    };
    assert_eq!(every_second.next_after(midnight), Ok(midnight + 1_000));
    assert_eq!(
        every_second.next_after(midnight + 999),
        Ok(midnight + 1_000)
    );

    let bad = CronTrigger {
        schedule: "61 * * * *".into(),
        timezone: "Mars/Olympus".into(),
    };
    let fields: Vec<_> = bad.check().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["schedule", "timezone"]);
}

#[test]
fn params_resolve_with_defaults_coercion_and_every_error() {
    let p = Pipeline::from_yaml(FULL).expect("parses");
    let given = BTreeMap::from([
        ("image".to_string(), json!("shop:1.2")),
        ("replicas".to_string(), json!("5")),
    ]);
    let got = resolve_params(&p.params, &given).expect("valid");
    assert_eq!(got["replicas"], json!(5), "CLI text coerced to a number");
    assert_eq!(got["tier"], json!("small"), "default applied");

    let given = BTreeMap::from([
        ("replicas".to_string(), json!("many")),
        ("tier".to_string(), json!("huge")),
        ("colour".to_string(), json!("red")),
    ]);
    let mut errs = resolve_params(&p.params, &given).expect_err("invalid");
    errs.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = errs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["colour", "image", "replicas", "tier"]);
    assert_eq!(
        errs[1].to_string(),
        "param \"image\": required but not given"
    );
}

#[test]
fn backoff_grows_caps_and_jitters_the_same_way_for_the_same_seed() {
    let plain = Backoff {
        jitter: false,
        ..Backoff::default()
    };
    let delays: Vec<_> = (1..=10).map(|n| plain.delay_ms(n, 7)).collect();
    assert_eq!(&delays[..4], [1_000, 2_000, 4_000, 8_000]);
    assert_eq!(delays[9], 300_000, "capped at max");

    let jittered = Backoff::default();
    for n in 1..=5 {
        let d = jittered.delay_ms(n, 42);
        let base = plain.delay_ms(n, 42);
        assert!(
            (base..2 * base).contains(&d),
            "retry {n}: {d} not in [{base}, {})",
            2 * base
        );
        assert_eq!(d, jittered.delay_ms(n, 42), "same seed, same delay");
    }
    let spread: std::collections::BTreeSet<_> =
        (0..20).map(|seed| jittered.delay_ms(1, seed)).collect();
    assert!(
        spread.len() > 10,
        "different seeds spread retries: {spread:?}"
    );
}

#[test]
fn durations_must_be_positive_and_well_formed() {
    assert_eq!(DurationText("1h 30m".into()).ms(), Ok(5_400_000));
    assert!(DurationText("10 minutes please".into()).ms().is_err());
    assert!(DurationText("0s".into()).ms().is_err());
}
