//! Server-side apply, forced only where a grant says `force = true`.
//!
//! Without force, the API server refuses to change fields another field
//! manager owns (409 with `FieldManagerConflict` causes). That refusal goes
//! back to the plugin as `apply-error::conflict`, naming each manager and
//! field; the old `apply` reports it as `error::failed` with the same names.

use kube::api::{Patch, PatchParams};
use kube::core::Status;
use serde_json::Value;

use super::{Target, Verb, kube_api, kube_error, to_json, within};
use crate::runtime::bindings::WitError;
use crate::runtime::bindings::capstan::plugin::kube::{ApplyError, FieldConflict};
use crate::runtime::state::HostState;

/// The `reason` of a status cause that reports a field owned by another manager.
const FIELD_MANAGER_CONFLICT: &str = "FieldManagerConflict";

/// The object's apiVersion, kind, name and namespace, or why the manifest is unusable.
fn parse_manifest(manifest: &str) -> Result<(Value, [String; 3], Option<String>), WitError> {
    let object: Value = serde_json::from_str(manifest)
        .map_err(|e| WitError::InvalidInput(format!("manifest is not JSON: {e}")))?;
    let field = |k: &str| {
        object
            .pointer(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let names = [
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/name"),
    ];
    if names.iter().any(String::is_empty) {
        return Err(WitError::InvalidInput(
            "manifest needs apiVersion, kind and metadata.name".into(),
        ));
    }
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((object, names, namespace))
}

/// The conflicts a 409 from server-side apply names, if it is one.
fn conflicts(status: &Status) -> Option<Vec<FieldConflict>> {
    if status.code != 409 {
        return None;
    }
    let found: Vec<FieldConflict> = status
        .details
        .as_ref()?
        .causes
        .iter()
        .filter(|c| c.reason == FIELD_MANAGER_CONFLICT)
        .map(|c| FieldConflict {
            manager: manager_of(&c.message),
            field: c.field.clone(),
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// The manager in a cause message such as
/// `conflict with "kubectl-client-side-apply" using apps/v1`.
fn manager_of(message: &str) -> String {
    let rest = message.strip_prefix("conflict with ").unwrap_or(message);
    match rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
        Some((manager, _)) => manager.to_string(),
        None => rest.split(" using ").next().unwrap_or(rest).to_string(),
    }
}

/// `field manager conflict: a owns .x, b owns .y; ...`, for the old `apply`
/// and the audit log.
fn describe(conflicts: &[FieldConflict]) -> String {
    let owned: Vec<String> = conflicts
        .iter()
        .map(|c| format!("{} owns {}", c.manager, c.field))
        .collect();
    format!(
        "field manager conflict: {}; the grant does not allow force",
        owned.join(", ")
    )
}

/// The old `apply`'s view of an apply error: a conflict is `failed`.
pub(super) fn flatten(e: ApplyError) -> WitError {
    match e {
        ApplyError::Error(e) => e,
        ApplyError::Conflict(c) => WitError::Failed(describe(&c)),
    }
}

impl HostState {
    /// Checks the grant, then applies `manifest` with the plugin's field
    /// manager, forced only if a covering grant entry has `force = true`.
    pub(super) async fn kube_apply(
        &mut self,
        cluster: &str,
        manifest: &str,
        dry_run: bool,
    ) -> Result<String, ApplyError> {
        let (object, [api_version, kind, name], namespace) =
            parse_manifest(manifest).map_err(ApplyError::Error)?;
        let t = Target::new(cluster, &api_version, &kind, namespace.as_deref(), &name);
        let access = self
            .kube_check(&t, Verb::Apply)
            .map_err(ApplyError::Error)?;
        let mut params = PatchParams::apply(&self.field_manager());
        params.force = access.force;
        params.dry_run = dry_run;
        let env = self.caps.env.clone();
        let result = async {
            let (api, limit) = kube_api(env, &t).await.map_err(ApplyError::Error)?;
            let answer = within(limit, api.patch(&t.name, &params, &Patch::Apply(&object)))
                .await
                .map_err(ApplyError::Error)?;
            match answer {
                Ok(applied) => to_json(&applied).map_err(ApplyError::Error),
                Err(kube::Error::Api(status)) if conflicts(&status).is_some() => {
                    Err(ApplyError::Conflict(conflicts(&status).unwrap_or_default()))
                }
                Err(e) => Err(ApplyError::Error(kube_error(e))),
            }
        }
        .await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(ApplyError::Error(e)) => format!("error: {e:?}"),
            Err(ApplyError::Conflict(c)) => format!("error: {}", describe(c)),
        };
        let verb = if dry_run { "apply (dry-run)" } else { "apply" };
        self.audit("kube", verb, &t.label, true, &outcome);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Status as the API server sends it, with `(reason, message, field)` causes.
    fn status(code: u16, causes: &[(&str, &str, &str)]) -> Status {
        let causes: Vec<Value> = causes
            .iter()
            .map(|(reason, message, field)| {
                serde_json::json!({ "reason": reason, "message": message, "field": field })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": "Conflict", "message": "Apply failed with 1 conflict",
            "details": { "causes": causes },
        }))
        .unwrap()
    }

    #[test]
    fn conflicts_name_each_manager_and_field() {
        let s = status(
            409,
            &[
                (
                    FIELD_MANAGER_CONFLICT,
                    "conflict with \"kubectl-client-side-apply\" using apps/v1",
                    ".spec.replicas",
                ),
                (
                    FIELD_MANAGER_CONFLICT,
                    "conflict with \"other-team\" using v1 at 2026-11-30T23:00:00Z",
                    ".data.color",
                ),
            ],
        );
        let found = conflicts(&s).unwrap();
        assert_eq!(found[0].manager, "kubectl-client-side-apply");
        assert_eq!(found[0].field, ".spec.replicas");
        assert_eq!(found[1].manager, "other-team");
        assert_eq!(
            describe(&found),
            "field manager conflict: kubectl-client-side-apply owns .spec.replicas, \
             other-team owns .data.color; the grant does not allow force"
        );
        // Other 409s (e.g. an AlreadyExists) stay ordinary errors.
        assert!(conflicts(&status(409, &[])).is_none());
        assert!(conflicts(&status(422, &[(FIELD_MANAGER_CONFLICT, "x", ".a")])).is_none());
        assert_eq!(manager_of("conflict with someone"), "someone");
    }
}
