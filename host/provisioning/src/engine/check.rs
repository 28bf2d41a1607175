//! Before an apply: the plan must still describe the world and the request
//! (same spec revision and plugin digest, no live object changed since,
//! conflicts only with `force` and a grant that allows it, immutable
//! changes only with `recreate`, and the provisioner still producing the
//! same objects).

use std::collections::{BTreeMap, BTreeSet};

use capstan_runtime::capabilities::kube::Verb;
use serde_json::{Value, json};

use super::{Engine, ProvisionError};
use crate::kube::{Granted, KubeError};
use crate::model::{Instance, ObjectRef, Plan, Verdict};
use crate::store::ApplyOptions;

impl Engine {
    /// Refuses a plan that no longer describes the world or the request.
    pub(super) async fn check_applicable(
        &self,
        i: &Instance,
        plan: &Plan,
        options: &ApplyOptions,
    ) -> Result<(), ProvisionError> {
        if plan.revision != i.revision {
            return Err(ProvisionError::conflict(
                "spec-changed",
                format!(
                    "plan {} was made for spec revision {}; the spec is at {} now: make a new plan",
                    plan.id, plan.revision, i.revision
                ),
                json!({}),
            ));
        }
        let (g, _, digest) = self.granted(i).await?;
        if digest != plan.plugin_digest {
            return Err(ProvisionError::conflict(
                "plugin-changed",
                format!(
                    "plugin `{}` changed since plan {}: make a new plan",
                    i.plugin, plan.id
                ),
                json!({}),
            ));
        }
        let stale = stale_objects(&g, plan).await?;
        if !stale.is_empty() {
            return Err(ProvisionError::conflict(
                "stale",
                format!(
                    "plan {} is stale: {} object(s) changed since it was made: make a new plan",
                    plan.id,
                    stale.len()
                ),
                json!({ "objects": stale }),
            ));
        }
        let conflicting: Vec<Value> = plan
            .objects
            .iter()
            .filter(|o| !o.conflicts.is_empty())
            .map(|o| json!({ "object": o.object.label(), "conflicts": o.conflicts }))
            .collect();
        if !conflicting.is_empty() {
            if !options.force {
                let managers: BTreeSet<&str> = plan
                    .objects
                    .iter()
                    .flat_map(|o| o.conflicts.iter().map(|c| c.manager.as_str()))
                    .collect();
                return Err(ProvisionError::conflict(
                    "field-manager-conflict",
                    format!(
                        "fields are owned by other field managers ({}); apply with force to take them over",
                        managers.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    json!({ "objects": conflicting }),
                ));
            }
            for o in plan.objects.iter().filter(|o| !o.conflicts.is_empty()) {
                if !g.check(&o.object, Verb::Apply)? {
                    return Err(ProvisionError::OutsideGrant {
                        message: format!(
                            "{}: the provisioner's grant does not allow force (force = true)",
                            o.object.label()
                        ),
                        details: json!({ "denied": [o.object.label()] }),
                    });
                }
            }
        }
        let immutable: Vec<Value> = plan
            .objects
            .iter()
            .filter_map(|o| {
                o.immutable
                    .as_ref()
                    .map(|m| json!({ "object": o.object.label(), "message": m }))
            })
            .collect();
        if !immutable.is_empty() && !options.recreate {
            return Err(ProvisionError::conflict(
                "immutable-field",
                format!(
                    "{} object(s) change an immutable field; apply with recreate to delete and re-create them",
                    immutable.len()
                ),
                json!({ "objects": immutable }),
            ));
        }
        let (now, _, _) = self.desired(i, &i.spec).await?;
        let planned: BTreeMap<&ObjectRef, &str> = plan
            .objects
            .iter()
            .filter(|o| o.verdict != Verdict::Prune)
            .map(|o| (&o.object, o.desired_sha256.as_str()))
            .collect();
        let wanted: BTreeMap<&ObjectRef, &str> =
            now.iter().map(|d| (&d.object, d.sha.as_str())).collect();
        if planned != wanted {
            return Err(ProvisionError::conflict(
                "plan-outdated",
                format!(
                    "the provisioner now produces other objects than plan {}: make a new plan",
                    plan.id
                ),
                json!({}),
            ));
        }
        Ok(())
    }
}

/// Objects whose live resourceVersion is not the one the plan saw.
pub(super) async fn stale_objects(g: &Granted, plan: &Plan) -> Result<Vec<Value>, ProvisionError> {
    let mut stale = Vec::new();
    for o in &plan.objects {
        let live = match g.get(&o.object).await {
            Ok(live) => live,
            // A kind whose CRD this plan creates: none can exist yet.
            Err(KubeError::NotFound(_)) if o.verdict == Verdict::CannotValidateYet => None,
            Err(e) => return Err(e.into()),
        };
        let rv = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if rv != o.live_resource_version {
            stale.push(json!({
                "object": o.object.label(),
                "planned": o.live_resource_version,
                "live": rv,
            }));
        }
    }
    Ok(stale)
}
