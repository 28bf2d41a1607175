//! Approval gates: roles, required count, no self-approval, rejection, timeout.

use super::*;

const GATED: &str = r#"
name: gated
project: shop
steps:
  - {id: build, plugin: render-deployment}
  - id: gate
    needs: [build]
    approval: {approvers: {role: release}, required: 2, timeout: 1h, message: "ship ${{ run.pipeline }}?"}
  - {id: prod, plugin: wait-rollout, needs: [gate], params: {who: "${{ steps.gate.outputs.approved_by }}"}}
"#;

fn decision(user: &str, roles: &[&str], approve: bool, comment: &str) -> Event {
    Event::Approval(Decision {
        step: "gate".into(),
        user: user.into(),
        roles: roles
            .iter()
            .map(|r| RoleGrant {
                project: "shop".into(),
                role: r.to_string(),
            })
            .collect(),
        approve,
        comment: comment.into(),
    })
}

fn at_gate() -> Harness {
    let mut h = harness(GATED);
    h.start();
    let actions = h.ok("build", json!({}));
    assert!(actions.contains(&Action::RequestApproval {
        step: "gate".into(),
        role: "release".into(),
        project: "shop".into(),
        required: 2,
        deadline_ms: T0 + 3_600_000,
        message: Some("ship gated?".into()),
    }));
    assert_eq!(h.status("gate"), "waiting-approval");
    h
}

#[test]
fn two_distinct_approvers_with_the_role_open_the_gate_and_the_starter_may_not_approve() {
    let mut h = at_gate();
    let before = h.run.clone();
    assert_eq!(
        h.try_apply(decision("alice", &["release"], true, "mine")),
        Err(MachineError::SelfApproval("alice".into()))
    );
    assert_eq!(
        h.try_apply(decision("mallory", &["viewer"], true, "")),
        Err(MachineError::NotApprover {
            user: "mallory".into(),
            role: "release".into(),
            project: "shop".into()
        })
    );
    assert_eq!(h.run, before, "refused decisions change nothing");

    assert!(started(&h.apply(decision("bob", &["release"], true, "lgtm"))).is_empty());
    assert_eq!(h.status("gate"), "waiting-approval", "one of two");
    assert_eq!(
        h.try_apply(decision("bob", &["release"], true, "again")),
        Err(MachineError::AlreadyDecided {
            user: "bob".into(),
            step: "gate".into()
        })
    );
    let actions = h.apply(decision("carol", &["release", "viewer"], true, "ok"));
    assert_eq!(h.status("gate"), "succeeded");
    assert_eq!(
        invocation(&actions, "prod").params,
        json!({"who": ["bob", "carol"]})
    );
    let who: Vec<_> = h.run.steps["gate"]
        .approvals
        .iter()
        .map(|a| (a.user.as_str(), a.at_ms))
        .collect();
    assert_eq!(
        who,
        [("bob", T0), ("carol", T0)],
        "who and when are recorded"
    );
}

#[test]
fn one_rejection_fails_the_gate_with_the_reason() {
    let mut h = at_gate();
    h.apply(decision("bob", &["release"], true, "lgtm"));
    let end = h.apply(decision("dave", &["release"], false, "not on a Friday"));
    assert_eq!(
        h.state("gate"),
        &StepState::Failed {
            kind: ErrorKind::Rejected,
            message: "rejected by dave: not on a Friday".into()
        }
    );
    assert_eq!(h.status("prod"), "skipped");
    let (status, reason) = finished(&end).expect("finished");
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(
        reason,
        "step gate failed (rejected: rejected by dave: not on a Friday)"
    );
}

#[test]
fn an_unanswered_gate_times_out() {
    let mut h = at_gate();
    assert_eq!(h.run.next_wakeup(), Some(T0 + 3_600_000));
    h.after(3_600_000);
    assert_eq!(
        h.state("gate"),
        &StepState::Failed {
            kind: ErrorKind::Timeout,
            message: "timed out after 1h".into()
        }
    );
    assert_eq!(h.run.status, RunStatus::Failed);
}

#[test]
fn self_approval_when_allowed_and_decisions_on_other_steps_are_refused() {
    let yaml = GATED.replace("required: 2,", "required: 1, allow_self: true,");
    let mut h = harness(&yaml);
    h.start();
    assert_eq!(
        h.try_apply(decision("bob", &["release"], true, "")),
        Err(MachineError::NotAwaitingApproval {
            step: "gate".into(),
            state: "pending".into()
        })
    );
    h.ok("build", json!({}));
    h.apply(decision(
        "alice",
        &["release"],
        true,
        "own change, allowed here",
    ));
    assert_eq!(h.status("gate"), "succeeded");
}

#[test]
fn a_rerun_past_a_gate_asks_for_a_new_approval() {
    let mut h = at_gate();
    h.apply(decision("bob", &["release"], true, "lgtm"));
    h.apply(decision("carol", &["release"], true, "ok"));
    h.fail("prod", ErrorKind::Failed);
    assert_eq!(h.run.status, RunStatus::Failed);

    let run = Machine::new(&h.p)
        .rerun_from(&h.run, "prod", "run2", Some("alice"))
        .expect("rerun");
    assert_eq!(
        run.lineage.as_ref().map(|l| l.reused.clone()),
        Some(vec!["build".to_string()]),
        "build's outputs are reused, the gate's decisions are not"
    );
    let mut h = Harness { run, ..h };
    let actions = h.start();
    assert!(
        started(&actions).is_empty(),
        "prod waits for the gate again: {actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::RequestApproval { step, .. } if step == "gate")),
        "{actions:?}"
    );
    assert_eq!(h.status("gate"), "waiting-approval");
    h.apply(decision("bob", &["release"], true, "again"));
    let actions = h.apply(decision("dave", &["release"], true, ""));
    assert_eq!(started_ids(&actions), ["prod"]);
}
