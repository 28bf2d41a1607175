//! The approval gate, shared by every engine: a request names what is to be
//! approved, who may approve it (a role, globally or in a project) and how
//! many approvals it needs. Nobody approves their own request; one
//! rejection rejects. Every decision is stored before it is acted on.

use std::sync::Arc;

use crate::store::args;
use crate::store::sql::{Conn, DbError, Row, Value};
use serde::{Deserialize, Serialize};

use super::{Authority, Role};
use crate::store::Store;

/// Why a gate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No such approval.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not decide it.
    #[error("{0}")]
    Forbidden(String),
    /// It was already decided.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error("approvals storage: {0}")]
    Db(#[from] DbError),
}

/// Where approvers must hold their role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApproverScope {
    /// A global role.
    Global,
    /// A role in the request's project (a global role counts too).
    Project,
}

/// State of an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for decisions.
    Pending,
    /// Enough approvals.
    Approved,
    /// Someone rejected it.
    Rejected,
}

impl ApprovalState {
    fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> ApprovalState {
        match s {
            "approved" => ApprovalState::Approved,
            "rejected" => ApprovalState::Rejected,
            _ => ApprovalState::Pending,
        }
    }
}

/// A decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Vote {
    /// Who decided (`token:<name>`).
    pub voter: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// Why.
    pub comment: String,
    /// Unix seconds.
    pub at: i64,
}

/// What a request asks for.
#[derive(Debug, Clone)]
pub struct NewApproval {
    /// Engine-specific kind, e.g. `plugin-version`.
    pub kind: String,
    /// What is to be approved, e.g. `deployer@1.2.0`.
    pub subject: String,
    /// Owning project.
    pub project: String,
    /// Who asked (never allowed to approve it).
    pub requested_by: String,
    /// Role approvers need.
    pub approver_role: Role,
    /// Where they need it.
    pub approver_scope: ApproverScope,
    /// Approvals needed.
    pub required: u32,
    /// Why approval is needed, one line each.
    pub reasons: Vec<String>,
    /// Engine-specific detail (e.g. the grant diff).
    pub detail: serde_json::Value,
}

/// An approval with its decisions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Approval {
    /// Id.
    pub id: String,
    /// Engine-specific kind.
    pub kind: String,
    /// What is to be approved.
    pub subject: String,
    /// Owning project.
    pub project: String,
    /// Who asked.
    pub requested_by: String,
    /// Role approvers need.
    pub approver_role: Role,
    /// Where they need it.
    pub approver_scope: ApproverScope,
    /// Approvals needed.
    pub required: u32,
    /// Why approval is needed.
    pub reasons: Vec<String>,
    /// Engine-specific detail.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// State.
    pub state: ApprovalState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the final decision.
    pub decided_at: Option<i64>,
    /// Decisions so far.
    pub votes: Vec<Vote>,
}

/// The gate over the store.
pub struct Approvals {
    store: Arc<Store>,
}

use crate::store::unix_secs as now;

impl Approvals {
    /// The gate over `store`.
    pub fn new(store: Arc<Store>) -> Approvals {
        Approvals { store }
    }

    /// Files a request; returns it as stored.
    pub fn request(&self, new: NewApproval) -> Result<Approval, GateError> {
        let id = crate::ids::new_id();
        let sql = "INSERT INTO approvals (id, kind, subject, project, requested_by, approver_role, approver_scope,
                                    required, reasons, detail, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11)";
        let args = args![
            id,
            new.kind,
            new.subject,
            new.project,
            new.requested_by,
            new.approver_role.as_str(),
            scope_str(&new.approver_scope),
            new.required.max(1),
            serde_json::to_string(&new.reasons).unwrap_or_default(),
            new.detail.to_string(),
            now()
        ];
        self.store.with(|c| c.exec(sql, args))?;
        self.get(&id)
    }

    /// One approval.
    pub fn get(&self, id: &str) -> Result<Approval, GateError> {
        self.find("id = ?1", args![id])?
            .into_iter()
            .next()
            .ok_or_else(|| GateError::NotFound(format!("no approval {id}")))
    }

    /// Approvals of `kind`, optionally only those in `state`, newest first.
    pub fn list(
        &self,
        kind: Option<&str>,
        state: Option<ApprovalState>,
    ) -> Result<Vec<Approval>, GateError> {
        self.find(
            "(CAST(?1 AS TEXT) IS NULL OR kind = ?1) AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)",
            args![kind, state.map(|s| s.as_str())],
        )
    }

    /// Every approval of `subject`, newest first.
    pub fn of_subject(&self, kind: &str, subject: &str) -> Result<Vec<Approval>, GateError> {
        self.find("kind = ?1 AND subject = ?2", args![kind, subject])
    }

    /// Records a decision by `who`. Refuses self-approval, a role that is
    /// too low, a second vote, and decisions on a closed approval.
    pub fn decide(
        &self,
        id: &str,
        who: &Authority,
        approve: bool,
        comment: &str,
    ) -> Result<Approval, GateError> {
        let a = self.get(id)?;
        if a.state != ApprovalState::Pending {
            return Err(GateError::Conflict(format!(
                "approval {id} is already {}",
                a.state.as_str()
            )));
        }
        if who.actor == a.requested_by {
            return Err(GateError::Forbidden(format!(
                "{} requested approval {id} and cannot decide it",
                who.actor
            )));
        }
        let role = match a.approver_scope {
            ApproverScope::Global => who.global,
            ApproverScope::Project => who.role_in(&a.project),
        };
        if role.is_none_or(|r| r < a.approver_role) {
            let scope = match a.approver_scope {
                ApproverScope::Global => "global".to_string(),
                ApproverScope::Project => format!("project `{}`", a.project),
            };
            return Err(GateError::Forbidden(format!(
                "deciding approval {id} needs the {scope} `{}` role",
                a.approver_role
            )));
        }
        self.store
            .with(|c| c.tx(|tx| vote(tx, &a, who, approve, comment)))?;
        self.get(id)
    }

    fn find(&self, filter: &str, args: &[Value]) -> Result<Vec<Approval>, GateError> {
        Ok(self.store.with(|c| find(c, filter, args))?)
    }

    /// Whether `subject` has an approval in `state` (used to tell an
    /// approved version from a held one).
    pub fn has(&self, kind: &str, subject: &str, state: ApprovalState) -> Result<bool, GateError> {
        let row = self.store.with(|c| {
            c.row(
                "SELECT 1 FROM approvals WHERE kind = ?1 AND subject = ?2 AND state = ?3 LIMIT 1",
                args![kind, subject, state.as_str()],
            )
        })?;
        Ok(row.is_some())
    }
}

/// Records one vote and closes the approval when it is decided.
fn vote(
    tx: &mut Conn,
    a: &Approval,
    who: &Authority,
    approve: bool,
    comment: &str,
) -> Result<(), GateError> {
    let id = a.id.as_str();
    let decision = if approve { "approve" } else { "reject" };
    let inserted = tx.exec(
        "INSERT INTO approval_votes (approval_id, voter, decision, comment, at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        args![id, who.actor, decision, comment, now()],
    )?;
    if inserted == 0 {
        return Err(GateError::Conflict(format!(
            "{} already decided approval {id}",
            who.actor
        )));
    }
    let approvals: u32 = tx.value(
        "SELECT COUNT(*) FROM approval_votes WHERE approval_id = ?1 AND decision = 'approve'",
        args![id],
    )?;
    let state = if !approve {
        ApprovalState::Rejected
    } else if approvals >= a.required {
        ApprovalState::Approved
    } else {
        ApprovalState::Pending
    };
    if state != ApprovalState::Pending {
        tx.exec(
            "UPDATE approvals SET state = ?2, decided_at = ?3 WHERE id = ?1 AND state = 'pending'",
            args![id, state.as_str(), now()],
        )?;
    }
    Ok(())
}

fn find(c: &mut Conn, filter: &str, args: &[Value]) -> Result<Vec<Approval>, DbError> {
    // Ids are UUIDv7: they order approvals created in the same second.
    let rows = c.rows(
        &format!(
            "SELECT id, kind, subject, project, requested_by, approver_role, approver_scope, required,
                    reasons, detail, state, created_at, decided_at
             FROM approvals WHERE {filter} ORDER BY created_at DESC, id DESC LIMIT 500"
        ),
        args,
    )?;
    let mut out: Vec<Approval> = rows.iter().map(row_to_approval).collect::<Result<_, _>>()?;
    for a in &mut out {
        a.votes = c
            .rows(
                "SELECT voter, decision, comment, at FROM approval_votes WHERE approval_id = ?1 ORDER BY at, voter",
                args![a.id],
            )?
            .iter()
            .map(|r| {
                Ok(Vote {
                    voter: r.get(0)?,
                    decision: r.get(1)?,
                    comment: r.get(2)?,
                    at: r.get(3)?,
                })
            })
            .collect::<Result<_, DbError>>()?;
    }
    Ok(out)
}

fn row_to_approval(r: &Row) -> Result<Approval, DbError> {
    Ok(Approval {
        id: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        project: r.get(3)?,
        requested_by: r.get(4)?,
        approver_role: r.get::<String>(5)?.parse().unwrap_or(Role::Admin),
        approver_scope: if r.get::<String>(6)? == "project" {
            ApproverScope::Project
        } else {
            ApproverScope::Global
        },
        required: r.get(7)?,
        reasons: serde_json::from_str(&r.get::<String>(8)?).unwrap_or_default(),
        detail: serde_json::from_str(&r.get::<String>(9)?).unwrap_or(serde_json::Value::Null),
        state: ApprovalState::parse(&r.get::<String>(10)?),
        created_at: r.get(11)?,
        decided_at: r.get(12)?,
        votes: Vec::new(),
    })
}

fn scope_str(s: &ApproverScope) -> &'static str {
    match s {
        ApproverScope::Global => "global",
        ApproverScope::Project => "project",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(actor: &str, global: Option<Role>, project: Option<Role>) -> Authority {
        Authority {
            actor: actor.into(),
            global,
            projects: project
                .map(|r| [("team-a".to_string(), r)].into())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn no_self_approval_roles_and_counts() {
        for t in crate::store::testing::backends() {
            no_self_approval(t.store.clone());
        }
    }

    fn no_self_approval(store: Arc<Store>) {
        let b = store.backend();
        let gate = Approvals::new(store);
        let a = gate
            .request(NewApproval {
                kind: "test".into(),
                subject: "x".into(),
                project: "team-a".into(),
                requested_by: "token:op".into(),
                approver_role: Role::Admin,
                approver_scope: ApproverScope::Project,
                required: 2,
                reasons: vec!["because".into()],
                detail: serde_json::json!({"k": 1}),
            })
            .unwrap();
        assert_eq!(a.state, ApprovalState::Pending, "{b:?}");
        let own = who("token:op", Some(Role::Admin), None);
        assert!(
            matches!(
                gate.decide(&a.id, &own, true, ""),
                Err(GateError::Forbidden(_))
            ),
            "{b:?}"
        );
        let operator = who("token:o2", None, Some(Role::Operator));
        assert!(
            matches!(
                gate.decide(&a.id, &operator, true, ""),
                Err(GateError::Forbidden(_))
            ),
            "{b:?}"
        );
        let pa = who("token:pa", None, Some(Role::Admin));
        let a1 = gate.decide(&a.id, &pa, true, "ok").unwrap();
        assert_eq!(a1.state, ApprovalState::Pending, "{b:?}: needs two");
        assert!(
            matches!(
                gate.decide(&a.id, &pa, true, "again"),
                Err(GateError::Conflict(_))
            ),
            "{b:?}"
        );
        let ga = who("token:ga", Some(Role::Admin), None);
        let a2 = gate.decide(&a.id, &ga, true, "ok too").unwrap();
        assert_eq!(a2.state, ApprovalState::Approved, "{b:?}");
        assert_eq!(a2.votes.len(), 2, "{b:?}");
        assert!(
            gate.has("test", "x", ApprovalState::Approved).unwrap(),
            "{b:?}"
        );
        assert!(
            matches!(
                gate.decide(&a.id, &who("token:z", Some(Role::Admin), None), false, ""),
                Err(GateError::Conflict(_))
            ),
            "{b:?}"
        );
    }
}
