//! Environment locks: queueing for them, being granted, being superseded.

use super::*;

const ENVS: &str = r#"
name: envs
environments: {test: {}, prod: {lock: supersede}}
steps:
  - {id: deploy, plugin: render-deployment, environment: test}
  - {id: wait, plugin: wait-rollout, environment: test}
  - {id: prod, plugin: render-deployment, environment: prod, needs: [deploy, wait]}
finally:
  - {id: notify, plugin: wait-rollout}
"#;

fn lock_requests(actions: &[Action]) -> Vec<(String, LockPolicy)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::AcquireLock {
                environment,
                policy,
            } => Some((environment.clone(), *policy)),
            _ => None,
        })
        .collect()
}

use crate::model::LockPolicy;

#[test]
fn steps_wait_for_their_environment_lock_which_is_asked_for_once_and_kept() {
    let mut h = harness(ENVS);
    let actions = h.start();
    assert_eq!(
        lock_requests(&actions),
        [("test".to_string(), LockPolicy::Queue)]
    );
    assert!(started(&actions).is_empty());
    assert_eq!(
        h.state("deploy"),
        &StepState::WaitingLock {
            environment: "test".into()
        }
    );

    let actions = h.apply(Event::LockGranted {
        environment: "test".into(),
    });
    assert_eq!(started_ids(&actions), ["deploy", "wait"]);
    assert_eq!(
        invocation(&actions, "deploy").environment.as_deref(),
        Some("test")
    );
    let actions = h.ok("deploy", json!({}));
    assert!(
        releases(&actions).is_empty(),
        "wait still deploys into test"
    );
    let actions = h.ok("wait", json!({}));
    assert_eq!(
        releases(&actions),
        ["test"],
        "done with test: the next run may deploy there"
    );
    assert_eq!(
        lock_requests(&actions),
        [("prod".to_string(), LockPolicy::Supersede)]
    );
    h.apply(Event::LockGranted {
        environment: "prod".into(),
    });
    let actions = h.ok("prod", json!({}));
    assert_eq!(releases(&actions), ["prod"]);
    let end = h.ok("notify", json!({}));
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Succeeded));
    assert!(h.run.locks.is_empty());
}

fn releases(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ReleaseLock { environment } => Some(environment.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lock_is_kept_while_a_later_failure_could_roll_back_its_steps() {
    let mut h = harness(&ENVS.replace(
        "needs: [deploy, wait]}",
        "needs: [deploy, wait], on_failure: rollback}",
    ));
    h.start();
    h.apply(Event::LockGranted {
        environment: "test".into(),
    });
    h.ok("deploy", json!({}));
    assert!(
        releases(&h.ok("wait", json!({}))).is_empty(),
        "prod may still roll test back"
    );
    h.apply(Event::LockGranted {
        environment: "prod".into(),
    });
    let actions = h.fail("prod", ErrorKind::Failed);
    assert_eq!(rollbacks(&actions), ["wait"]);
    assert_eq!(
        invocation(&actions, "wait").environment.as_deref(),
        Some("test")
    );
    assert!(
        h.run.locks.contains("test"),
        "still held while rolling back"
    );
}

#[test]
fn a_superseded_run_ends_saying_which_run_took_its_place_and_still_runs_finally() {
    let mut h = harness(ENVS);
    h.start();
    h.apply(Event::LockGranted {
        environment: "test".into(),
    });
    h.ok("deploy", json!({}));
    h.ok("wait", json!({}));
    assert_eq!(
        h.try_apply(Event::Superseded {
            environment: "test".into(),
            by_run: "run2".into()
        }),
        Err(MachineError::NotWaitingForLock("test".into()))
    );
    let actions = h.apply(Event::Superseded {
        environment: "prod".into(),
        by_run: "run2".into(),
    });
    assert_eq!(started_ids(&actions), ["notify"]);
    let end = h.ok("notify", json!({}));
    let (status, reason) = finished(&end).expect("finished");
    assert_eq!(status, RunStatus::Superseded);
    assert_eq!(
        reason,
        "superseded by run run2 in the queue for environment prod"
    );
    assert_eq!(h.state("prod"), &StepState::Cancelled { reason });
}
