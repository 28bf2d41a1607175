//! A pipeline step: a deploy-step plugin call or an approval gate, with its
//! params, `needs`, `if`, timeout, retries, environment and failure policy.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One step of a pipeline. Exactly one of `plugin` and `approval` is set
/// (checked by validation, which names the step when neither or both are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id; expressions read this step as `steps.<id>`.
    pub id: String,
    /// The deploy-step plugin to call: `name` or `name@version`.
    #[serde(default)]
    pub plugin: Option<PluginRef>,
    /// Makes this step an approval gate instead of a plugin call.
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    /// Params passed to the plugin as JSON; strings may hold `${{ expr }}`.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Steps that must finish first (the DAG edges).
    #[serde(default)]
    pub needs: Vec<String>,
    /// A CEL condition; when false the step is skipped.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    /// Bound on one attempt, including its `retry-after` waits, e.g. `10m`.
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// Retries of failed attempts.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// The environment this step deploys into (it takes that lock).
    #[serde(default)]
    pub environment: Option<String>,
    /// What the run does when this step fails.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Names of the outputs this step returns, readable by later steps.
    #[serde(default)]
    pub outputs: Vec<String>,
}

impl Step {
    /// The outputs later steps may read: the declared ones, or for an
    /// approval step the ones the engine fills in (`approved_by`, `comments`).
    pub fn output_names(&self) -> Vec<&str> {
        if self.approval.is_some() {
            vec!["approved_by", "comments"]
        } else {
            self.outputs.iter().map(String::as_str).collect()
        }
    }

    /// The retry policy, or "no retries".
    pub fn retry_policy(&self) -> Retries {
        self.retries.clone().unwrap_or_default()
    }
}

/// A reference to a plugin: `name` or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Pinned version; `None` means the active version.
    pub version: Option<String>,
}

impl TryFrom<String> for PluginRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        if name.is_empty() || version.as_deref() == Some("") {
            return Err(format!("plugin {s:?}: expected `name` or `name@version`"));
        }
        Ok(Self {
            name: name.to_string(),
            version,
        })
    }
}

impl From<PluginRef> for String {
    fn from(p: PluginRef) -> String {
        p.to_string()
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A duration as written (`"10m"`, `"1h 30m"`, `"500ms"`), kept as text so
/// validation can report a bad one with its step and field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl DurationText {
    /// The duration in milliseconds, or why the text is not a duration.
    pub fn ms(&self) -> Result<u64, String> {
        let d = humantime::parse_duration(self.0.trim()).map_err(|e| {
            format!(
                "{:?} is not a duration like \"30s\" or \"10m\": {e}",
                self.0
            )
        })?;
        let ms = u64::try_from(d.as_millis()).map_err(|_| format!("{:?} is too long", self.0))?;
        if ms == 0 {
            return Err(format!("{:?} must be longer than zero", self.0));
        }
        Ok(ms)
    }
}

/// Why a step attempt failed. Plugin errors map from the WIT `error` variants;
/// the engine adds `timeout`, `trap`, `expression`, `output` and `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Retrying later may succeed (WIT `retryable`).
    Transient,
    /// The attempt ran past its timeout.
    Timeout,
    /// Retrying as-is will not help (WIT `failed`).
    Failed,
    /// The params were malformed (WIT `invalid-input`).
    InvalidInput,
    /// The plugin lacks a grant (WIT `denied`).
    Denied,
    /// Something the step needs does not exist (WIT `not-found`).
    NotFound,
    /// The plugin trapped or ran out of fuel or memory.
    Trap,
    /// A template or `if` expression failed to evaluate.
    Expression,
    /// The outputs were oversize or missing a declared name.
    Output,
    /// An approver rejected the gate.
    Rejected,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// Retries of failed attempts: how many, how long between, on which errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt (so `count + 1` attempts at most).
    pub count: u32,
    /// Delay between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Error kinds that are retried; default `transient` and `timeout`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<ErrorKind>,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            count: 0,
            backoff: Backoff::default(),
            on: default_retry_on(),
        }
    }
}

fn default_retry_on() -> Vec<ErrorKind> {
    vec![ErrorKind::Transient, ErrorKind::Timeout]
}

impl Retries {
    /// Whether a failure of `kind` gets another attempt, when `retries_used`
    /// retries were already spent (re-runs after a crash are not counted).
    pub fn allows(&self, retries_used: u32, kind: ErrorKind) -> bool {
        retries_used < self.count && self.on.contains(&kind)
    }
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First delay; default `1s`.
    #[serde(default = "default_initial")]
    pub initial: DurationText,
    /// Largest delay before jitter; default `5m`.
    #[serde(default = "default_max")]
    pub max: DurationText,
    /// Growth per retry; default 2.
    #[serde(default = "default_factor")]
    pub factor: f32,
    /// Adds a random 0–100% of the delay (backon's jitter), so that runs
    /// failing together do not retry together. Default on.
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

fn default_initial() -> DurationText {
    DurationText("1s".into())
}
fn default_max() -> DurationText {
    DurationText("5m".into())
}
fn default_factor() -> f32 {
    2.0
}
fn default_jitter() -> bool {
    true
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: default_initial(),
            max: default_max(),
            factor: default_factor(),
            jitter: default_jitter(),
        }
    }
}

impl Backoff {
    /// Delay in ms before retry number `retry` (1 for the first retry).
    ///
    /// Computed with backon's `ExponentialBuilder`; the jitter comes from a
    /// generator seeded with `seed` (the machine derives it from the run and
    /// step ids), so the same retry of the same step always waits the same
    /// time: replaying the journal after a crash gives the same timers.
    pub fn delay_ms(&self, retry: u32, seed: u64) -> u64 {
        let initial = self.initial.ms().unwrap_or(1_000);
        let max = self.max.ms().unwrap_or(300_000).max(initial);
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(initial))
            .with_max_delay(Duration::from_millis(max))
            .with_factor(self.factor.max(1.0))
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter().with_jitter_seed(seed);
        }
        let n = usize::try_from(retry.max(1) - 1).unwrap_or(usize::MAX);
        let delay = builder.build().nth(n).unwrap_or(Duration::from_millis(max));
        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the run does when a step fails (after its retries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Start nothing new; let running steps finish; run `finally`.
    #[default]
    Stop,
    /// As `stop`, then roll back the completed steps in reverse order.
    Rollback,
    /// Carry on: dependents run as if the step had succeeded.
    Continue,
}

/// An approval gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Who may approve.
    pub approvers: Approvers,
    /// Distinct approvals needed; any one rejection fails the step.
    #[serde(default = "one")]
    pub required: u32,
    /// How long to wait before the gate fails as timed out.
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// Whether whoever started the run may approve it.
    #[serde(default)]
    pub allow_self: bool,
    /// Shown to approvers; may hold `${{ }}` templates.
    #[serde(default)]
    pub message: Option<String>,
}

fn one() -> u32 {
    1
}

/// Approvers: users holding `role` in `project` (default: the pipeline's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    /// The role an approver must hold.
    pub role: String,
    /// The project the role is held in; the pipeline's project when omitted.
    #[serde(default)]
    pub project: Option<String>,
}
