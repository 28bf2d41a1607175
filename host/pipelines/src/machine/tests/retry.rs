//! Retries with backoff, `retry-after` polls and timeouts.

use super::*;

fn timer_at(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ScheduleTimer { at_ms } => Some(*at_ms),
            _ => None,
        })
        .collect()
}

const RETRYING: &str = r#"
name: retrying
steps:
  - id: deploy
    plugin: render-deployment
    retries: {count: 2, backoff: {initial: 1s, max: 10s, factor: 2, jitter: false}}
"#;

#[test]
fn transient_failures_are_retried_with_exponential_backoff_and_the_same_key() {
    let mut h = harness(RETRYING);
    let first = h.start();
    let key = invocation(&first, "deploy").idempotency_key.clone();

    let actions = h.fail("deploy", ErrorKind::Transient);
    assert_eq!(
        h.state("deploy"),
        &StepState::WaitingRetry {
            attempt: 2,
            until_ms: T0 + 1_000
        }
    );
    assert_eq!(timer_at(&actions), [T0 + 1_000]);
    assert_eq!(h.run.next_wakeup(), Some(T0 + 1_000));
    assert!(started(&h.after(999)).is_empty(), "not before the backoff");
    let actions = h.after(1);
    assert_eq!(started(&actions), [("deploy".to_string(), 2)]);
    assert_eq!(invocation(&actions, "deploy").idempotency_key, key);

    h.fail("deploy", ErrorKind::Timeout);
    assert_eq!(
        h.state("deploy"),
        &StepState::WaitingRetry {
            attempt: 3,
            until_ms: h.now + 2_000
        }
    );
    assert_eq!(started(&h.after(2_000)), [("deploy".to_string(), 3)]);

    let end = h.fail("deploy", ErrorKind::Transient);
    assert_eq!(h.status("deploy"), "failed", "two retries spent");
    assert_eq!(h.run.steps["deploy"].retries_used, 2);
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Failed));
}

#[test]
fn errors_of_kinds_not_listed_are_not_retried() {
    let mut h = harness(RETRYING);
    h.start();
    h.fail("deploy", ErrorKind::InvalidInput);
    assert_eq!(
        h.state("deploy"),
        &StepState::Failed {
            kind: ErrorKind::InvalidInput,
            message: "deploy broke".into()
        }
    );
}

#[test]
fn jittered_delays_are_reproducible_per_step_and_within_bounds() {
    let yaml = "name: j\nsteps:\n  - {id: a, plugin: wait-rollout, retries: {count: 1, backoff: {initial: 10s}}}\n";
    let delay = |run_id: &str| {
        let mut h = harness(yaml);
        h.run.id = run_id.into();
        h.start();
        h.fail("a", ErrorKind::Transient);
        let StepState::WaitingRetry { until_ms, .. } = *h.state("a") else {
            panic!("waiting")
        };
        until_ms - T0
    };
    assert_eq!(
        delay("r1"),
        delay("r1"),
        "replaying the journal gives the same timer"
    );
    let all: std::collections::BTreeSet<u64> = (0..8).map(|i| delay(&format!("r{i}"))).collect();
    assert!(all.iter().all(|d| (10_000..20_000).contains(d)), "{all:?}");
    assert!(all.len() > 4, "runs failing together spread out: {all:?}");
}

const POLLING: &str = r#"
name: polling
steps:
  - {id: wait, plugin: wait-rollout, timeout: 10s}
  - {id: after, plugin: wait-rollout, needs: [wait]}
"#;

#[test]
fn retry_after_runs_the_same_attempt_again_and_counts_against_its_timeout() {
    let mut h = harness(POLLING);
    h.start();
    let deadline = T0 + 10_000;
    assert_eq!(h.run.steps["wait"].deadline_ms, Some(deadline));

    let actions = h.retry_after("wait", 4_000);
    assert_eq!(
        h.state("wait"),
        &StepState::WaitingRetry {
            attempt: 1,
            until_ms: T0 + 4_000
        }
    );
    assert_eq!(timer_at(&actions), [T0 + 4_000]);
    let actions = h.after(4_000);
    assert_eq!(
        started(&actions),
        [("wait".to_string(), 1)],
        "same attempt, no retry spent"
    );
    assert_eq!(
        invocation(&actions, "wait").deadline_ms,
        deadline,
        "the deadline does not move"
    );

    h.now += 1_000;
    let actions = h.retry_after("wait", 8_000);
    assert_eq!(
        timer_at(&actions),
        [deadline],
        "woken at the deadline, not after the wait"
    );
    let end = h.after(5_000);
    assert!(started(&end).is_empty());
    assert_eq!(
        h.state("wait"),
        &StepState::Failed {
            kind: ErrorKind::Timeout,
            message: "timed out after 10s".into()
        }
    );
    assert_eq!(h.status("after"), "skipped");
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Failed));
}

#[test]
fn a_step_running_past_its_timeout_is_aborted_and_retried_with_a_fresh_deadline() {
    let yaml = r#"
name: slow
steps:
  - id: loop
    plugin: wait-rollout
    timeout: 30s
    retries: {count: 1, on: [timeout], backoff: {initial: 1s, jitter: false}}
"#;
    let mut h = harness(yaml);
    h.start();
    let actions = h.after(30_000);
    assert!(
        actions.contains(&Action::CancelStep {
            step: "loop".into(),
            attempt: 1
        }),
        "{actions:#?}"
    );
    assert_eq!(
        h.state("loop"),
        &StepState::WaitingRetry {
            attempt: 2,
            until_ms: h.now + 1_000
        }
    );

    // The aborted attempt's result arrives late: ignored.
    let late = Outcome::Succeeded {
        outputs: BTreeMap::new(),
        message: "late".into(),
    };
    h.apply(Event::StepFinished {
        step: "loop".into(),
        attempt: 1,
        outcome: late,
    });
    assert_eq!(h.status("loop"), "waiting-retry");

    let actions = h.after(1_000);
    assert_eq!(invocation(&actions, "loop").deadline_ms, h.now + 30_000);
    let end = h.after(30_000);
    assert_eq!(
        h.state("loop"),
        &StepState::Failed {
            kind: ErrorKind::Timeout,
            message: "timed out after 30s".into()
        }
    );
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Failed));
}
