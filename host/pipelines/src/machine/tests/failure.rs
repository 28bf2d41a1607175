//! Failure policies: stop, rollback in reverse completion order, and
//! `finally` always running.

use super::*;

fn rollback_done(h: &mut Harness, step: &str, outcome: Outcome) -> Vec<Action> {
    let StepState::RollingBack { attempt, .. } = *h.state(step) else {
        panic!("{step} is not rolling back: {:?}", h.state(step))
    };
    h.apply(Event::RollbackFinished {
        step: step.into(),
        attempt,
        outcome,
    })
}

fn rolled(message: &str) -> Outcome {
    Outcome::Succeeded {
        outputs: BTreeMap::new(),
        message: message.into(),
    }
}

#[test]
fn stop_lets_running_steps_finish_starts_nothing_new_and_runs_finally() {
    let yaml = r#"
name: stop
steps:
  - {id: a, plugin: wait-rollout}
  - {id: b, plugin: wait-rollout}
  - {id: c, plugin: wait-rollout, needs: [a]}
  - {id: d, plugin: wait-rollout, needs: [b]}
finally:
  - {id: cleanup, plugin: wait-rollout}
"#;
    let mut h = harness(yaml);
    h.start();
    let actions = h.fail("a", ErrorKind::Failed);
    assert!(started(&actions).is_empty());
    assert_eq!(h.status("b"), "running", "a running step is left to finish");
    assert_eq!(h.status("c"), "skipped");
    let actions = h.ok("b", json!({}));
    assert_eq!(
        started_ids(&actions),
        ["cleanup"],
        "d is not started after the stop"
    );
    assert_eq!(
        h.state("d"),
        &StepState::Skipped {
            reason: "step a failed (failed: a broke)".into()
        }
    );
    let end = h.ok("cleanup", json!({}));
    assert_eq!(
        finished(&end),
        Some((RunStatus::Failed, "step a failed (failed: a broke)".into()))
    );
}

const ROLLING: &str = r#"
name: rolling
steps:
  - {id: a, plugin: render-deployment}
  - {id: b, plugin: render-deployment, params: {image: "shop:2"}}
  - id: gate
    needs: [a, b]
    approval: {approvers: {role: ops}}
  - {id: c, plugin: wait-rollout, needs: [gate], on_failure: rollback}
finally:
  - {id: notify, plugin: wait-rollout}
"#;

fn failed_after_a_then_b() -> Harness {
    let mut h = harness(ROLLING);
    h.start();
    h.ok("b", json!({}));
    h.ok("a", json!({}));
    let ops = vec![RoleGrant {
        project: "default".into(),
        role: "ops".into(),
    }];
    h.apply(Event::Approval(Decision {
        step: "gate".into(),
        user: "bob".into(),
        roles: ops,
        approve: true,
        comment: String::new(),
    }));
    h
}

#[test]
fn rollback_undoes_completed_plugin_steps_one_at_a_time_newest_first_then_finally() {
    let mut h = failed_after_a_then_b();
    let actions = h.fail("c", ErrorKind::Failed);
    assert_eq!(
        rollbacks(&actions),
        ["a"],
        "a completed last, so it goes first"
    );
    assert_eq!(h.run.phase, Phase::RollingBack);
    let inv = invocation(&actions, "a");
    assert_eq!(inv.idempotency_key, "run1/a/rollback");

    let actions = rollback_done(&mut h, "a", rolled("deleted"));
    assert_eq!(
        rollbacks(&actions),
        ["b"],
        "then b; the approval gate has nothing to undo"
    );
    assert_eq!(
        invocation(&actions, "b").params,
        json!({"image": "shop:2"}),
        "rollback gets the step's params"
    );
    assert_eq!(h.status("a"), "rolled-back");

    let actions = rollback_done(&mut h, "b", rolled("deleted"));
    assert_eq!(started_ids(&actions), ["notify"]);
    assert_eq!(h.run.phase, Phase::Finally);
    let end = h.ok("notify", json!({}));
    let (status, reason) = finished(&end).expect("finished");
    assert_eq!(status, RunStatus::RolledBack);
    assert_eq!(
        reason,
        "step c failed (failed: c broke); completed steps rolled back"
    );
}

#[test]
fn a_failed_rollback_does_not_stop_the_others_and_fails_the_run() {
    let mut h = failed_after_a_then_b();
    h.fail("c", ErrorKind::Failed);
    let failed = Outcome::Failed {
        kind: ErrorKind::Denied,
        message: "no grant".into(),
    };
    let actions = rollback_done(&mut h, "a", failed);
    assert_eq!(rollbacks(&actions), ["b"]);
    assert_eq!(
        h.state("a"),
        &StepState::RollbackFailed {
            message: "denied: no grant".into()
        }
    );
    rollback_done(&mut h, "b", rolled("ok"));
    let end = h.ok("notify", json!({}));
    let (status, reason) = finished(&end).expect("finished");
    assert_eq!(status, RunStatus::Failed);
    assert!(
        reason.ends_with("; rollback did not complete for a"),
        "{reason}"
    );
}

#[test]
fn a_rollback_may_ask_to_be_called_again_within_its_timeout() {
    let mut h = failed_after_a_then_b();
    h.fail("c", ErrorKind::Failed);
    let wait = Outcome::RetryAfter {
        ms: 2_000,
        message: "draining".into(),
    };
    assert!(rollbacks(&rollback_done(&mut h, "a", wait)).is_empty());
    let actions = h.after(2_000);
    assert_eq!(rollbacks(&actions), ["a"]);
    assert_eq!(
        invocation(&actions, "a").attempt,
        1,
        "same rollback attempt"
    );
    let slow = h.after(h.limits.step_timeout_ms);
    assert!(slow.contains(&Action::CancelStep {
        step: "a".into(),
        attempt: 1
    }));
    assert_eq!(
        h.state("a"),
        &StepState::RollbackFailed {
            message: "rollback timed out after 1h".into()
        }
    );
    assert_eq!(rollbacks(&slow), ["b"]);
}

#[test]
fn a_failing_finally_step_fails_the_run_unless_it_may_continue() {
    let yaml = r#"
name: fin
steps:
  - {id: a, plugin: wait-rollout}
finally:
  - {id: must, plugin: wait-rollout}
  - {id: may, plugin: wait-rollout, on_failure: continue}
"#;
    let mut h = harness(yaml);
    h.start();
    h.ok("a", json!({}));
    h.fail("may", ErrorKind::Failed);
    assert_eq!(
        h.status("must"),
        "running",
        "a finally failure never stops the others"
    );
    let end = h.ok("must", json!({}));
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Succeeded));

    let mut h = harness(yaml);
    h.start();
    h.ok("a", json!({}));
    h.ok("may", json!({}));
    let end = h.fail("must", ErrorKind::Failed);
    assert_eq!(
        finished(&end),
        Some((RunStatus::Failed, "finally step must failed".into()))
    );
}
