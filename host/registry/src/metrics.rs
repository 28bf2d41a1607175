//! The server's own Prometheus metrics (via `prometheus-client`) and the
//! rendering of plugin-collected metric families next to them.

use std::collections::HashSet;
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

    /// Adds an engine's metric (its name gets the `capstan_` prefix).
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
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
        let mut out = out.strip_suffix("# EOF\n").unwrap_or(&out).to_string();
        let mut taken = server_names();
        for (plugin, families) in plugin_families {
            render_families(&mut out, &mut taken, plugin, families);
        }
        out.push_str("# EOF\n");
        out
    }
}

/// The server's own families, as registered in [`Metrics::new`] (a test
/// keeps the two in step). Plugin families never take these names.
const SERVER_FAMILIES: &[&str] = &[
    "plugin_invocations",
    "plugin_invocation_errors",
    "plugin_invocation_duration_seconds",
    "plugin_invocation_peak_memory_bytes",
    "plugin_fuel_consumed",
    "plugin_reloads",
    "plugin_compile_duration_seconds",
    "plugins_loaded",
];

/// Every name the server's families use or may use: each family's name
/// with every sample suffix of the format.
fn server_names() -> HashSet<String> {
    SERVER_FAMILIES
        .iter()
        .flat_map(|family| {
            ["", "_total", "_created", "_bucket", "_sum", "_count"]
                .map(|s| format!("capstan_{family}{s}"))
        })
        .collect()
}

/// The family name of plugin metric `metric`:
/// `capstan_plugin_<plugin, each `-` as `__`>_<metric>`. The mapping is
/// injective: the encoded plugin name starts and ends with `[a-z0-9]` and
/// holds only even runs of `_`, and `metric` starts with a letter, so the
/// first run of `_` of odd length after the prefix is the separator.
pub fn plugin_family_name(plugin: &str, metric: &str) -> String {
    format!("capstan_plugin_{}_{metric}", plugin.replace('-', "__"))
}

/// A sample value as the exposition format spells it.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Appends a plugin's families. A family whose name is invalid, or would
/// repeat a name already rendered (the server's or this plugin's), is
/// dropped, as are counter samples that are NaN or negative, repeated label
/// names and repeated series: what is rendered always parses.
fn render_families(
    out: &mut String,
    taken: &mut HashSet<String>,
    plugin: &str,
    families: &[MetricFamily],
) {
    for f in families {
        if !valid_plugin_metric_name(&f.name) {
            tracing::warn!(plugin, name = %f.name, "dropping metric family with an invalid name");
            continue;
        }
        let (ty, suffix, metric) = match f.kind {
            MetricType::Counter => (
                "counter",
                "_total",
                f.name.strip_suffix("_total").unwrap_or(&f.name),
            ),
            MetricType::Gauge => ("gauge", "", f.name.as_str()),
            MetricType::Untyped => ("unknown", "", f.name.as_str()),
        };
        let base = plugin_family_name(plugin, metric);
        let mut names = vec![base.clone()];
        if !suffix.is_empty() {
            names.extend([format!("{base}{suffix}"), format!("{base}_created")]);
        }
        if names.iter().any(|n| taken.contains(n)) {
            tracing::warn!(plugin, name = %f.name, "dropping metric family whose name is already used");
            continue;
        }
        taken.extend(names);
        let _ = writeln!(out, "# HELP {base} {}", escape(&f.help));
        let _ = writeln!(out, "# TYPE {base} {ty}");
        let mut series = HashSet::new();
        for s in &f.samples {
            if ty == "counter" && (s.value.is_nan() || s.value < 0.0) {
                tracing::warn!(plugin, name = %f.name, value = s.value, "dropping a counter sample that is NaN or negative");
                continue;
            }
            let mut seen = HashSet::new();
            let labels: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| valid_label_name(k) && seen.insert(k.as_str()))
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            if series.insert(labels.clone()) {
                let _ = writeln!(out, "{base}{suffix}{labels} {}", format_value(s.value));
            }
        }
    }
}

/// A plugin's metric name: a letter, then letters, digits, `_` and `:`.
fn valid_plugin_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

/// Escapes label values and help text (OpenMetrics: `\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
            text.contains("capstan_plugin_demo__metrics_queue_depth{queue=\"a\\\"b\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE capstan_plugin_demo__metrics_runs counter\n"),
            "{text}"
        );
        assert!(
            text.contains("capstan_plugin_demo__metrics_runs_total 3\n"),
            "{text}"
        );
        assert!(!text.contains("bad name"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    fn gauge(name: &str, values: &[f64]) -> MetricFamily {
        MetricFamily {
            name: name.into(),
            help: "h".into(),
            kind: MetricType::Gauge,
            samples: values
                .iter()
                .enumerate()
                .map(|(i, v)| Sample {
                    labels: vec![("i".into(), i.to_string())],
                    value: *v,
                })
                .collect(),
        }
    }

    #[test]
    fn special_values_are_spelled_as_the_format_says() {
        let m = Metrics::new();
        let mut counter = gauge("runs", &[f64::NAN, -1.0, 2.0, f64::INFINITY]);
        counter.kind = MetricType::Counter;
        let fams = vec![
            gauge("v", &[f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.5]),
            counter,
        ];
        let text = m.render(&[("p".into(), fams)]);
        for line in [
            "capstan_plugin_p_v{i=\"0\"} +Inf\n",
            "capstan_plugin_p_v{i=\"1\"} -Inf\n",
            "capstan_plugin_p_v{i=\"2\"} NaN\n",
            "capstan_plugin_p_v{i=\"3\"} 0.5\n",
            "capstan_plugin_p_runs_total{i=\"2\"} 2\n",
            "capstan_plugin_p_runs_total{i=\"3\"} +Inf\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("inf\n") && !text.contains("i=\"0\"} NaN"),
            "{text}"
        );
        assert!(
            !text.contains("runs_total{i=\"1\"}"),
            "negative counter dropped"
        );
    }

    #[test]
    fn plugin_family_names_are_injective() {
        // Every plugin name over {a, b, -} up to 5 characters, every metric
        // name over {a, b, _} up to 4 (starting with a letter).
        fn words(alphabet: &[char], max: usize) -> Vec<String> {
            let mut all = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let plugins: Vec<String> = words(&['a', 'b', '-'], 5)
            .into_iter()
            .filter(|p| crate::manifest::validate_name(p).is_ok())
            .collect();
        let metrics: Vec<String> = words(&['a', 'b', '_'], 4)
            .into_iter()
            .filter(|m| valid_plugin_metric_name(m))
            .collect();
        let mut seen = std::collections::HashMap::new();
        for p in &plugins {
            for m in &metrics {
                let name = plugin_family_name(p, m);
                if let Some(other) = seen.insert(name.clone(), (p, m)) {
                    panic!("{name}: ({p}, {m}) and {other:?}");
                }
            }
        }
        assert!(seen.len() > 10_000, "{}", seen.len());
        assert_ne!(
            plugin_family_name("a", "b_x"),
            plugin_family_name("a-b", "x")
        );
    }

    #[test]
    fn no_rendered_name_repeats() {
        let m = Metrics::new();
        let mut runs = gauge("runs", &[1.0]);
        runs.kind = MetricType::Counter;
        let fams = |names: &[&str]| names.iter().map(|n| gauge(n, &[1.0])).collect::<Vec<_>>();
        let mut mine = fams(&["runs_total", "x", "x"]);
        mine.insert(0, runs);
        let text = m.render(&[
            ("a".into(), fams(&["b_x"])),
            ("a-b".into(), fams(&["x"])),
            // Would be the server's own `capstan_plugin_invocation_errors`.
            ("invocation".into(), fams(&["errors", "errors_total"])),
            ("mine".into(), mine),
        ]);
        let mut families = HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(
                families.insert(line.split(' ').nth(2).unwrap()),
                "{line} twice in {text}"
            );
        }
        assert!(text.contains("capstan_plugin_a_b_x{i=\"0\"} 1\n"), "{text}");
        assert!(
            text.contains("capstan_plugin_a__b_x{i=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("capstan_plugin_invocation_errors "),
            "{text}"
        );
        assert!(
            !text.contains("# TYPE capstan_plugin_invocation_errors gauge"),
            "{text}"
        );
        assert!(
            !text.contains("# TYPE capstan_plugin_mine_runs_total"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE capstan_plugin_mine_x ").count(), 1);
    }

    #[test]
    fn server_families_are_all_reserved() {
        let m = Metrics::new();
        let a = Accounting {
            invocation: "1".into(),
            version: "1.0.0".into(),
            call: "run",
            duration: std::time::Duration::from_millis(1),
            fuel_used: 10,
            peak_memory: 1 << 16,
            outcome: Outcome::Error("trap"),
            logs: Vec::new(),
            logs_dropped: 0,
        };
        m.record_invocation("p", &a);
        m.record_reload("p", true, Some(0.1));
        let text = m.render(&[]);
        let reserved = server_names();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        assert_eq!(families.len(), SERVER_FAMILIES.len(), "{text}");
        for f in families {
            assert!(reserved.contains(f), "{f} is not in SERVER_FAMILIES");
        }
    }

    /// The rendered text passes `promtool check metrics` (Debian's
    /// `prometheus` package, installed by tests/run.sh), when it is there.
    #[test]
    fn promtool_accepts_the_rendering() {
        use std::io::Write as _;
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("promtool not installed; skipped");
            return;
        };
        let m = Metrics::new();
        let mut runs = gauge("jobs", &[3.0, f64::INFINITY]);
        runs.kind = MetricType::Counter;
        // (No `"` in the help: OpenMetrics escapes it, the 0.0.4 text format
        // that promtool reads does not.)
        runs.help = "Jobs run\nso far \\o/".into();
        let text = m.render(&[
            ("a".into(), vec![gauge("b_x", &[1.0])]),
            (
                "a-b".into(),
                vec![
                    gauge("x", &[f64::INFINITY, f64::NEG_INFINITY, f64::NAN]),
                    runs,
                ],
            ),
        ]);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        // Lint findings (naming advice) are reported but are not parse errors.
        assert!(!report.contains("error while linting"), "{report}\n{text}");
        assert!(
            out.status.success() || !report.contains("parse"),
            "{report}\n{text}"
        );
    }
}
