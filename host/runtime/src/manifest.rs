//! Plugin manifests: the TOML file that names a plugin, its role, settings,
//! limits and grants. Parsed and validated once, when a version is loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::capabilities::Grants;

/// Why a manifest was refused. Every message names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not valid TOML or does not have the expected shape.
    #[error("manifest is not valid: {0}")]
    Parse(String),
    /// A field has a value outside its allowed range or format.
    #[error("manifest field `{field}` is invalid: {reason}")]
    Field {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The automation role a plugin plays; each role is one WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Computes desired state (world `provisioner-plugin`).
    Provisioner,
    /// One step of a release pipeline (world `deploy-step-plugin`).
    DeployStep,
    /// Collects metrics (world `metrics-source-plugin`).
    MetricsSource,
    /// Handles Alertmanager alert groups (world `alert-handler-plugin`).
    AlertHandler,
}

impl Role {
    /// Every role, in documentation order.
    pub const ALL: [Role; 4] = [
        Role::Provisioner,
        Role::DeployStep,
        Role::MetricsSource,
        Role::AlertHandler,
    ];

    /// The role's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provisioner => "provisioner",
            Role::DeployStep => "deploy-step",
            Role::MetricsSource => "metrics-source",
            Role::AlertHandler => "alert-handler",
        }
    }

    /// The WIT world a plugin of this role targets.
    pub fn world(self) -> &'static str {
        match self {
            Role::Provisioner => "capstan:plugin/provisioner-plugin@0.1.0",
            Role::DeployStep => "capstan:plugin/deploy-step-plugin@0.1.0",
            Role::MetricsSource => "capstan:plugin/metrics-source-plugin@0.1.0",
            Role::AlertHandler => "capstan:plugin/alert-handler-plugin@0.1.0",
        }
    }

    /// The interface the role's world exports.
    pub fn export(self) -> &'static str {
        match self {
            Role::Provisioner => "capstan:plugin/provisioner@0.1.0",
            Role::DeployStep => "capstan:plugin/deploy-step@0.1.0",
            Role::MetricsSource => "capstan:plugin/metrics-source@0.1.0",
            Role::AlertHandler => "capstan:plugin/alert-handler@0.1.0",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`; expected one of provisioner, deploy-step, metrics-source, alert-handler")
            })
    }
}

/// Per-invocation resource limits. Unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock deadline in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Fuel (roughly, Wasm instructions) per invocation; unlimited if unset.
    pub fuel: Option<u64>,
    /// Invocations of this plugin that may run at once (at least 1, at most
    /// the server's `max_concurrent`); the server's
    /// `max_concurrent_per_plugin` if unset.
    pub max_concurrent: Option<usize>,
}

/// A validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: lowercase letters, digits and `-`, 1-63 characters.
    pub name: String,
    /// Semantic version, e.g. `1.2.0`.
    pub version: String,
    /// Which role (WIT world) the component implements.
    pub role: Role,
    /// One line saying what the plugin does.
    #[serde(default)]
    pub description: String,
    /// The project that owns the plugin (default: the owner of its earlier
    /// versions, or `default`). Only its members may publish versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Path of the component, relative to the manifest (plugins directory only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Free-form settings, readable by the plugin through the `config` interface.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: BTreeMap<String, toml::Value>,
    /// Resource limits per invocation.
    #[serde(default)]
    pub limits: Limits,
    /// Capabilities the plugin may use. Everything not granted is denied.
    #[serde(default)]
    pub grants: Grants,
    /// When a metrics source runs (metrics-source role only); unset fields
    /// take the server's `[metrics]` defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SourceSchedule>,
}

/// When a metrics source runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SourceMode {
    /// On its own timer; `/metrics` serves the last good values.
    Schedule,
    /// During each scrape, within the scrape's timeout.
    Scrape,
}

/// `[metrics]` of a metrics source's manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSchedule {
    /// `schedule` (default) or `scrape`.
    pub mode: Option<SourceMode>,
    /// Time between runs in schedule mode, milliseconds (at least 100).
    pub interval_ms: Option<u64>,
    /// Longest a run may take, milliseconds (also capped by `limits.deadline_ms`).
    pub timeout_ms: Option<u64>,
}

/// Hard ceilings no manifest may exceed.
pub const MAX_MEMORY_MB: u64 = 4096;
/// Longest deadline a manifest may ask for.
pub const MAX_DEADLINE_MS: u64 = 10 * 60 * 1000;

impl Manifest {
    /// Parses and validates a manifest from TOML text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Serialises back to TOML (as stored in the database).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    /// Checks every field's format and range.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name(&self.name)?;
        validate_version(&self.version)?;
        if let Some(p) = &self.project {
            validate_name(p).map_err(|_| ManifestError::Field {
                field: "project",
                reason: format!(
                    "`{p}` must be a project name: 1-63 characters of a-z, 0-9 and `-`"
                ),
            })?;
        }
        let field = |field, reason: String| Err(ManifestError::Field { field, reason });
        if let Some(mb) = self.limits.memory_mb
            && !(1..=MAX_MEMORY_MB).contains(&mb)
        {
            return field(
                "limits.memory_mb",
                format!("{mb} is outside 1..={MAX_MEMORY_MB}"),
            );
        }
        if let Some(ms) = self.limits.deadline_ms
            && !(1..=MAX_DEADLINE_MS).contains(&ms)
        {
            return field(
                "limits.deadline_ms",
                format!("{ms} is outside 1..={MAX_DEADLINE_MS}"),
            );
        }
        if self.limits.fuel == Some(0) {
            return field("limits.fuel", "must be positive".into());
        }
        if self.limits.max_concurrent == Some(0) {
            return field(
                "limits.max_concurrent",
                "must be at least 1 (a plugin that may never run cannot be invoked)".into(),
            );
        }
        if let Some(m) = &self.metrics {
            if self.role != Role::MetricsSource {
                return field("metrics", "only a metrics-source has a schedule".into());
            }
            if m.interval_ms
                .is_some_and(|i| !(100..=MAX_DEADLINE_MS).contains(&i))
            {
                return field(
                    "metrics.interval_ms",
                    format!("must be within 100..={MAX_DEADLINE_MS}"),
                );
            }
            if m.timeout_ms
                .is_some_and(|t| !(1..=MAX_DEADLINE_MS).contains(&t))
            {
                return field(
                    "metrics.timeout_ms",
                    format!("must be within 1..={MAX_DEADLINE_MS}"),
                );
            }
        }
        self.grants
            .validate()
            .map_err(|reason| ManifestError::Field {
                field: "grants",
                reason,
            })?;
        Ok(())
    }

    /// Settings as strings: TOML strings verbatim, anything else as JSON text.
    pub fn settings_as_strings(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).unwrap_or_default(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}

/// Checks a plugin name: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Field {
            field: "name",
            reason: format!(
                "`{name}` must be 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
            ),
        })
    }
}

/// Checks a version: `MAJOR.MINOR.PATCH` with an optional `-pre` or `+build` suffix.
pub fn validate_version(version: &str) -> Result<(), ManifestError> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()));
    let suffix_ok = version[core.len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b));
    if numeric && suffix_ok && version.len() <= 64 {
        Ok(())
    } else {
        Err(ManifestError::Field {
            field: "version",
            reason: format!("`{version}` is not a semantic version like 1.2.3"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "render-deployment"
version = "1.0.0"
role = "deploy-step"
description = "renders a Deployment"
[settings]
registry = "registry.local"
replicas = 2
[limits]
memory_mb = 32
deadline_ms = 2000
"#;

    #[test]
    fn parses_a_complete_manifest() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.role, Role::DeployStep);
        assert_eq!(m.limits.memory_mb, Some(32));
        assert_eq!(
            m.settings_as_strings(),
            vec![
                ("registry".to_string(), "registry.local".to_string()),
                ("replicas".to_string(), "2".to_string())
            ]
        );
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn errors_name_the_field() {
        let bad_role = GOOD.replace("deploy-step", "deployer");
        let e = Manifest::parse(&bad_role).unwrap_err().to_string();
        assert!(e.contains("unknown variant `deployer`"), "{e}");

        let bad_name = GOOD.replace("render-deployment", "Render_Deployment");
        let e = Manifest::parse(&bad_name).unwrap_err().to_string();
        assert!(e.contains("`name`"), "{e}");

        let bad_version = GOOD.replace("1.0.0", "one");
        let e = Manifest::parse(&bad_version).unwrap_err().to_string();
        assert!(e.contains("`version`"), "{e}");

        let huge = GOOD.replace("memory_mb = 32", "memory_mb = 99999");
        let e = Manifest::parse(&huge).unwrap_err().to_string();
        assert!(e.contains("limits.memory_mb"), "{e}");

        let unknown = format!("{GOOD}\n[extra]\nx = 1\n");
        let e = Manifest::parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn metrics_schedules_belong_to_metrics_sources() {
        let source = GOOD.replace("deploy-step", "metrics-source");
        let m = Manifest::parse(&format!(
            "{source}\n[metrics]\nmode = \"scrape\"\ninterval_ms = 500\ntimeout_ms = 200\n"
        ))
        .unwrap();
        let schedule = m.metrics.clone().unwrap();
        assert_eq!(schedule.mode, Some(SourceMode::Scrape));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m, "round trip");
        let e = Manifest::parse(&format!("{GOOD}\n[metrics]\ninterval_ms = 500\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`metrics`") && e.contains("metrics-source"),
            "{e}"
        );
        let e = Manifest::parse(&format!("{source}\n[metrics]\ninterval_ms = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.interval_ms"), "{e}");
        let tcp = format!("{source}\n[grants.tcp]\nconnect = [\"redis:6379\", \"bad\"]\n");
        let e = Manifest::parse(&tcp).unwrap_err().to_string();
        assert!(e.contains("tcp") && e.contains("`bad`"), "{e}");
    }

    #[test]
    fn max_concurrent_is_at_least_one() {
        let m = Manifest::parse(&GOOD.replace("[limits]", "[limits]\nmax_concurrent = 3")).unwrap();
        assert_eq!(m.limits.max_concurrent, Some(3));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        let zero = GOOD.replace("[limits]", "[limits]\nmax_concurrent = 0");
        let e = Manifest::parse(&zero).unwrap_err().to_string();
        assert!(
            e.contains("limits.max_concurrent") && e.contains("at least 1"),
            "{e}"
        );
        let negative = GOOD.replace("[limits]", "[limits]\nmax_concurrent = -1");
        assert!(Manifest::parse(&negative).is_err());
    }

    #[test]
    fn versions() {
        for ok in ["0.1.0", "1.2.3-rc.1", "10.0.0+build.5"] {
            validate_version(ok).unwrap();
        }
        for bad in ["1.2", "1.2.x", "", "1..2", "1.2.3 "] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }
}
