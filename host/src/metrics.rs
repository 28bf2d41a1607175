//! The server's own Prometheus metrics (via `prometheus-client`) and the
//! rendering of plugin-collected metric families next to them.

use std::fmt::Write;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runtime::bindings::metrics_source::{MetricFamily, MetricType};
use crate::runtime::{Accounting, Outcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    call: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    plugin: String,
    result: String,
}

/// All metrics the server records.
pub struct Metrics {
    registry: Registry,
    invocations: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<PluginLabels, Histogram>,
    peak_memory: Family<PluginLabels, Histogram>,
    fuel: Family<PluginLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    compile: Histogram,
    loaded: Gauge,
    concurrency: ConcurrencyMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverloadLabels {
    plugin: String,
    /// `plugin` (its own limit) or `server` (the global one).
    limit: String,
}

/// Per-plugin admission: calls in flight and calls refused at a limit.
#[derive(Default)]
struct ConcurrencyMetrics {
    in_flight: Family<PluginLabels, Gauge>,
    overloaded: Family<OverloadLabels, Counter>,
}

impl ConcurrencyMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugin_invocations_in_flight",
            "Invocations of a plugin running now (all versions)",
            self.in_flight.clone(),
        );
        registry.register(
            "plugin_invocations_overloaded",
            "Invocations refused at a concurrency limit, by which limit",
            self.overloaded.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `capstan` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("capstan");
        let invocations = Family::<CallLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<PluginLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.5, 14))
        });
        let peak_memory = Family::<PluginLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(65536.0, 4.0, 10))
        });
        let fuel = Family::<PluginLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let compile = Histogram::new(exponential_buckets(0.001, 2.5, 12));
        let loaded = Gauge::default();
        registry.register(
            "plugin_invocations",
            "Plugin invocations by outcome",
            invocations.clone(),
        );
        registry.register(
            "plugin_invocation_errors",
            "Failed invocations by error kind",
            errors.clone(),
        );
        registry.register(
            "plugin_invocation_duration_seconds",
            "Invocation latency, instantiation included",
            duration.clone(),
        );
        registry.register(
            "plugin_invocation_peak_memory_bytes",
            "Peak linear memory per invocation",
            peak_memory.clone(),
        );
        registry.register(
            "plugin_fuel_consumed",
            "Fuel consumed by invocations",
            fuel.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Plugin version loads by result",
            reloads.clone(),
        );
        registry.register(
            "plugin_compile_duration_seconds",
            "Time to compile or load a component",
            compile.clone(),
        );
        registry.register(
            "plugins_loaded",
            "Plugins with an active, loaded version",
            loaded.clone(),
        );
        let concurrency = ConcurrencyMetrics::default();
        concurrency.register(&mut registry);
        Metrics {
            concurrency,
            registry,
            invocations,
            errors,
            duration,
            peak_memory,
            fuel,
            reloads,
            compile,
            loaded,
        }
    }

    /// Adds the audit log's counters (records dropped on a full queue,
    /// database writes retried).
    pub fn register_audit(&mut self, stats: crate::capabilities::audit::AuditStats) {
        self.registry.register(
            "audit_records_dropped",
            "Audit records dropped because the writer's queue was full",
            stats.dropped,
        );
        self.registry.register(
            "audit_write_failures",
            "Audit batch writes the database refused (each is retried until stored)",
            stats.write_failures,
        );
    }

    /// Records one invocation.
    pub fn record_invocation(&self, plugin: &str, a: &Accounting) {
        let outcome = match a.outcome {
            Outcome::Ok => "ok",
            Outcome::Error(kind) => {
                self.errors
                    .get_or_create(&ErrorLabels {
                        plugin: plugin.into(),
                        kind: kind.into(),
                    })
                    .inc();
                "error"
            }
        };
        self.invocations
            .get_or_create(&CallLabels {
                plugin: plugin.into(),
                call: a.call.into(),
                outcome: outcome.into(),
            })
            .inc();
        let p = PluginLabels {
            plugin: plugin.into(),
        };
        self.duration
            .get_or_create(&p)
            .observe(a.duration.as_secs_f64());
        self.peak_memory
            .get_or_create(&p)
            .observe(a.peak_memory as f64);
        if a.fuel_used < u64::MAX / 2 {
            self.fuel.get_or_create(&p).inc_by(a.fuel_used);
        }
    }

    /// The gauge of `plugin`'s calls in flight; the same one for every call
    /// with this name.
    pub fn plugin_in_flight(&self, plugin: &str) -> Gauge {
        self.concurrency
            .in_flight
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .clone()
    }

    /// Counts a call refused at a concurrency limit (`plugin` or `server`).
    pub fn record_overloaded(&self, plugin: &str, limit: &str) {
        self.concurrency
            .overloaded
            .get_or_create(&OverloadLabels {
                plugin: plugin.into(),
                limit: limit.into(),
            })
            .inc();
    }

    /// Records a load of a plugin version (`ok` or `error`) and its compile time.
    pub fn record_reload(&self, plugin: &str, ok: bool, compile_secs: Option<f64>) {
        let result = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&ReloadLabels {
                plugin: plugin.into(),
                result: result.into(),
            })
            .inc();
        if let Some(s) = compile_secs {
            self.compile.observe(s);
        }
    }

    /// Sets how many plugins are loaded.
    pub fn set_loaded(&self, n: usize) {
        self.loaded.set(n as i64);
    }

    /// Renders the server's metrics followed by plugin families, in the
    /// OpenMetrics text format.
    pub fn render(&self, plugin_families: &[(String, Vec<MetricFamily>)]) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        let body = out.strip_suffix("# EOF\n").unwrap_or(&out).to_string();
        let mut out = body;
        for (plugin, families) in plugin_families {
            render_families(&mut out, plugin, families);
        }
        out.push_str("# EOF\n");
        out
    }
}

/// Plugin metric names are prefixed `capstan_plugin_<plugin>_` so that no
/// plugin can shadow the server's metrics or another plugin's.
fn render_families(out: &mut String, plugin: &str, families: &[MetricFamily]) {
    let prefix = format!("capstan_plugin_{}_", plugin.replace('-', "_"));
    for f in families {
        if !valid_metric_name(&f.name) {
            tracing::warn!(plugin, name = %f.name, "dropping metric family with an invalid name");
            continue;
        }
        let base = format!(
            "{prefix}{}",
            f.name.strip_suffix("_total").unwrap_or(&f.name)
        );
        let (ty, suffix) = match f.kind {
            MetricType::Counter => ("counter", "_total"),
            MetricType::Gauge => ("gauge", ""),
            MetricType::Untyped => ("unknown", ""),
        };
        let _ = writeln!(out, "# HELP {base} {}", escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {base} {ty}");
        for s in &f.samples {
            let labels: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| valid_label_name(k))
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(out, "{base}{suffix}{labels} {}", s.value);
        }
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::metrics_source::Sample;

    #[test]
    fn plugin_families_are_prefixed_and_escaped() {
        let m = Metrics::new();
        let fams = vec![
            MetricFamily {
                name: "queue_depth".into(),
                help: "jobs waiting".into(),
                kind: MetricType::Gauge,
                samples: vec![Sample {
                    labels: vec![("queue".into(), "a\"b".into())],
                    value: 42.0,
                }],
            },
            MetricFamily {
                name: "bad name".into(),
                help: String::new(),
                kind: MetricType::Gauge,
                samples: vec![],
            },
            MetricFamily {
                name: "runs_total".into(),
                help: "runs".into(),
                kind: MetricType::Counter,
                samples: vec![Sample {
                    labels: vec![],
                    value: 3.0,
                }],
            },
        ];
        let text = m.render(&[("demo-metrics".into(), fams)]);
        assert!(
            text.contains("capstan_plugin_demo_metrics_queue_depth{queue=\"a\\\"b\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE capstan_plugin_demo_metrics_runs counter\n"),
            "{text}"
        );
        assert!(
            text.contains("capstan_plugin_demo_metrics_runs_total 3\n"),
            "{text}"
        );
        assert!(!text.contains("bad name"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
