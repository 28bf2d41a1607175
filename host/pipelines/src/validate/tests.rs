//! Validation reports every error with its file, step and field.

use std::collections::BTreeMap;

use super::*;

/// A catalog of a few plugins and their roles.
pub(crate) struct FakeCatalog(pub BTreeMap<&'static str, &'static str>);

impl FakeCatalog {
    pub(crate) fn new() -> Self {
        Self(BTreeMap::from([
            ("render-deployment", "deploy-step"),
            ("wait-rollout", "deploy-step"),
            ("http-probe", "metrics-source"),
        ]))
    }
}

impl PluginCatalog for FakeCatalog {
    fn kind_of(&self, name: &str, version: Option<&str>) -> Option<String> {
        if version.is_some_and(|v| v != "1.0.0") {
            return None;
        }
        self.0.get(name).map(|k| k.to_string())
    }
}

fn errors(yaml: &str) -> Vec<String> {
    let p = Pipeline::from_yaml(yaml).expect("parses");
    match validate("pipelines/deploy.yaml", &p, &FakeCatalog::new()) {
        Ok(()) => vec![],
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_valid_pipeline_passes() {
    let yaml = r#"
name: ok
params: {tier: {type: enum, values: [a, b], default: a}}
environments: {test: {}}
steps:
  - id: render
    plugin: render-deployment@1.0.0
    outputs: [manifest]
  - id: deploy
    plugin: wait-rollout
    needs: [render]
    environment: test
    if: params.tier == "a" && steps.render.status == "succeeded"
    params: {m: "${{ steps.render.outputs.manifest }}", at: "${{ trigger.sha }}"}
  - id: gate
    needs: [deploy]
    approval: {approvers: {role: ops}, timeout: 1h}
  - id: after
    plugin: wait-rollout
    needs: [gate]
    params: {who: "${{ steps.gate.outputs.approved_by }}"}
finally:
  - id: notify
    plugin: wait-rollout
    if: run.status != "succeeded"
    params: {m: "${{ steps.render.outputs.manifest }}"}
"#;
    assert_eq!(errors(yaml), Vec::<String>::new());
}

#[test]
fn graph_errors_name_step_and_field_and_the_cycle_path() {
    let yaml = r#"
name: g
steps:
  - id: test
    plugin: wait-rollout
  - id: prod
    plugin: wait-rollout
    needs: [tset, a]
  - id: a
    plugin: wait-rollout
    needs: [b]
  - id: b
    plugin: wait-rollout
    needs: [a, notify]
  - id: test
    plugin: wait-rollout
finally:
  - id: notify
    plugin: wait-rollout
    needs: [test]
"#;
    assert_eq!(
        errors(yaml),
        [
            r#"pipelines/deploy.yaml: step "test": id: duplicate step id"#,
            r#"pipelines/deploy.yaml: step "prod": needs: unknown step "tset""#,
            r#"pipelines/deploy.yaml: step "b": needs: "notify": a main step cannot need a finally step"#,
            r#"pipelines/deploy.yaml: step "notify": needs: "test": finally steps run after every main step; they may only need other finally steps"#,
            r#"pipelines/deploy.yaml: step "a": needs: cycle a -> b -> a"#,
        ]
    );
}

#[test]
fn plugins_are_checked_for_existence_and_role() {
    let yaml = r#"
name: p
steps:
  - id: probe
    plugin: http-probe
  - id: ghost
    plugin: no-such
  - id: old
    plugin: wait-rollout@0.1.0
  - id: empty
"#;
    assert_eq!(
        errors(yaml),
        [
            r#"pipelines/deploy.yaml: step "probe": plugin: plugin "http-probe" is a metrics-source, not a deploy-step"#,
            r#"pipelines/deploy.yaml: step "ghost": plugin: unknown plugin "no-such""#,
            r#"pipelines/deploy.yaml: step "old": plugin: unknown plugin "wait-rollout@0.1.0""#,
            r#"pipelines/deploy.yaml: step "empty": plugin: a step needs either `plugin` or `approval`"#,
        ]
    );
}

#[test]
fn expressions_are_parsed_and_every_reference_resolved() {
    let yaml = r#"
name: e
params: {image: {type: string, default: x}}
steps:
  - id: render
    plugin: render-deployment
    outputs: [manifest]
  - id: side
    plugin: wait-rollout
  - id: prod
    plugin: wait-rollout
    needs: [render]
    if: params.image ==
    params:
      a: "${{ steps.render.outputs.manfest }}"
      b: {nested: ["${{ params.imgae }}"]}
      c: "${{ steps.side.outputs.x }}"
      d: "${{ trigger.branchh }} ${{ foo.bar }}"
      e: "${{ steps.render.outputz }}"
      f: "${{ unclosed"
"#;
    let got = errors(yaml);
    let want_prefixes = [
        r#"pipelines/deploy.yaml: step "prod": params.a: steps.render.outputs.manfest: step "render" declares no output "manfest" (it declares: manifest)"#,
        r#"pipelines/deploy.yaml: step "prod": params.b.nested[0]: params.imgae: unknown parameter "imgae" (declared: image)"#,
        r#"pipelines/deploy.yaml: step "prod": params.c: steps.side.outputs.x: step "side" is not among this step's needs"#,
        r#"pipelines/deploy.yaml: step "prod": params.d: trigger.branchh: trigger has no field "branchh""#,
        r#"pipelines/deploy.yaml: step "prod": params.d: foo.bar: unknown variable "foo""#,
        r#"pipelines/deploy.yaml: step "prod": params.e: steps.render.outputz: steps.render has no field "outputz""#,
        r#"pipelines/deploy.yaml: step "prod": params.f: unclosed "${{" in "${{ unclosed""#,
        r#"pipelines/deploy.yaml: step "prod": if: bad expression "params.image ==""#,
    ];
    assert_eq!(got.len(), want_prefixes.len(), "{got:#?}");
    for want in want_prefixes {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want}\nin {got:#?}"
        );
    }
}

#[test]
fn params_environments_durations_and_approvals_are_checked() {
    let yaml = r#"
name: bad name
concurrency: 0
triggers:
  - cron: {schedule: "every day", timezone: Mars/Base}
  - push: {provider: gitea, repo: acme/shop}
  - push: {provider: gitlab, repo: acme/shop, secret: "no spaces"}
params:
  replicas: {type: number, default: two}
  tier: {type: enum, values: [a], default: b}
environments: {test: {}}
steps:
  - id: deploy
    plugin: wait-rollout
    environment: tset
    timeout: 10 minutes-ish
    retries: {count: 2, backoff: {initial: 10s, max: 1s, factor: 0.5}, on: []}
  - id: gate
    approval: {approvers: {role: ""}, required: 0, timeout: soon}
    environment: test
finally:
  - id: undo
    plugin: wait-rollout
    on_failure: rollback
"#;
    let got = errors(yaml);
    let want = [
        r#"pipelines/deploy.yaml: name: "bad name" must be letters, digits, '-', '_' or '.'"#,
        r#"pipelines/deploy.yaml: concurrency: must be at least 1 (omit it for no limit)"#,
        r#"pipelines/deploy.yaml: triggers[0].cron.schedule: bad cron "every day""#,
        r#"pipelines/deploy.yaml: triggers[0].cron.timezone: unknown time zone "Mars/Base""#,
        r#"pipelines/deploy.yaml: triggers[1].push.secret: required: the name of the stored secret that signs this provider's webhooks"#,
        r#"pipelines/deploy.yaml: triggers[2].push.secret: "no spaces" is not a secret name (1-128 of [A-Za-z0-9._-])"#,
        r#"pipelines/deploy.yaml: params.replicas.default: "two" is not a number"#,
        r#"pipelines/deploy.yaml: params.tier.default: "b" is not one of ["a"]"#,
        r#"pipelines/deploy.yaml: step "deploy": timeout: "10 minutes-ish" is not a duration"#,
        r#"pipelines/deploy.yaml: step "deploy": retries.backoff.max: is shorter than retries.backoff.initial"#,
        r#"pipelines/deploy.yaml: step "deploy": retries.backoff.factor: 0.5 is not between 1 and 100"#,
        r#"pipelines/deploy.yaml: step "deploy": retries.on: names no error kind"#,
        r#"pipelines/deploy.yaml: step "deploy": environment: unknown environment "tset" (declared: test)"#,
        r#"pipelines/deploy.yaml: step "gate": approval.required: must be at least 1"#,
        r#"pipelines/deploy.yaml: step "gate": approval.approvers.role: must name a role"#,
        r#"pipelines/deploy.yaml: step "gate": approval.timeout: "soon" is not a duration"#,
        r#"pipelines/deploy.yaml: step "gate": environment: not used by an approval step"#,
        r#"pipelines/deploy.yaml: step "undo": on_failure: a finally step cannot roll back"#,
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.starts_with(w), "want {w}\n got {g}");
    }
}

#[test]
fn load_reports_parse_errors_with_the_file_and_validation_errors_all_together() {
    let catalog = FakeCatalog::new();
    let err = crate::load("p.yaml", "name: x\nsteps: 3\n", &catalog).expect_err("shape");
    assert!(err.to_string().starts_with("p.yaml: "), "{err}");
    let err = crate::load(
        "p.yaml",
        "name: x\nsteps:\n  - id: a\n  - id: b\n",
        &catalog,
    )
    .expect_err("invalid");
    assert_eq!(err.to_string().lines().count(), 2, "{err}");
}

#[test]
fn ancestors_and_descendants_follow_needs_transitively() {
    let p = Pipeline::from_yaml(
        "name: x\nsteps:\n  - {id: a, plugin: p}\n  - {id: b, plugin: p, needs: [a]}\n  - {id: c, plugin: p, needs: [b]}\n  - {id: d, plugin: p}\n",
    )
    .expect("parses");
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ancestors(&p, "c"), set(&["a", "b"]));
    assert_eq!(descendants(&p, "a"), set(&["b", "c"]));
    assert_eq!(descendants(&p, "d"), set(&[]));
}
