//! The registry's side of the trust model: which project owns a plugin,
//! who may publish to it, and when a version must wait for approval.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use super::RegistryError;
use crate::capabilities::Grants;
use crate::manifest::Manifest;
use crate::store::Store;
use crate::trust::approvals::{ApprovalState, Approvals, ApproverScope, NewApproval};
use crate::trust::ceilings::{Ceiling, exceeding};
use crate::trust::diff::GrantDiff;
use crate::trust::projects::Projects;
use crate::trust::{Authority, DEFAULT_PROJECT, Role};

/// The approval kind of plugin versions.
pub const KIND: &str = "plugin-version";

/// Why a version was held, and where to approve it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Held {
    /// Approval id: `POST /v1/approvals/{id}/approve`.
    pub approval: String,
    /// Why, one line each.
    pub reasons: Vec<String>,
    /// Grants against the active version.
    pub diff: GrantDiff,
    /// Who may approve: `global admin` or `project admin`.
    pub approver: String,
}

/// Ownership, ceilings and approvals of plugin versions.
pub struct PluginGate {
    projects: Projects,
    approvals: Approvals,
    owners: RwLock<HashMap<String, String>>,
}

impl PluginGate {
    /// Over `store`; owners are cached for the request path.
    pub fn new(store: Arc<Store>) -> PluginGate {
        let projects = Projects::new(store.clone());
        let owners = projects
            .owners()
            .map(|o| o.into_iter().collect())
            .unwrap_or_else(|e| {
                tracing::error!("reading plugin owners: {e}");
                HashMap::new()
            });
        PluginGate {
            projects,
            approvals: Approvals::new(store),
            owners: RwLock::new(owners),
        }
    }

    /// Projects and ceilings.
    pub fn projects(&self) -> &Projects {
        &self.projects
    }

    /// The approval gate.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// The project owning `plugin` (from memory; the default project for
    /// plugins never published).
    pub fn owner(&self, plugin: &str) -> String {
        self.owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .cloned()
            .unwrap_or_else(|| DEFAULT_PROJECT.to_string())
    }

    pub(super) fn claim(&self, plugin: &str, project: &str) -> Result<(), RegistryError> {
        self.projects.claim(plugin, project)?;
        self.owners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(plugin.to_string())
            .or_insert_with(|| project.to_string());
        Ok(())
    }

    /// Reads the owner of `plugin` again (another replica changed it).
    pub(super) fn refresh_owner(&self, plugin: &str) -> Result<(), RegistryError> {
        let owner = self.projects.owner(plugin)?;
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        match owner {
            Some(project) => owners.insert(plugin.to_string(), project),
            None => owners.remove(plugin),
        };
        Ok(())
    }

    pub(super) fn release(&self, plugin: &str) -> Result<(), RegistryError> {
        self.projects.release(plugin)?;
        self.owners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin);
        Ok(())
    }

    /// The project a new version belongs to. A plugin keeps the project of
    /// its first version; only its members (operators or above) publish.
    pub(super) fn owning_project(
        &self,
        manifest: &Manifest,
        who: &Authority,
    ) -> Result<String, RegistryError> {
        let name = &manifest.name;
        let project = match (&manifest.project, self.projects.owner(name)?) {
            (Some(p), Some(owner)) if *p != owner => {
                return Err(RegistryError::Conflict(format!(
                    "plugin `{name}` belongs to project `{owner}`; a manifest naming project `{p}` cannot publish it"
                )));
            }
            (_, Some(owner)) => owner,
            (Some(p), None) => {
                if !self.projects.exists(p)? {
                    return Err(RegistryError::NotFound(format!(
                        "manifest names project `{p}`, which does not exist"
                    )));
                }
                p.clone()
            }
            (None, None) => DEFAULT_PROJECT.to_string(),
        };
        if who.role_in(&project) < Some(Role::Operator) {
            return Err(RegistryError::Forbidden(format!(
                "publishing `{name}` needs the operator role in project `{project}`; {} has {}",
                who.actor,
                describe_role(who.role_in(&project))
            )));
        }
        Ok(project)
    }

    /// Refuses unless `who` holds `role` in the project owning `plugin`.
    pub fn require(
        &self,
        plugin: &str,
        who: &Authority,
        role: Role,
        what: &str,
    ) -> Result<(), RegistryError> {
        let project = self.owner(plugin);
        let has = who.role_in(&project);
        if has < Some(role) {
            return Err(RegistryError::Forbidden(format!(
                "to {what} `{plugin}` needs the `{role}` role in project `{project}`; {} has {}",
                who.actor,
                describe_role(has)
            )));
        }
        Ok(())
    }

    /// The ceilings that apply to `plugin` of `project`.
    pub fn ceilings_for(&self, project: &str, plugin: &str) -> Result<Vec<Ceiling>, RegistryError> {
        Ok(self
            .projects
            .ceilings()?
            .into_iter()
            .filter(|c| c.applies_to(project, plugin))
            .map(|c| c.ceiling)
            .collect())
    }

    /// Why `grants` need approval when `who` publishes or activates them,
    /// and who may give it; `None` when they may take effect at once.
    fn review(
        &self,
        plugin: &str,
        project: &str,
        grants: &Grants,
        active: Option<&Grants>,
        who: &Authority,
    ) -> Result<Option<(Vec<String>, GrantDiff, ApproverScope)>, RegistryError> {
        let diff = GrantDiff::between(active, grants);
        if who.is_admin() {
            return Ok(None);
        }
        let ceilings = self.ceilings_for(project, plugin)?;
        let beyond = exceeding(grants, &ceilings.iter().collect::<Vec<_>>());
        let widening = active.is_some() && diff.widens();
        let project_admin = who.role_in(project) >= Some(Role::Admin);
        if beyond.is_empty() && (!widening || project_admin) {
            return Ok(None);
        }
        let scope = if beyond.is_empty() {
            ApproverScope::Project
        } else {
            ApproverScope::Global
        };
        let mut reasons: Vec<String> = beyond
            .into_iter()
            .map(|r| format!("beyond the ceiling of project `{project}`: {r}"))
            .collect();
        if widening {
            reasons.push(format!(
                "widens the active version's grants: {}",
                diff.added.join("; ")
            ));
        }
        Ok(Some((reasons, diff, scope)))
    }

    /// Decides whether a just-stored version may take effect; files an
    /// approval (or finds the pending one) when it may not.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide(
        &self,
        plugin: &str,
        version: &str,
        digest: &str,
        project: &str,
        grants: &Grants,
        active: Option<&Grants>,
        who: &Authority,
        activate: bool,
    ) -> Result<Option<Held>, RegistryError> {
        let subject = format!("{plugin}@{version}");
        // An approval covers exactly the content it was given for: the same
        // component and the same grants (a version deleted and uploaded
        // again under its number with other grants needs a new one).
        let grants_json = serde_json::to_value(grants).unwrap_or_default();
        let same = |a: &crate::trust::approvals::Approval| {
            a.detail.get("digest").and_then(|d| d.as_str()) == Some(digest)
                && a.detail.get("grants") == Some(&grants_json)
        };
        let mut earlier = self.approvals.of_subject(KIND, &subject)?;
        earlier.retain(same);
        if earlier.iter().any(|a| a.state == ApprovalState::Approved) {
            return Ok(None);
        }
        let Some((reasons, diff, scope)) = self.review(plugin, project, grants, active, who)?
        else {
            return Ok(None);
        };
        let approver = match scope {
            ApproverScope::Global => "global admin",
            ApproverScope::Project => "project admin",
        };
        if let Some(pending) = earlier
            .into_iter()
            .find(|a| a.state == ApprovalState::Pending)
        {
            return Ok(Some(Held {
                approval: pending.id,
                reasons: pending.reasons,
                diff,
                approver: approver.into(),
            }));
        }
        let approval = self.approvals.request(NewApproval {
            kind: KIND.into(),
            subject,
            project: project.into(),
            requested_by: who.actor.clone(),
            approver_role: Role::Admin,
            approver_scope: scope,
            required: 1,
            reasons: reasons.clone(),
            detail: serde_json::json!({
                "plugin": plugin, "version": version, "digest": digest,
                "grants": grants, "diff": diff, "activate": activate,
            }),
        })?;
        Ok(Some(Held {
            approval: approval.id,
            reasons,
            diff,
            approver: approver.into(),
        }))
    }

    /// Refuses to activate a version whose grants need an approval it does
    /// not have; files the request so that an admin can give it.
    pub(super) fn check_activation(
        &self,
        plugin: &str,
        version: &str,
        digest: &str,
        grants: &Grants,
        active: Option<&Grants>,
        who: &Authority,
    ) -> Result<(), RegistryError> {
        let project = self.owner(plugin);
        match self.decide(plugin, version, digest, &project, grants, active, who, true)? {
            None => Ok(()),
            Some(held) => Err(RegistryError::Held(format!(
                "{plugin} {version} needs approval by a {} (approval {}): {}",
                held.approver,
                held.approval,
                held.reasons.join("; ")
            ))),
        }
    }
}

fn describe_role(r: Option<Role>) -> String {
    match r {
        Some(r) => format!("`{r}`"),
        None => "no role there".into(),
    }
}
