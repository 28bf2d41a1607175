//! The DAG: parallel starts, `needs`, `if`, skips, templates and inputs.

use super::*;

const DIAMOND: &str = r#"
name: diamond
params: {tier: {type: string, default: small}}
steps:
  - {id: a, plugin: render-deployment, outputs: [image]}
  - {id: b, plugin: wait-rollout, needs: [a], params: {img: "${{ steps.a.outputs.image }}", n: "${{ params.tier }}-${{ trigger.sha }}"}}
  - {id: c, plugin: wait-rollout, needs: [a]}
  - {id: d, plugin: wait-rollout, needs: [b, c]}
"#;

#[test]
fn steps_start_when_their_needs_succeed_and_independent_ones_in_parallel() {
    let mut h = harness_with(DIAMOND, json!({"sha": "abc"}), Some("alice"));
    assert_eq!(started(&h.start()), [("a".to_string(), 1)]);
    assert_eq!(h.run.status, RunStatus::Running);
    assert_eq!(
        started_ids(&h.ok("a", json!({"image": "shop:1"}))),
        ["b", "c"]
    );
    assert!(started(&h.ok("b", json!({}))).is_empty(), "d still needs c");
    assert_eq!(started_ids(&h.ok("c", json!({}))), ["d"]);
    let end = h.ok("d", json!({}));
    assert_eq!(
        finished(&end),
        Some((RunStatus::Succeeded, "all steps succeeded".into()))
    );
    assert_eq!(h.run.phase, Phase::Done);
    assert_eq!(h.run.next_wakeup(), None);
    assert_eq!(
        h.try_apply(Event::Timer),
        Err(MachineError::Finished("run1".into()))
    );
}

#[test]
fn params_are_rendered_and_inputs_carry_the_needed_outputs() {
    let mut h = harness_with(DIAMOND, json!({"sha": "abc"}), Some("alice"));
    h.start();
    let actions = h.ok("a", json!({"image": "shop:1"}));
    let b = invocation(&actions, "b");
    assert_eq!(b.params, json!({"img": "shop:1", "n": "small-abc"}));
    assert_eq!(
        b.inputs,
        BTreeMap::from([("a.image".to_string(), json!("shop:1"))])
    );
    assert_eq!(b.idempotency_key, "run1/b");
    assert_eq!(b.deadline_ms, T0 + h.limits.step_timeout_ms);
    assert_eq!(h.run.steps["b"].params, Some(b.params.clone()));
}

#[test]
fn a_false_if_skips_and_dependents_without_if_skip_too_while_those_with_if_decide() {
    let yaml = r#"
name: skips
steps:
  - {id: a, plugin: wait-rollout, if: "1 == 2"}
  - {id: b, plugin: wait-rollout, needs: [a]}
  - {id: c, plugin: wait-rollout, needs: [a], if: 'steps.a.status == "skipped"'}
  - {id: d, plugin: wait-rollout}
finally:
  - {id: notify, plugin: wait-rollout}
"#;
    let mut h = harness(yaml);
    let actions = h.start();
    assert_eq!(started_ids(&actions), ["c", "d"]);
    assert_eq!(
        h.state("a"),
        &StepState::Skipped {
            reason: "`if: 1 == 2` was false".into()
        }
    );
    assert_eq!(
        h.state("b"),
        &StepState::Skipped {
            reason: "needs a did not succeed".into()
        }
    );
    h.ok("c", json!({}));
    let actions = h.ok("d", json!({}));
    assert_eq!(
        started_ids(&actions),
        ["notify"],
        "skipped steps do not block finally"
    );
    let end = h.ok("notify", json!({}));
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Succeeded));
}

#[test]
fn a_failure_with_continue_lets_dependents_run_and_the_run_succeed() {
    let yaml = r#"
name: cont
steps:
  - {id: smoke, plugin: wait-rollout, on_failure: continue}
  - {id: next, plugin: wait-rollout, needs: [smoke]}
  - {id: alert, plugin: wait-rollout, needs: [smoke], if: 'steps.smoke.status == "failed"'}
"#;
    let mut h = harness(yaml);
    h.start();
    let actions = h.fail("smoke", ErrorKind::Failed);
    assert_eq!(started_ids(&actions), ["next", "alert"]);
    h.ok("alert", json!({}));
    let end = h.ok("next", json!({}));
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Succeeded));
    assert_eq!(h.status("smoke"), "failed");
}

#[test]
fn an_expression_that_fails_at_run_time_fails_the_step_with_the_expression_named() {
    let yaml = r#"
name: bad-expr
steps:
  - {id: a, plugin: render-deployment, outputs: [image]}
  - {id: b, plugin: wait-rollout, needs: [a], params: {n: "${{ steps.a.outputs.image + 1 }}"}}
"#;
    let mut h = harness(yaml);
    h.start();
    let end = h.ok("a", json!({"image": "shop:1"}));
    let StepState::Failed { kind, message } = h.state("b") else {
        panic!("b failed: {:?}", h.state("b"))
    };
    assert_eq!(*kind, ErrorKind::Expression);
    assert!(message.contains("steps.a.outputs.image + 1"), "{message}");
    let (status, reason) = finished(&end).expect("finished");
    assert_eq!(status, RunStatus::Failed);
    assert!(
        reason.starts_with("step b failed (expression: "),
        "{reason}"
    );
}

#[test]
fn outputs_over_the_cap_or_missing_a_declared_name_fail_the_step() {
    let yaml = "name: out\nsteps:\n  - {id: a, plugin: render-deployment, outputs: [manifest]}\n";
    let mut h = harness(yaml);
    h.limits.outputs.per_output = 100;
    h.start();
    h.ok("a", json!({"manifest": "x".repeat(200)}));
    let StepState::Failed { kind, message } = h.state("a") else {
        panic!("{:?}", h.state("a"))
    };
    assert_eq!(*kind, ErrorKind::Output);
    assert!(
        message.contains("output \"manifest\" is 202 bytes, over the 100-byte cap"),
        "{message}"
    );

    let mut h = harness(yaml);
    h.start();
    h.ok("a", json!({"other": 1}));
    assert_eq!(
        h.state("a"),
        &StepState::Failed {
            kind: ErrorKind::Output,
            message: "declared output \"manifest\" was not returned".into()
        }
    );
}

#[test]
fn finally_steps_see_the_outcome_so_far() {
    let yaml = r#"
name: fin
steps:
  - {id: a, plugin: wait-rollout}
finally:
  - {id: on_fail, plugin: wait-rollout, if: 'run.status == "failed"'}
  - {id: always, plugin: wait-rollout}
"#;
    let mut h = harness(yaml);
    h.start();
    let actions = h.fail("a", ErrorKind::Failed);
    assert_eq!(started_ids(&actions), ["on_fail", "always"]);
    let mut h = harness(yaml);
    h.start();
    let actions = h.ok("a", json!({}));
    assert_eq!(started_ids(&actions), ["always"]);
    assert_eq!(h.status("on_fail"), "skipped");
}
