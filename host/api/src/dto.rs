//! JSON shapes of role calls and their results, and their conversion to and
//! from the WIT types. Maps here become WIT key-value lists (sorted by key).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::runtime::bindings::{
    alert_handler as ah, deploy_step as ds, metrics_source as ms, provisioner as pv,
};

type Map = BTreeMap<String, String>;

fn kv(map: Map) -> Vec<(String, String)> {
    map.into_iter().collect()
}

fn map(kv: Vec<(String, String)>) -> Map {
    kv.into_iter().collect()
}

/// JSON text from a plugin, parsed if it is JSON, kept as a string otherwise.
fn json_or_string(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Body of an invoke call on a provisioner.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// `plan` (default), `apply` or `destroy`.
    #[serde(default = "default_plan")]
    pub action: String,
    /// The spec, any JSON value; the plugin documents its shape.
    #[serde(default)]
    pub spec: Value,
    /// For apply and destroy: persist nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_plan() -> String {
    "plan".into()
}

/// Body of an invoke call on a deploy step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// `run` (default) or `rollback`.
    #[serde(default = "default_run")]
    pub action: String,
    /// Where the step runs; defaults suit an ad-hoc call.
    #[serde(default)]
    pub context: StepContext,
    /// Parameters, any JSON value; the step documents its shape.
    #[serde(default)]
    pub params: Value,
}

fn default_run() -> String {
    "run".into()
}

/// Pipeline context of a step call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StepContext {
    /// Pipeline name.
    pub pipeline: String,
    /// Run id.
    pub run_id: String,
    /// Step name.
    pub step: String,
    /// Target environment.
    pub environment: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Outputs of earlier steps.
    pub inputs: Map,
}

impl Default for StepContext {
    fn default() -> Self {
        StepContext {
            pipeline: "adhoc".into(),
            run_id: String::new(),
            step: String::new(),
            environment: "default".into(),
            attempt: 1,
            inputs: Map::new(),
        }
    }
}

impl StepContext {
    /// The WIT context; an empty run id or step name gets a default.
    pub fn into_wit(self, invocation_hint: &str, plugin: &str) -> ds::Context {
        ds::Context {
            pipeline: self.pipeline,
            run_id: if self.run_id.is_empty() {
                invocation_hint.to_string()
            } else {
                self.run_id
            },
            step: if self.step.is_empty() {
                plugin.to_string()
            } else {
                self.step
            },
            environment: self.environment,
            attempt: self.attempt.max(1),
            inputs: kv(self.inputs),
        }
    }
}

/// An Alertmanager webhook body (payload version 4).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertGroup {
    /// Payload version.
    #[serde(default)]
    pub version: String,
    /// Group key.
    #[serde(default)]
    pub group_key: String,
    /// Alerts left out (the u32 range, documented as a 64-bit integer: see
    /// the alerts engine's `Webhook`).
    #[serde(default)]
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    pub truncated_alerts: u32,
    /// `firing` or `resolved`.
    pub status: String,
    /// Receiver name.
    #[serde(default)]
    pub receiver: String,
    /// Grouping labels.
    #[serde(default)]
    pub group_labels: Map,
    /// Labels common to all alerts.
    #[serde(default)]
    pub common_labels: Map,
    /// Annotations common to all alerts.
    #[serde(default)]
    pub common_annotations: Map,
    /// Alertmanager's URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// One alert of a webhook body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels.
    #[serde(default)]
    pub labels: Map,
    /// Annotations.
    #[serde(default)]
    pub annotations: Map,
    /// Start time.
    #[serde(default)]
    pub starts_at: String,
    /// End time.
    #[serde(default)]
    pub ends_at: String,
    /// Source link.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Fingerprint.
    #[serde(default)]
    pub fingerprint: String,
}

impl From<AlertGroup> for ah::AlertGroup {
    fn from(g: AlertGroup) -> Self {
        ah::AlertGroup {
            version: g.version,
            group_key: g.group_key,
            truncated_alerts: g.truncated_alerts,
            status: g.status,
            receiver: g.receiver,
            group_labels: kv(g.group_labels),
            common_labels: kv(g.common_labels),
            common_annotations: kv(g.common_annotations),
            external_url: g.external_url,
            alerts: g
                .alerts
                .into_iter()
                .map(|a| ah::Alert {
                    status: a.status,
                    labels: kv(a.labels),
                    annotations: kv(a.annotations),
                    starts_at: a.starts_at,
                    ends_at: a.ends_at,
                    generator_url: a.generator_url,
                    fingerprint: a.fingerprint,
                })
                .collect(),
        }
    }
}

/// A provisioner's plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct Plan {
    /// Desired objects, sorted by wave.
    pub objects: Vec<DesiredObject>,
    /// Labels put on every object.
    pub owner_labels: Map,
    /// Notes for the caller.
    pub notes: Vec<String>,
}

/// One desired object.
#[derive(Debug, Serialize, ToSchema)]
pub struct DesiredObject {
    /// API version.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Apply order.
    pub wave: u32,
    /// The object.
    pub manifest: Value,
}

impl From<pv::DesiredState> for Plan {
    fn from(p: pv::DesiredState) -> Self {
        let mut objects: Vec<DesiredObject> = p
            .objects
            .into_iter()
            .map(|o| DesiredObject {
                api_version: o.api_version,
                kind: o.kind,
                namespace: o.namespace,
                name: o.name,
                wave: o.wave,
                manifest: json_or_string(o.manifest),
            })
            .collect();
        objects.sort_by_key(|o| o.wave);
        Plan {
            objects,
            owner_labels: map(p.owner_labels),
            notes: p.notes,
        }
    }
}

/// What apply or destroy did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    /// Objects acted on, as `apiVersion/kind namespace/name`.
    pub objects: Vec<ObjectRef>,
    /// Whether nothing was persisted.
    pub dry_run: bool,
    /// Notes.
    pub notes: Vec<String>,
}

/// A reference to an object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectRef {
    /// API version.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl From<pv::Report> for Report {
    fn from(r: pv::Report) -> Self {
        Report {
            objects: r
                .objects
                .into_iter()
                .map(|o| ObjectRef {
                    api_version: o.api_version,
                    kind: o.kind,
                    namespace: o.namespace,
                    name: o.name,
                })
                .collect(),
            dry_run: r.dry_run,
            notes: r.notes,
        }
    }
}

/// A deploy step's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepResult {
    /// `succeeded`, `failed` or `retry`.
    pub outcome: &'static str,
    /// With `retry`: call again after this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Summary.
    pub message: String,
    /// Named outputs.
    pub outputs: Map,
}

impl From<ds::StepResult> for StepResult {
    fn from(r: ds::StepResult) -> Self {
        let (outcome, retry_after_ms) = match r.outcome {
            ds::Outcome::Succeeded => ("succeeded", None),
            ds::Outcome::Failed => ("failed", None),
            ds::Outcome::RetryAfter(ms) => ("retry", Some(ms)),
        };
        StepResult {
            outcome,
            retry_after_ms,
            message: r.message,
            outputs: map(r.outputs),
        }
    }
}

/// A metric family.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricFamily {
    /// Name.
    pub name: String,
    /// Help text.
    pub help: String,
    /// `counter`, `gauge` or `untyped`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Samples.
    pub samples: Vec<Sample>,
}

/// A sample.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sample {
    /// Labels.
    pub labels: Map,
    /// Value.
    pub value: f64,
}

impl From<ms::MetricFamily> for MetricFamily {
    fn from(f: ms::MetricFamily) -> Self {
        MetricFamily {
            name: f.name,
            help: f.help,
            kind: match f.kind {
                ms::MetricType::Counter => "counter",
                ms::MetricType::Gauge => "gauge",
                ms::MetricType::Untyped => "untyped",
            },
            samples: f
                .samples
                .into_iter()
                .map(|s| Sample {
                    labels: map(s.labels),
                    value: s.value,
                })
                .collect(),
        }
    }
}

/// An action an alert handler asks for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Send a notification.
    Notify {
        /// Channel.
        channel: String,
        /// `slack`, `dingtalk`, `wecom` or `text`.
        format: String,
        /// Message body in that format.
        body: Value,
    },
    /// Start a pipeline.
    RunPipeline {
        /// Pipeline.
        pipeline: String,
        /// Parameters.
        params: Value,
    },
    /// A Kubernetes operation.
    Kube {
        /// Verb.
        verb: String,
        /// API version.
        api_version: String,
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Body.
        body: Value,
    },
    /// A silence.
    Silence {
        /// Equality matchers.
        matchers: Map,
        /// Seconds.
        duration_secs: u64,
        /// Why.
        comment: String,
    },
}

impl From<ah::Action> for Action {
    fn from(a: ah::Action) -> Self {
        match a {
            ah::Action::Notify(n) => Action::Notify {
                channel: n.channel,
                format: n.format,
                body: json_or_string(n.body),
            },
            ah::Action::RunPipeline(r) => Action::RunPipeline {
                pipeline: r.pipeline,
                params: json_or_string(r.params),
            },
            ah::Action::Kube(k) => Action::Kube {
                verb: k.verb,
                api_version: k.api_version,
                kind: k.kind,
                namespace: k.namespace,
                name: k.name,
                body: if k.body.is_empty() {
                    Value::Null
                } else {
                    json_or_string(k.body)
                },
            },
            ah::Action::Silence(s) => Action::Silence {
                matchers: map(s.matchers),
                duration_secs: s.duration_secs,
                comment: s.comment,
            },
        }
    }
}
