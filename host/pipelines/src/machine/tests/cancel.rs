//! Cancel: with or without rollback, always with `finally`; before the
//! start; during the rollback and during `finally`.

use super::*;

const PIPE: &str = r#"
name: pipe
steps:
  - {id: a, plugin: render-deployment}
  - {id: b, plugin: wait-rollout, needs: [a]}
  - {id: c, plugin: wait-rollout, needs: [b]}
finally:
  - {id: notify, plugin: wait-rollout}
"#;

fn cancel(by: &str, rollback: bool) -> Event {
    Event::Cancel {
        by: by.into(),
        rollback,
    }
}

#[test]
fn cancel_aborts_running_attempts_then_runs_finally() {
    let mut h = harness(PIPE);
    h.start();
    h.ok("a", json!({}));
    let actions = h.apply(cancel("bob", false));
    assert!(actions.contains(&Action::CancelStep {
        step: "b".into(),
        attempt: 1
    }));
    assert_eq!(started_ids(&actions), ["notify"], "finally still runs");
    assert!(rollbacks(&actions).is_empty());
    assert_eq!(
        h.state("b"),
        &StepState::Cancelled {
            reason: "cancelled by bob".into()
        }
    );
    assert_eq!(h.status("c"), "cancelled");
    assert_eq!(h.status("a"), "succeeded");

    let late = Outcome::Succeeded {
        outputs: BTreeMap::new(),
        message: "late".into(),
    };
    h.apply(Event::StepFinished {
        step: "b".into(),
        attempt: 1,
        outcome: late,
    });
    assert_eq!(
        h.status("b"),
        "cancelled",
        "a late result of an aborted attempt is ignored"
    );

    let end = h.ok("notify", json!({}));
    assert_eq!(
        finished(&end),
        Some((RunStatus::Cancelled, "cancelled by bob".into()))
    );
    assert_eq!(
        h.try_apply(cancel("bob", false)),
        Err(MachineError::Finished("run1".into()))
    );
}

#[test]
fn cancel_with_rollback_rolls_back_completed_steps_before_finally() {
    let mut h = harness(PIPE);
    h.start();
    h.ok("a", json!({}));
    h.ok("b", json!({}));
    let actions = h.apply(cancel("bob", true));
    assert_eq!(rollbacks(&actions), ["b"]);
    let done = Outcome::Succeeded {
        outputs: BTreeMap::new(),
        message: "undone".into(),
    };
    let actions = h.apply(Event::RollbackFinished {
        step: "b".into(),
        attempt: 1,
        outcome: done.clone(),
    });
    assert_eq!(rollbacks(&actions), ["a"]);
    let actions = h.apply(Event::RollbackFinished {
        step: "a".into(),
        attempt: 1,
        outcome: done,
    });
    assert_eq!(started_ids(&actions), ["notify"]);
    let end = h.ok("notify", json!({}));
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Cancelled));
    assert_eq!(
        (h.status("a"), h.status("b"), h.status("c")),
        ("rolled-back", "rolled-back", "cancelled")
    );
}

#[test]
fn cancel_during_the_rollback_stops_it_and_cancel_during_finally_stops_finally() {
    let mut h = harness(&PIPE.replace("needs: [b]}", "needs: [b], on_failure: rollback}"));
    h.start();
    h.ok("a", json!({}));
    h.ok("b", json!({}));
    assert_eq!(rollbacks(&h.fail("c", ErrorKind::Failed)), ["b"]);
    let actions = h.apply(cancel("bob", false));
    assert!(actions.contains(&Action::CancelStep {
        step: "b".into(),
        attempt: 1
    }));
    assert!(
        rollbacks(&actions).is_empty(),
        "a is not rolled back after the cancel"
    );
    assert_eq!(started_ids(&actions), ["notify"]);
    assert_eq!(
        h.state("b"),
        &StepState::RollbackFailed {
            message: "rollback cancelled by bob".into()
        }
    );

    let actions = h.apply(cancel("carol", false));
    assert!(actions.contains(&Action::CancelStep {
        step: "notify".into(),
        attempt: 1
    }));
    let reason = "cancelled by carol; rollback did not complete for b";
    assert_eq!(
        finished(&actions),
        Some((RunStatus::Cancelled, reason.into()))
    );
}

#[test]
fn a_queued_run_cancels_without_running_anything() {
    let mut h = harness(PIPE);
    let actions = h.apply(cancel("bob", true));
    assert!(started(&actions).is_empty());
    assert_eq!(
        finished(&actions),
        Some((RunStatus::Cancelled, "cancelled by bob".into()))
    );
    assert!(h.run.steps.values().all(|r| r.state.name() == "cancelled"));
    assert_eq!(
        h.try_apply(Event::Start),
        Err(MachineError::Finished("run1".into()))
    );
}

#[test]
fn events_before_the_start_are_refused() {
    let mut h = harness(PIPE);
    assert_eq!(
        h.try_apply(Event::Timer),
        Err(MachineError::NotStarted("run1".into()))
    );
    h.start();
    assert_eq!(
        h.try_apply(Event::Start),
        Err(MachineError::AlreadyStarted("run1".into()))
    );
}
