//! Restarts: an attempt in flight at a crash runs again as attempt n+1 with
//! the same idempotency key; nothing that completed runs again.

use std::collections::VecDeque;

use super::*;

const FLOW: &str = r#"
name: flow
environments: {test: {}}
steps:
  - {id: render, plugin: render-deployment, outputs: [image]}
  - {id: deploy, plugin: render-deployment, environment: test, needs: [render], params: {image: "${{ steps.render.outputs.image }}"}}
  - {id: smoke, plugin: wait-rollout, needs: [deploy]}
  - {id: lint, plugin: wait-rollout, needs: [render]}
  - {id: gate, needs: [smoke, lint], approval: {approvers: {role: ops}}}
  - {id: prod, plugin: render-deployment, needs: [gate]}
finally:
  - {id: notify, plugin: wait-rollout}
"#;

#[test]
fn an_attempt_in_flight_at_a_restart_runs_again_as_the_next_attempt_with_the_same_key() {
    let mut h = harness(FLOW);
    h.start();
    let first = h.ok("render", json!({"image": "shop:1"}));
    let before = invocation(&first, "lint").clone();
    h.apply(Event::LockGranted {
        environment: "test".into(),
    });

    // kill -9: the host reloads the journaled run and tells the machine.
    let actions = h.apply(Event::Resumed);
    assert_eq!(
        started(&actions),
        [("deploy".to_string(), 2), ("lint".to_string(), 2)]
    );
    let again = invocation(&actions, "lint");
    assert_eq!(again.idempotency_key, before.idempotency_key);
    assert_eq!(again.params, before.params);
    assert_eq!(
        h.run.steps["lint"].retries_used, 0,
        "a restart is not a retry"
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Note { step: Some(s), message } if s == "lint" && message.contains("in flight at a restart"))));

    let late = Outcome::Succeeded {
        outputs: BTreeMap::new(),
        message: "attempt 1 finally answered".into(),
    };
    h.apply(Event::StepFinished {
        step: "lint".into(),
        attempt: 1,
        outcome: late,
    });
    assert_eq!(
        h.status("lint"),
        "running",
        "only the current attempt counts"
    );
    h.ok("lint", json!({}));
    assert_eq!(h.status("lint"), "succeeded");
}

#[test]
fn a_restart_reissues_lock_requests_and_timers_of_waiting_steps() {
    let mut h = harness(FLOW);
    h.start();
    h.ok("render", json!({"image": "shop:1"}));
    h.retry_after("lint", 5_000);
    let actions = h.apply(Event::Resumed);
    assert!(started(&actions).is_empty(), "nothing was in flight");
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Note { step: None, message } if message.starts_with("resumed"))
        ),
        "the run's log says when it was resumed: {actions:?}"
    );
    assert!(actions.contains(&Action::AcquireLock {
        environment: "test".into(),
        policy: Default::default()
    }));
    assert!(actions.contains(&Action::ScheduleTimer { at_ms: T0 + 5_000 }));
}

/// Plays the executor: carries out actions one at a time, answering every
/// step with success. `crash_at` loses every outstanding action at that
/// point and resumes from the journal.
fn run_with_crash(crash_at: usize) -> (Harness, BTreeMap<String, Vec<u32>>, Vec<String>) {
    let mut h = harness(FLOW);
    let mut queue: VecDeque<Action> = h.start().into();
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut handled = 0;
    let mut in_flight = Vec::new();
    while let Some(action) = queue.pop_front() {
        handled += 1;
        if handled == crash_at && h.run.phase != Phase::Done {
            in_flight = h
                .run
                .steps
                .iter()
                .filter(|(_, r)| r.state.name() == "running")
                .map(|(id, _)| id.clone())
                .collect();
            queue = h.apply(Event::Resumed).into();
            continue;
        }
        let event = match action {
            Action::StartStep(i) => {
                attempts.entry(i.step.clone()).or_default().push(i.attempt);
                let outputs = if i.step == "render" {
                    json!({"image": "shop:1"})
                } else {
                    json!({})
                };
                let outputs = serde_json::from_value(outputs).expect("map");
                let outcome = Outcome::Succeeded {
                    outputs,
                    message: "ok".into(),
                };
                Event::StepFinished {
                    step: i.step,
                    attempt: i.attempt,
                    outcome,
                }
            }
            Action::AcquireLock { environment, .. } => Event::LockGranted { environment },
            Action::RequestApproval { step, .. } => Event::Approval(Decision {
                step,
                user: "bob".into(),
                roles: vec![RoleGrant {
                    project: "default".into(),
                    role: "ops".into(),
                }],
                approve: true,
                comment: String::new(),
            }),
            _ => continue,
        };
        queue.extend(h.apply(event));
    }
    (h, attempts, in_flight)
}

#[test]
fn after_a_crash_at_any_point_the_run_finishes_and_no_completed_step_runs_twice() {
    let (clean, clean_attempts, _) = run_with_crash(usize::MAX);
    assert_eq!(clean.run.status, RunStatus::Succeeded);
    assert!(
        clean_attempts.values().all(|a| *a == [1]),
        "{clean_attempts:?}"
    );
    let actions_in_clean_run = clean.log.len();

    for crash_at in 1..actions_in_clean_run {
        let (h, attempts, in_flight) = run_with_crash(crash_at);
        assert_eq!(
            h.run.status,
            RunStatus::Succeeded,
            "crash at {crash_at}: {:?}",
            h.run.reason
        );
        for (step, tries) in &attempts {
            // A step runs once, unless its attempt was in flight at the crash
            // (journaled as running; the executor may or may not have begun
            // it): then it runs again as attempt 2, never attempt 1 twice.
            let ok = if in_flight.contains(step) {
                tries == &[1, 2] || tries == &[2]
            } else {
                tries == &[1]
            };
            assert!(
                ok,
                "crash at {crash_at}: {step} ran {tries:?} (in flight: {in_flight:?})"
            );
        }
        assert_eq!(
            attempts.len(),
            6,
            "crash at {crash_at}: every plugin step ran: {attempts:?}"
        );
    }
}

#[test]
fn a_rollback_in_flight_at_a_restart_runs_again() {
    let yaml = "name: r\nsteps:\n  - {id: a, plugin: render-deployment}\n  - {id: b, plugin: wait-rollout, needs: [a], on_failure: rollback}\n";
    let mut h = harness(yaml);
    h.start();
    h.ok("a", json!({}));
    h.fail("b", ErrorKind::Failed);
    let actions = h.apply(Event::Resumed);
    let inv = invocation(&actions, "a");
    assert_eq!(
        (inv.attempt, inv.idempotency_key.as_str()),
        (2, "run1/a/rollback")
    );
}
