//! Rerun from a step: a new run that reuses the outputs of the steps that
//! succeeded before and do not depend on the chosen step, and records where
//! it came from. An approval is never reused: a rerun that passes a gate
//! waits for a new decision, as a first run does.

use super::record::StepRecord;
use super::{Lineage, MachineError, Phase, Run, StepState};
use crate::model::Pipeline;
use crate::validate::descendants;

pub(super) fn rerun_from(
    p: &Pipeline,
    previous: &Run,
    from_step: &str,
    new_id: &str,
    started_by: Option<&str>,
) -> Result<Run, MachineError> {
    if p.is_finally(from_step) || p.step(from_step).is_none() {
        return Err(MachineError::BadRerunStep(from_step.to_string()));
    }
    if previous.phase != Phase::Done {
        return Err(MachineError::StillRunning(previous.id.clone()));
    }
    let again = descendants(p, from_step);
    let started_by = started_by.or(previous.started_by.as_deref());
    let mut run = Run::new(
        p,
        new_id,
        previous.trigger.clone(),
        previous.params.clone(),
        started_by,
    );
    let mut reused: Vec<(u64, String)> = p
        .steps
        .iter()
        .filter(|s| s.id != from_step && !again.contains(&s.id) && s.approval.is_none())
        .filter_map(|s| {
            let r = previous.steps.get(&s.id)?;
            (r.state == StepState::Succeeded).then(|| (r.completed.unwrap_or(0), s.id.clone()))
        })
        .collect();
    reused.sort();
    for (_, id) in &reused {
        let old = &previous.steps[id];
        run.completions += 1;
        let record = StepRecord {
            state: StepState::Succeeded,
            outputs: old.outputs.clone(),
            params: old.params.clone(),
            approvals: old.approvals.clone(),
            completed: Some(run.completions),
            reused_from: Some(
                old.reused_from
                    .clone()
                    .unwrap_or_else(|| previous.id.clone()),
            ),
            message: Some(format!("outputs reused from run {}", previous.id)),
            ..StepRecord::pending()
        };
        run.steps.insert(id.clone(), record);
    }
    run.lineage = Some(Lineage {
        parent: previous.id.clone(),
        from_step: from_step.to_string(),
        reused: reused.into_iter().map(|(_, id)| id).collect(),
    });
    Ok(run)
}
