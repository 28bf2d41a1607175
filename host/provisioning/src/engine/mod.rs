//! The host side: instances created from the caller's project, plans
//! computed and stored ([`plan`]), applies and destroys run as journaled
//! jobs under a lease per instance ([`jobs`]), approvals through the shared
//! gate (kind `provision-plan`, subject the plan id), and the drift sweep
//! ([`drift`]).

mod check;
mod destroy;
mod drift;
mod jobs;
mod plan;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use capstan_registry::registry::{ApprovalListener, Registry, RegistryError};
use capstan_registry::trust::approvals::{Approval, ApprovalState, ApproverScope, NewApproval};
use capstan_registry::trust::{Authority, Role};
use capstan_runtime::manifest::Role as PluginRole;
use capstan_store::{StoreError, ids, unix_millis};
use serde_json::{Value, json};

pub use destroy::termination_report;
pub use drift::{DriftCheck, ProvisionMetrics};

use crate::kube::{Granted, KindCache, KubeError};
use crate::model::{Instance, Plan};
use crate::store::{ApplyOptions, Job, ProvisionStore};

/// The approval kind of plans in the shared gate; the subject is the plan id.
pub const APPROVAL_KIND: &str = "provision-plan";
/// The approval kind of destroys in the shared gate; the subject is the job id.
pub const DESTROY_APPROVAL_KIND: &str = "provision-destroy";

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This replica's name in leases.
    pub replica: String,
    /// How long a job's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often the worker looks for jobs when nothing wakes it.
    pub poll: Duration,
    /// How long one wave may take to become ready, and how long destroy
    /// waits for Namespace termination, before saying why not.
    pub wait_timeout: Duration,
    /// Clusters whose plans need an approval before apply (e.g. `prod`).
    pub approval_clusters: Vec<String>,
    /// Approvals a plan needs there.
    pub approvals_required: u32,
    /// How often applied instances are re-planned for drift (zero: never).
    pub drift_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            replica: format!("replica-{}", ids::new_id()),
            lease_ttl: Duration::from_secs(15),
            poll: Duration::from_millis(500),
            wait_timeout: Duration::from_secs(60),
            approval_clusters: vec!["prod".into()],
            approvals_required: 1,
            drift_interval: Duration::from_secs(300),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request or the plugin's plan is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The caller lacks the role.
    #[error("{0}")]
    Forbidden(String),
    /// The plan names objects outside the provisioner's grants; nothing was sent.
    #[error("{message}")]
    OutsideGrant {
        /// Summary.
        message: String,
        /// Each refused object and why.
        details: Value,
    },
    /// No such instance, plan or plugin.
    #[error("{0}")]
    NotFound(String),
    /// Refused as it stands: stale plan, field-manager conflict, immutable
    /// field, a job in progress, a rejected approval.
    #[error("{message}")]
    Conflict {
        /// Summary.
        message: String,
        /// Machine-readable detail (`reason`, the objects, the managers).
        details: Value,
    },
    /// The cluster or the plugin failed.
    #[error("{0}")]
    Failed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProvisionError {
    fn conflict(reason: &str, message: String, extra: Value) -> ProvisionError {
        let mut details = json!({ "reason": reason });
        if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        ProvisionError::Conflict { message, details }
    }
}

impl From<RegistryError> for ProvisionError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => ProvisionError::NotFound(m),
            RegistryError::Forbidden(m) => ProvisionError::Forbidden(m),
            RegistryError::Store(s) => ProvisionError::Store(s),
            other => ProvisionError::Failed(other.to_string()),
        }
    }
}

impl From<KubeError> for ProvisionError {
    fn from(e: KubeError) -> Self {
        match e {
            KubeError::Denied(m) => ProvisionError::OutsideGrant {
                details: json!({ "denied": [m.clone()] }),
                message: m,
            },
            other => ProvisionError::Failed(other.to_string()),
        }
    }
}

/// What `POST /v1/provisions` asks for.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    /// Instance name (a DNS-1123 label).
    pub name: String,
    /// Provisioner plugin.
    pub plugin: String,
    /// Cluster from the server's `[[kube.clusters]]`.
    pub cluster: String,
    /// The plugin's spec.
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Owning project; taken from the caller's token when it has a role in one project only.
    #[serde(default)]
    pub project: Option<String>,
}

/// The provisioning engine of one replica.
pub struct Engine {
    db: ProvisionStore,
    registry: Arc<Registry>,
    config: EngineConfig,
    kinds: KindCache,
    wake: tokio::sync::Notify,
    /// Jobs this replica runs.
    local: Mutex<HashSet<String>>,
    metrics: ProvisionMetrics,
}

impl Engine {
    /// Starts the engine: its job worker, the drift sweep, and its part in
    /// the approval gate.
    pub fn start(
        registry: Arc<Registry>,
        config: EngineConfig,
        metrics: ProvisionMetrics,
    ) -> Arc<Engine> {
        let engine = Arc::new(Engine {
            db: ProvisionStore::new(registry.store().clone()),
            registry: registry.clone(),
            config,
            kinds: KindCache::default(),
            wake: tokio::sync::Notify::new(),
            local: Mutex::default(),
            metrics,
        });
        registry.on_approval(Arc::new(Gatekeeper(Arc::downgrade(&engine))));
        tokio::spawn(jobs::worker(Arc::downgrade(&engine)));
        tokio::spawn(drift::sweeper(Arc::downgrade(&engine)));
        engine
    }

    /// The engine's tables.
    pub fn db(&self) -> &ProvisionStore {
        &self.db
    }

    /// Creates an instance, or stores a new spec revision of it.
    pub async fn put(
        &self,
        req: NewInstance,
        who: &Authority,
    ) -> Result<(Instance, bool), ProvisionError> {
        if !is_dns_label(&req.name) {
            return Err(ProvisionError::Invalid(format!(
                "name `{}` is not a DNS-1123 label (lower-case letters, digits, '-', at most 63)",
                req.name
            )));
        }
        if !req.spec.is_object() {
            return Err(ProvisionError::Invalid("spec must be a JSON object".into()));
        }
        let project = project_of(&req, who)?;
        require(who, &project, Role::Operator, "provision")?;
        if !self
            .registry
            .gate()
            .projects()
            .exists(&project)
            .map_err(RegistryError::from)?
        {
            return Err(ProvisionError::NotFound(format!(
                "project `{project}` does not exist; create it first"
            )));
        }
        if !self.registry.runtime().env().kube.contains(&req.cluster) {
            return Err(ProvisionError::Invalid(format!(
                "no cluster named `{}` is configured",
                req.cluster
            )));
        }
        let slot = self.registry.get_slot(&req.plugin)?;
        let active = slot.active().ok_or_else(|| {
            ProvisionError::NotFound(format!("plugin `{}` has no loaded version", req.plugin))
        })?;
        if active.manifest.role != PluginRole::Provisioner {
            return Err(ProvisionError::Invalid(format!(
                "plugin `{}` is a {}, not a provisioner",
                req.plugin, active.manifest.role
            )));
        }
        let instance = Instance {
            name: req.name.clone(),
            project,
            plugin: req.plugin,
            cluster: req.cluster,
            spec: req.spec,
            revision: 0,
            state: "new".into(),
            drift: "unknown".into(),
            detail: String::new(),
            created_by: who.actor.clone(),
            updated_ms: unix_millis(),
        };
        if let Some((old, _)) = self.db.get(&instance.name)? {
            require(who, &old.project, Role::Operator, "change provisions")?;
        }
        let (revision, changed) = self.db.put(&instance)?;
        if changed {
            let detail = json!({ "name": instance.name, "project": instance.project,
                "plugin": instance.plugin, "cluster": instance.cluster, "revision": revision });
            self.registry
                .audit_change(who, "provision.put", &instance.name, detail)
                .await;
        }
        let (stored, _) = self.get_instance(&instance.name)?;
        Ok((stored, changed && revision == 1))
    }

    fn get_instance(
        &self,
        name: &str,
    ) -> Result<(Instance, Vec<crate::store::Member>), ProvisionError> {
        self.db
            .get(name)?
            .ok_or_else(|| ProvisionError::NotFound(format!("no provision named `{name}`")))
    }

    /// One instance and its latest job, for a viewer of its project.
    pub fn instance(
        &self,
        name: &str,
        who: &Authority,
    ) -> Result<(Instance, Option<Job>), ProvisionError> {
        let (i, _) = self.get_instance(name)?;
        require(who, &i.project, Role::Viewer, "read provisions")?;
        Ok((i, self.db.last_job(name)?))
    }

    /// Instances of the caller's projects.
    pub fn list(&self, who: &Authority) -> Result<Vec<Instance>, ProvisionError> {
        let mut all = self.db.list()?;
        all.retain(|i| who.role_in(&i.project).is_some());
        Ok(all)
    }

    /// A stored plan and the job applying it, if any.
    pub fn plan_of(
        &self,
        name: &str,
        id: &str,
        who: &Authority,
    ) -> Result<(Plan, Option<Job>), ProvisionError> {
        self.instance(name, who)?;
        let plan = self
            .db
            .plan(id)?
            .filter(|p| p.instance == name)
            .ok_or_else(|| ProvisionError::NotFound(format!("no plan {id} of `{name}`")))?;
        Ok((plan, self.db.job_of_plan(id)?))
    }

    /// Applies a reviewed plan: refused if stale, conflicting (without
    /// `force`) or touching an immutable field (without `recreate`); held
    /// for approval where the cluster needs one; otherwise queued and waited
    /// on for up to `wait`.
    pub async fn apply(
        self: &Arc<Self>,
        name: &str,
        id: &str,
        options: ApplyOptions,
        who: &Authority,
        wait: Duration,
    ) -> Result<Job, ProvisionError> {
        let (instance, _) = self.get_instance(name)?;
        require(who, &instance.project, Role::Operator, "apply provisions")?;
        let (mut plan, _) = self.plan_of(name, id, who)?;
        if plan.state != "planned" {
            return Err(ProvisionError::conflict(
                "plan-used",
                format!("plan {id} is {}; make a new plan", plan.state),
                json!({}),
            ));
        }
        self.check_applicable(&instance, &plan, &options).await?;
        let needs_approval = self.config.approval_clusters.contains(&instance.cluster);
        let mut job = Job {
            id: ids::new_id(),
            name: name.into(),
            kind: "apply".into(),
            plan_id: id.into(),
            options,
            state: "queued".into(),
            done: Vec::new(),
            progress: Vec::new(),
            result: Value::Null,
            created_ms: unix_millis(),
            updated_ms: unix_millis(),
        };
        if needs_approval {
            let gate = self.registry.gate().approvals();
            if !gate
                .has(APPROVAL_KIND, id, ApprovalState::Approved)
                .map_err(|e| ProvisionError::Failed(e.to_string()))?
            {
                job.state = "awaiting-approval".into();
                let detail = json!({ "instance": name, "plan": id, "summary": plan.summary });
                let approval = self.request_approval(
                    APPROVAL_KIND,
                    id,
                    &instance,
                    who,
                    "apply a plan",
                    detail,
                )?;
                plan.approval = Some(approval.id);
            }
        }
        self.db.create_job(&job)?;
        plan.state = if needs_approval && job.state == "awaiting-approval" {
            "awaiting-approval".into()
        } else {
            "applying".into()
        };
        self.db.save_plan(&plan)?;
        let detail = json!({ "name": name, "plan": id, "job": job.id, "force": job.options.force,
            "recreate": job.options.recreate });
        self.registry
            .audit_change(who, "provision.apply", name, detail)
            .await;
        self.wake.notify_one();
        self.wait_job(&job.id, wait).await
    }

    /// Destroys an instance's set in reverse wave order, waiting (bounded)
    /// for Namespace termination.
    pub async fn destroy(
        self: &Arc<Self>,
        name: &str,
        who: &Authority,
        wait: Duration,
    ) -> Result<Job, ProvisionError> {
        let (instance, _) = self.get_instance(name)?;
        require(who, &instance.project, Role::Admin, "destroy provisions")?;
        let mut job = Job {
            id: ids::new_id(),
            name: name.into(),
            kind: "destroy".into(),
            plan_id: String::new(),
            options: ApplyOptions::default(),
            state: "queued".into(),
            done: Vec::new(),
            progress: Vec::new(),
            result: Value::Null,
            created_ms: unix_millis(),
            updated_ms: unix_millis(),
        };
        if self.config.approval_clusters.contains(&instance.cluster) {
            let detail = json!({ "instance": name, "job": job.id });
            let approval = self.request_approval(
                DESTROY_APPROVAL_KIND,
                &job.id,
                &instance,
                who,
                "destroy an instance",
                detail,
            )?;
            job.state = "awaiting-approval".into();
            job.result = json!({ "approval": approval.id });
        }
        self.db.create_job(&job)?;
        self.registry
            .audit_change(
                who,
                "provision.destroy",
                name,
                json!({ "name": name, "job": job.id }),
            )
            .await;
        self.wake.notify_one();
        self.wait_job(&job.id, wait).await
    }

    /// Asks the shared gate for a project admin's approval (not the
    /// requester's) of `what` on the instance's cluster.
    fn request_approval(
        &self,
        kind: &str,
        subject: &str,
        instance: &Instance,
        who: &Authority,
        what: &str,
        detail: Value,
    ) -> Result<Approval, ProvisionError> {
        self.registry
            .gate()
            .approvals()
            .request(NewApproval {
                kind: kind.into(),
                subject: subject.into(),
                project: instance.project.clone(),
                requested_by: who.actor.clone(),
                approver_role: Role::Admin,
                approver_scope: ApproverScope::Project,
                required: self.config.approvals_required,
                reasons: vec![format!(
                    "cluster `{}` requires an approval to {what}",
                    instance.cluster
                )],
                detail,
            })
            .map_err(|e| ProvisionError::Failed(e.to_string()))
    }

    async fn wait_job(&self, id: &str, wait: Duration) -> Result<Job, ProvisionError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let job = self
                .db
                .job(id)?
                .ok_or_else(|| ProvisionError::NotFound(format!("no job {id}")))?;
            if job.finished()
                || job.state == "awaiting-approval"
                || tokio::time::Instant::now() >= until
            {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Access to the instance's cluster under the active provisioner
    /// version's grants.
    async fn granted(&self, i: &Instance) -> Result<(Granted, String, String), ProvisionError> {
        let slot = self.registry.get_slot(&i.plugin)?;
        let p = slot.active().ok_or_else(|| {
            ProvisionError::NotFound(format!("plugin `{}` has no loaded version", i.plugin))
        })?;
        let env = self.registry.runtime().env();
        let (client, timeout) = env
            .kube
            .client(&i.cluster)
            .await
            .map_err(ProvisionError::Failed)?;
        let g = Granted::new(
            &i.cluster,
            client,
            timeout,
            p.policies().clone(),
            env.audit.clone(),
            &i.name,
            &i.plugin,
            &p.manifest.version,
            self.kinds.clone(),
        );
        Ok((g, p.manifest.version.clone(), p.digest.to_string()))
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The project of a new instance: as named, or the caller's only project.
fn project_of(req: &NewInstance, who: &Authority) -> Result<String, ProvisionError> {
    if let Some(p) = &req.project {
        return Ok(p.clone());
    }
    let mut mine = who.projects.keys();
    match (mine.next(), mine.next()) {
        (Some(p), None) => Ok(p.clone()),
        _ => Err(ProvisionError::Invalid(
            "the token has a role in no single project: name the project".into(),
        )),
    }
}

fn require(who: &Authority, project: &str, role: Role, what: &str) -> Result<(), ProvisionError> {
    if who.role_in(project).is_some_and(|r| r >= role) {
        return Ok(());
    }
    Err(ProvisionError::Forbidden(format!(
        "{}: to {what} in project `{project}` you need the `{role}` role there",
        who.actor
    )))
}

/// The engine's part in the shared gate: an approved plan's job is queued,
/// a rejected one's is closed.
struct Gatekeeper(Weak<Engine>);

impl ApprovalListener for Gatekeeper {
    fn decided(&self, approval: &Approval, _who: &Authority, _approve: bool, _comment: &str) {
        let destroy = approval.kind == DESTROY_APPROVAL_KIND;
        if !(destroy || approval.kind == APPROVAL_KIND) || approval.state == ApprovalState::Pending
        {
            return;
        }
        let Some(engine) = self.0.upgrade() else {
            return;
        };
        let result = (|| -> Result<(), ProvisionError> {
            let job = if destroy {
                engine.db.job(&approval.subject)?
            } else {
                engine.db.job_of_plan(&approval.subject)?
            };
            let Some(mut job) = job else {
                return Ok(());
            };
            if job.state != "awaiting-approval" {
                return Ok(());
            }
            let mut plan = match destroy {
                true => None,
                false => engine.db.plan(&approval.subject)?,
            };
            if approval.state == ApprovalState::Approved {
                job.state = "queued".into();
                if let Some(p) = plan.as_mut() {
                    p.state = "applying".into();
                }
            } else {
                job.state = "rejected".into();
                job.result = json!({ "error": "rejected", "message": format!("approval {} was rejected", approval.id) });
                if let Some(p) = plan.as_mut() {
                    p.state = "rejected".into();
                }
            }
            engine.db.save_job(&job)?;
            if let Some(p) = plan {
                engine.db.save_plan(&p)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(approval = %approval.id, "provision approval: {e}");
        }
        engine.wake.notify_one();
    }
}
