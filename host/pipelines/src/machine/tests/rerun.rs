//! Rerun from a step: earlier outputs reused, lineage recorded.

use super::*;

const CHAIN: &str = r#"
name: chain
steps:
  - {id: render, plugin: render-deployment, outputs: [image]}
  - {id: side, plugin: wait-rollout}
  - {id: deploy, plugin: render-deployment, needs: [render], params: {image: "${{ steps.render.outputs.image }}"}}
  - {id: smoke, plugin: wait-rollout, needs: [deploy]}
finally:
  - {id: notify, plugin: wait-rollout}
"#;

fn failed_run() -> Harness {
    let mut h = harness(CHAIN);
    h.start();
    h.ok("render", json!({"image": "shop:7"}));
    h.ok("side", json!({}));
    h.fail("deploy", ErrorKind::Failed);
    h.ok("notify", json!({}));
    assert_eq!(h.run.status, RunStatus::Failed);
    h
}

#[test]
fn a_rerun_reuses_earlier_outputs_reruns_the_step_and_its_dependents_and_records_lineage() {
    let old = failed_run();
    let m = Machine::new(&old.p);
    let run = m
        .rerun_from(&old.run, "deploy", "run2", Some("bob"))
        .expect("rerun");
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.started_by.as_deref(), Some("bob"));
    let lineage = run.lineage.clone().expect("lineage");
    assert_eq!(
        (lineage.parent.as_str(), lineage.from_step.as_str()),
        ("run1", "deploy")
    );
    assert_eq!(lineage.reused, ["render", "side"]);
    assert_eq!(run.steps["render"].reused_from.as_deref(), Some("run1"));

    let mut h = Harness { run, ..old };
    h.run.id = "run2".into();
    let actions = h.start();
    assert_eq!(
        started_ids(&actions),
        ["deploy"],
        "only the failed step starts; render is not run again"
    );
    assert_eq!(
        invocation(&actions, "deploy").params,
        json!({"image": "shop:7"})
    );
    assert_eq!(
        invocation(&actions, "deploy").idempotency_key,
        "run2/deploy"
    );
    h.ok("deploy", json!({}));
    h.ok("smoke", json!({}));
    let end = h.ok("notify", json!({}));
    assert_eq!(finished(&end).map(|f| f.0), Some(RunStatus::Succeeded));
}

#[test]
fn reused_steps_are_not_rolled_back_by_the_rerun() {
    let yaml = CHAIN.replace("needs: [deploy]}", "needs: [deploy], on_failure: rollback}");
    let mut old = harness(&yaml);
    old.start();
    old.ok("render", json!({"image": "shop:7"}));
    old.ok("side", json!({}));
    old.fail("deploy", ErrorKind::Failed);
    old.ok("notify", json!({}));
    let run = Machine::new(&old.p)
        .rerun_from(&old.run, "deploy", "run2", None)
        .expect("rerun");
    let mut h = Harness { run, ..old };
    h.start();
    h.ok("deploy", json!({}));
    let actions = h.fail("smoke", ErrorKind::Failed);
    assert_eq!(rollbacks(&actions), ["deploy"]);
    let done = Outcome::Succeeded {
        outputs: BTreeMap::new(),
        message: "undone".into(),
    };
    let actions = h.apply(Event::RollbackFinished {
        step: "deploy".into(),
        attempt: 1,
        outcome: done,
    });
    assert!(
        rollbacks(&actions).is_empty(),
        "render and side belong to run1"
    );
}

#[test]
fn rerun_needs_a_finished_run_and_a_main_step() {
    let old = failed_run();
    let m = Machine::new(&old.p);
    assert_eq!(
        m.rerun_from(&old.run, "notify", "r", None),
        Err(MachineError::BadRerunStep("notify".into()))
    );
    assert_eq!(
        m.rerun_from(&old.run, "nope", "r", None),
        Err(MachineError::BadRerunStep("nope".into()))
    );
    let mut running = harness(CHAIN);
    running.start();
    assert_eq!(
        m.rerun_from(&running.run, "deploy", "r", None),
        Err(MachineError::StillRunning("run1".into()))
    );
}
