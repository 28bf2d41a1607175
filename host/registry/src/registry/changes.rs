//! How the plugin set changes: installs, activations, rollbacks, deletions
//! and decisions on held versions, each checked against the caller's roles
//! (see [`super::PluginGate`]) and recorded in the audit log before it is
//! acknowledged. Version changes are serialised by `Registry::changes`.

use super::{Installed, Registry, RegistryError, Source, now, trust};
use crate::manifest::Manifest;
use crate::store::{VersionRecord, digest_of};

impl Registry {
    /// Validates, compiles and stores a new version from the server itself
    /// (bundled, plugins directory); activates it if asked.
    pub async fn install(
        &self,
        manifest_text: &str,
        bytes: Vec<u8>,
        source: Source,
        activate: bool,
    ) -> Result<Installed, RegistryError> {
        let who = crate::trust::Authority::system(source.as_str());
        self.install_as(manifest_text, bytes, source, activate, &who)
            .await
    }

    /// Validates, compiles and stores a new version published by `who`.
    /// Only members of the owning project may publish; grants beyond the
    /// project's ceiling, or wider than the active version's, are held for
    /// approval instead of activated (see [`PluginGate::decide`]).
    /// A version that fails never replaces the working one.
    pub async fn install_as(
        &self,
        manifest_text: &str,
        bytes: Vec<u8>,
        source: Source,
        activate: bool,
        who: &crate::trust::Authority,
    ) -> Result<Installed, RegistryError> {
        let manifest = Manifest::parse(manifest_text)?;
        self.runtime.check_limits(&manifest)?;
        let (name, version) = (manifest.name.clone(), manifest.version.clone());
        let digest = digest_of(&bytes);
        let _guard = self.changes.lock().await;
        let project = self.gate.owning_project(&manifest, who)?;
        let record = VersionRecord {
            name: name.clone(),
            version: version.clone(),
            digest: digest.clone(),
            manifest: manifest.to_toml(),
            role: manifest.role.to_string(),
            source: source.as_str().into(),
            created_at: now(),
        };
        let replace = source != Source::Api;
        if let Some(existing) = self.store.version(&name, &version)?
            && existing.digest != digest
            && !replace
        {
            return Err(RegistryError::Conflict(format!(
                "{name} {version} already exists with different content; publish it under a new version"
            )));
        }
        let grants = manifest.grants.clone();
        let prepared = match self.prepare(manifest, &bytes).await {
            Ok(p) => p,
            Err(e) => {
                self.record_failure(&name, &version, &e);
                return Err(e);
            }
        };
        self.store.put_blob(&bytes)?;
        let changed = self.store.insert_version(&record, replace)?;
        self.gate.claim(&name, &project)?;
        let active = self.slot(&name).active();
        let is_active = self.store.active_version(&name)?.as_deref() == Some(version.as_str());
        // Uploading the active version again, unchanged, changes nothing and
        // needs no approval.
        let held = if !changed && is_active {
            None
        } else {
            self.gate.decide(
                &name,
                &version,
                &digest,
                &project,
                &grants,
                active.as_ref().map(|p| &p.manifest.grants),
                who,
                activate,
            )?
        };
        let swap = held.is_none()
            && activate
            && (changed || !is_active || self.slot(&name).active().is_none());
        let from = active.as_ref().map(|p| p.manifest.version.clone());
        self.audit_change(
            who,
            "plugin.upload",
            &name,
            serde_json::json!({
                "name": name, "version": version, "digest": digest, "project": project,
                "role": record.role, "source": source.as_str(), "grants": grants,
                "changed": changed, "held": held.as_ref().map(|h| &h.approval),
            }),
        )
        .await;
        if swap {
            self.store.set_active(&name, &version, "activate")?;
            self.swap_in(&name, prepared);
            self.audit_change(
                who,
                "plugin.activate",
                &name,
                serde_json::json!({ "name": name, "from": from, "to": version }),
            )
            .await;
        }
        tracing::info!(plugin = %name, %version, digest = %&digest[..12], source = source.as_str(), activated = swap, held = held.is_some(), "installed");
        Ok(Installed {
            name,
            version,
            digest,
            active: swap || (is_active && held.is_none()),
            changed,
            project,
            held,
        })
    }

    /// The audit record of a change `who` made to `target`, for a caller
    /// that stores it in the change's own transaction
    /// ([`crate::capabilities::audit::insert_now`]).
    pub fn change_record(
        who: &crate::trust::Authority,
        what: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> crate::capabilities::AuditRecord {
        let mut record = crate::capabilities::AuditRecord::change(&who.actor, what, target, detail);
        record.plugin = Some(target.to_string());
        record
    }

    /// Records a change in the audit log before it is acknowledged.
    pub async fn audit_change(
        &self,
        who: &crate::trust::Authority,
        what: &str,
        target: &str,
        detail: serde_json::Value,
    ) {
        let record = Self::change_record(who, what, target, detail);
        if let Err(e) = self.runtime.env().audit.record_durable(record).await {
            tracing::error!("{e}");
        }
    }

    /// Makes a stored version the active one, for `who`: an operator of the
    /// owning project, and the version's grants must not need an approval
    /// that it lacks.
    pub async fn activate_as(
        &self,
        name: &str,
        version: &str,
        who: &crate::trust::Authority,
    ) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate
            .require(name, who, crate::trust::Role::Operator, "activate")?;
        let record = self
            .store
            .version(name, version)?
            .ok_or_else(|| RegistryError::NotFound(format!("{name} has no version {version}")))?;
        let grants = Manifest::parse(&record.manifest)?.grants;
        let active = self.slot(name).active();
        self.gate.check_activation(
            name,
            version,
            &record.digest,
            &grants,
            active.as_ref().map(|p| &p.manifest.grants),
            who,
        )?;
        let from = active.map(|p| p.manifest.version.clone());
        self.activate_locked(name, version, "activate").await?;
        self.audit_change(
            who,
            "plugin.activate",
            name,
            serde_json::json!({ "name": name, "from": from, "to": version }),
        )
        .await;
        Ok(())
    }

    /// Returns to the version that was active before the current one, for
    /// `who` (an operator of the owning project). That version was
    /// authorised when it was first activated.
    pub async fn rollback_as(
        &self,
        name: &str,
        who: &crate::trust::Authority,
    ) -> Result<String, RegistryError> {
        let _guard = self.changes.lock().await;
        self.known(name)?;
        self.gate
            .require(name, who, crate::trust::Role::Operator, "roll back")?;
        let target = self.store.rollback_target(name)?.ok_or_else(|| {
            RegistryError::Conflict(format!(
                "{name} has no earlier active version to roll back to"
            ))
        })?;
        let from = self.slot(name).active().map(|p| p.manifest.version.clone());
        self.activate_locked(name, &target, "rollback").await?;
        self.audit_change(
            who,
            "plugin.rollback",
            name,
            serde_json::json!({ "name": name, "from": from, "to": target }),
        )
        .await;
        Ok(target)
    }

    /// Deletes a plugin, every version of it, its kv entries and its
    /// ownership, for `who` (an admin of the owning project). A plugin
    /// published later under the same name starts with no state.
    pub async fn delete_as(
        &self,
        name: &str,
        who: &crate::trust::Authority,
    ) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate
            .require(name, who, crate::trust::Role::Admin, "delete")?;
        let project = self.gate.owner(name);
        self.store.delete_plugin(name)?;
        let kv_keys = crate::capabilities::kv::purge(&self.store, name)?;
        self.gate.release(name)?;
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.metrics.set_loaded(self.loaded_count());
        self.audit_change(
            who,
            "plugin.delete",
            name,
            serde_json::json!({ "name": name, "project": project, "kv_keys_deleted": kv_keys }),
        )
        .await;
        Ok(())
    }

    /// Deletes one version that is not active, for `who` (an admin of the
    /// owning project).
    pub async fn delete_version_as(
        &self,
        name: &str,
        version: &str,
        who: &crate::trust::Authority,
    ) -> Result<(), RegistryError> {
        let _guard = self.changes.lock().await;
        self.gate
            .require(name, who, crate::trust::Role::Admin, "delete versions of")?;
        self.store.delete_version(name, version)?;
        self.audit_change(
            who,
            "plugin.delete-version",
            name,
            serde_json::json!({ "name": name, "version": version }),
        )
        .await;
        Ok(())
    }

    /// Records a decision on a held version; an approval that completes
    /// activates the version if its upload asked for that.
    pub async fn decide_approval(
        &self,
        id: &str,
        who: &crate::trust::Authority,
        approve: bool,
        comment: &str,
    ) -> Result<crate::trust::approvals::Approval, RegistryError> {
        let _guard = self.changes.lock().await;
        let approval = self.gate.approvals().decide(id, who, approve, comment)?;
        let what = if approve {
            "approval.approve"
        } else {
            "approval.reject"
        };
        self.audit_change(
            who,
            what,
            &approval.subject,
            serde_json::json!({ "id": id, "subject": approval.subject, "state": approval.state, "comment": comment }),
        )
        .await;
        let listeners = self
            .approval_listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in listeners {
            l.decided(&approval, who, approve, comment);
        }
        let wants_activation =
            approval.detail.get("activate") == Some(&serde_json::Value::Bool(true));
        if approval.kind == trust::KIND
            && approval.state == crate::trust::approvals::ApprovalState::Approved
            && wants_activation
        {
            let (name, version) = approval.subject.split_once('@').ok_or_else(|| {
                RegistryError::Conflict(format!("bad subject {}", approval.subject))
            })?;
            let from = self.slot(name).active().map(|p| p.manifest.version.clone());
            self.activate_locked(name, version, "activate").await?;
            self.audit_change(
                who,
                "plugin.activate",
                name,
                serde_json::json!({ "name": name, "from": from, "to": version, "approval": id }),
            )
            .await;
        }
        Ok(approval)
    }
}
