//! Grant ceilings: what an administrator allows to be granted at all, per
//! project (or per plugin of a project). A version whose grants stay inside
//! the ceiling of its project installs as uploaded; anything beyond it is
//! held until an administrator approves it.
//!
//! ```toml
//! [[ceilings]]
//! project = "team-a"                   # "*" applies to every project
//! plugin = "deployer"                  # optional: only this plugin
//! fs = [{ path = "/srv/templates", rw = false }]
//! secrets = ["team-a-*", "slack-webhook"]   # exact names, or a prefix ending in `*`
//! http = ["https://*.team-a.example.com"]  # allow patterns a grant may use
//! private_networks = ["10.20.0.0/16"]
//! kv_max_bytes = 1048576
//! [[ceilings.kube]]
//! cluster = "test"
//! namespaces = ["team-a", "team-a-staging"]
//! resources = ["apps/*", "ConfigMap", "Service"]
//! verbs = ["get", "list", "apply", "delete"]
//! cluster_scoped = ["Namespace"]
//! force = false
//! ```
//!
//! Every ceiling that matches a plugin (its project or `*`, and its name or
//! no name) adds to what it may be granted. With no ceiling at all, nothing
//! may be granted without approval.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capabilities::Grants;
use crate::capabilities::http::{network_covers, pattern_covers};
use crate::capabilities::kube::{KubeGrant, Verb};
use crate::capabilities::tcp::entry_covers;

/// One directory tree a grant may mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FsRoot {
    /// Absolute host directory; grants may mount it or anything below it.
    #[schema(value_type = String, pattern = "^/")]
    pub path: PathBuf,
    /// Whether read-write mounts are allowed (default read-only).
    #[serde(default)]
    pub rw: bool,
}

/// One Kubernetes scope a grant may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeCeiling {
    /// Cluster name.
    pub cluster: String,
    /// Namespaces; `*` for any.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `group/Kind` patterns (`group/*`, `*`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Verbs.
    #[serde(default)]
    pub verbs: Vec<Verb>,
    /// Cluster-scoped kinds, named one by one.
    #[serde(default)]
    pub cluster_scoped: Vec<String>,
    /// Whether grants may force server-side applies.
    #[serde(default)]
    pub force: bool,
}

/// What may be granted to the plugins of a project (or to one plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ceiling {
    /// Directory trees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsRoot>,
    /// Secret names, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// HTTP allow patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// Private CIDR ranges an HTTP grant may open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_networks: Vec<String>,
    /// Largest kv quota (`max_bytes`) a grant may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1099511627776_u64)]
    pub kv_max_bytes: Option<u64>,
    /// Kubernetes scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kube: Vec<KubeCeiling>,
    /// TCP `host:port` entries (names, addresses, ranges; port or `*`) a
    /// `[grants.tcp]` may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<String>,
}

/// A ceiling as stored and listed: who it applies to, and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopedCeiling {
    /// Project name, or `*` for every project.
    pub project: String,
    /// Only this plugin of the project, if set.
    #[serde(default)]
    pub plugin: Option<String>,
    /// What may be granted.
    pub ceiling: Ceiling,
}

/// A `[[ceilings]]` entry of the config file: [`ScopedCeiling`] written
/// flat (`project`, `plugin` and the fields of [`Ceiling`] side by side).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingEntry {
    project: String,
    #[serde(default)]
    plugin: Option<String>,
    #[serde(default)]
    fs: Vec<FsRoot>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    private_networks: Vec<String>,
    #[serde(default)]
    kv_max_bytes: Option<u64>,
    #[serde(default)]
    kube: Vec<KubeCeiling>,
    #[serde(default)]
    tcp: Vec<String>,
}

impl From<CeilingEntry> for ScopedCeiling {
    fn from(f: CeilingEntry) -> Self {
        ScopedCeiling {
            project: f.project,
            plugin: f.plugin,
            ceiling: Ceiling {
                fs: f.fs,
                secrets: f.secrets,
                http: f.http,
                private_networks: f.private_networks,
                kv_max_bytes: f.kv_max_bytes,
                kube: f.kube,
                tcp: f.tcp,
            },
        }
    }
}

impl ScopedCeiling {
    /// Whether this ceiling applies to `plugin` of `project`.
    pub fn applies_to(&self, project: &str, plugin: &str) -> bool {
        (self.project == "*" || self.project == project)
            && self.plugin.as_deref().is_none_or(|p| p == plugin)
    }
}

impl Ceiling {
    /// Checks the entries parse (paths absolute, patterns valid).
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.fs {
            if !r.path.is_absolute() || has_parent(&r.path) {
                return Err(format!(
                    "fs root `{}` must be absolute, without `..`",
                    r.path.display()
                ));
            }
        }
        for p in &self.http {
            pattern_covers(p, p)?;
        }
        if self.kv_max_bytes.is_some_and(|b| b > MAX_KV_BYTES) {
            return Err(format!("kv_max_bytes is over {MAX_KV_BYTES} (1 TiB)"));
        }
        for n in &self.private_networks {
            network_covers(n, n)?;
        }
        for t in &self.tcp {
            entry_covers(t, t)?;
        }
        for k in &self.kube {
            if k.cluster.is_empty() {
                return Err("kube ceiling needs a cluster".into());
            }
            if let Some(w) = k.cluster_scoped.iter().find(|c| c.contains('*')) {
                return Err(format!(
                    "kube cluster_scoped `{w}`: name cluster-scoped kinds one by one, without wildcards"
                ));
            }
        }
        Ok(())
    }
}

/// The largest `kv_max_bytes` a ceiling may name.
pub const MAX_KV_BYTES: u64 = 1 << 40;

fn has_parent(p: &Path) -> bool {
    p.components().any(|c| matches!(c, Component::ParentDir))
}

/// Everything in `grants` that the union of `ceilings` does not cover,
/// one human-readable line each. Empty: the grants stay inside.
pub fn exceeding(grants: &Grants, ceilings: &[&Ceiling]) -> Vec<String> {
    let mut out = Vec::new();
    for g in &grants.fs {
        let path = canonical(&g.host_path);
        let rw = g.mode == crate::capabilities::fs::Mode::Rw;
        let ok = ceilings.iter().flat_map(|c| &c.fs).any(|r| {
            path.starts_with(canonical(&r.path)) && (r.rw || !rw) && !has_parent(&g.host_path)
        });
        if !ok {
            let mode = if rw { "rw" } else { "ro" };
            out.push(format!(
                "fs: mounting `{}` ({mode}) is outside every allowed root",
                g.host_path.display()
            ));
        }
    }
    if let Some(s) = &grants.secrets {
        for name in &s.names {
            let ok = ceilings
                .iter()
                .flat_map(|c| &c.secrets)
                .any(|p| name_matches(p, name));
            if !ok {
                out.push(format!("secrets: `{name}` is not allowed"));
            }
        }
    }
    if let Some(h) = &grants.http {
        for p in &h.allow {
            let ok = ceilings
                .iter()
                .flat_map(|c| &c.http)
                .any(|o| pattern_covers(o, p).unwrap_or(false));
            if !ok {
                out.push(format!("http: origin `{p}` is not allowed"));
            }
        }
        for n in &h.private_networks {
            let ok = ceilings
                .iter()
                .flat_map(|c| &c.private_networks)
                .any(|o| network_covers(o, n).unwrap_or(false));
            if !ok {
                out.push(format!("http: private network `{n}` is not allowed"));
            }
        }
    }
    if let Some(t) = &grants.tcp {
        for e in &t.connect {
            let ok = ceilings
                .iter()
                .flat_map(|c| &c.tcp)
                .any(|o| entry_covers(o, e).unwrap_or(false));
            if !ok {
                out.push(format!("tcp: `{e}` is not allowed"));
            }
        }
        for n in &t.private_networks {
            let ok = ceilings
                .iter()
                .flat_map(|c| &c.private_networks)
                .any(|o| network_covers(o, n).unwrap_or(false));
            if !ok {
                out.push(format!("tcp: private network `{n}` is not allowed"));
            }
        }
    }
    if let Some(kv) = &grants.kv {
        let max = ceilings.iter().filter_map(|c| c.kv_max_bytes).max();
        if max.is_none_or(|m| kv.max_bytes > m) {
            let allowed = max.map_or("no kv".to_string(), |m| format!("{m} bytes"));
            out.push(format!(
                "kv: quota of {} bytes exceeds the ceiling ({allowed})",
                kv.max_bytes
            ));
        }
    }
    for k in &grants.kube {
        let ok = ceilings
            .iter()
            .flat_map(|c| &c.kube)
            .any(|c| kube_covers(c, k));
        if !ok {
            out.push(format!(
                "kube: {} is not inside any allowed scope",
                describe(k)
            ));
        }
    }
    out
}

/// A path made absolute and free of symlinks where it exists, so that a
/// symlink inside an allowed root cannot point a grant outside it.
fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn resource_covers(outer: &str, inner: &str) -> bool {
    if outer == "*" {
        return true;
    }
    let split = |r: &str| -> (String, String) {
        match r.rsplit_once('/') {
            Some((g, k)) => (g.to_string(), k.to_string()),
            None => (String::new(), r.to_string()),
        }
    };
    let ((og, ok), (ig, ik)) = (split(outer), split(inner));
    inner != "*" && og == ig && (ok == "*" || ok == ik)
}

fn kube_covers(c: &KubeCeiling, g: &KubeGrant) -> bool {
    let namespaces = g
        .namespaces
        .iter()
        .all(|n| c.namespaces.iter().any(|o| o == "*" || o == n));
    let resources = g
        .resources
        .iter()
        .all(|r| c.resources.iter().any(|o| resource_covers(o, r)));
    let verbs = g.verbs.iter().all(|v| c.verbs.contains(v));
    let scoped = g
        .cluster_scoped
        .iter()
        .all(|k| c.cluster_scoped.contains(k));
    c.cluster == g.cluster && namespaces && resources && verbs && scoped && (c.force || !g.force)
}

fn describe(k: &KubeGrant) -> String {
    let verbs: Vec<&str> = k.verbs.iter().map(|v| v.as_str()).collect();
    let mut s = format!(
        "cluster `{}` namespaces {:?} resources {:?} verbs {verbs:?}",
        k.cluster, k.namespaces, k.resources
    );
    if !k.cluster_scoped.is_empty() {
        s.push_str(&format!(" cluster_scoped {:?}", k.cluster_scoped));
    }
    if k.force {
        s.push_str(" force");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling(text: &str) -> ScopedCeiling {
        #[derive(Deserialize)]
        struct File {
            ceilings: Vec<CeilingEntry>,
        }
        toml::from_str::<File>(text)
            .unwrap()
            .ceilings
            .remove(0)
            .into()
    }

    fn grants(text: &str) -> Grants {
        toml::from_str(text).unwrap()
    }

    const TEAM_A: &str = r#"
        [[ceilings]]
        project = "team-a"
        secrets = ["team-a-*"]
        http = ["https://*.team-a.example", "http://10.1.2.3:*"]
        private_networks = ["10.0.0.0/8"]
        kv_max_bytes = 100
        [[ceilings.kube]]
        cluster = "test"
        namespaces = ["team-a"]
        resources = ["apps/*", "ConfigMap"]
        verbs = ["get", "apply"]
        cluster_scoped = ["Namespace"]
    "#;

    #[test]
    fn config_file_form_parses_and_refuses_unknown_fields() {
        let c = ceiling(TEAM_A);
        assert_eq!(c.project, "team-a");
        assert_eq!(c.plugin, None);
        assert!(c.applies_to("team-a", "anything"));
        assert!(!c.applies_to("team-b", "anything"));
        c.ceiling.validate().unwrap();
        let typo = TEAM_A.replace("kv_max_bytes", "kv_max");
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct File {
            ceilings: Vec<CeilingEntry>,
        }
        assert!(toml::from_str::<File>(&typo).is_err());
        let wild = Ceiling {
            kube: vec![KubeCeiling {
                cluster_scoped: vec!["*".into()],
                ..c.ceiling.kube[0].clone()
            }],
            ..Ceiling::default()
        };
        assert!(wild.validate().unwrap_err().contains("one by one"));
    }

    #[test]
    fn what_lies_inside_and_what_goes_beyond() {
        let c = ceiling(TEAM_A).ceiling;
        let inside = grants(
            r#"
            secrets = { names = ["team-a-db"] }
            kv = { max_bytes = 100, max_value_bytes = 10 }
            [http]
            allow = ["https://api.team-a.example", "https://*.x.team-a.example", "http://10.1.2.3:8080"]
            private_networks = ["10.1.0.0/16"]
            [[kube]]
            cluster = "test"
            namespaces = ["team-a"]
            resources = ["apps/Deployment", "ConfigMap"]
            verbs = ["apply"]
            cluster_scoped = ["Namespace"]
            "#,
        );
        assert_eq!(exceeding(&inside, &[&c]), Vec::<String>::new());
        for (text, needle) in [
            (r#"secrets = { names = ["team-b-db"] }"#, "team-b-db"),
            (r#"kv = { max_bytes = 101, max_value_bytes = 10 }"#, "kv"),
            (
                r#"http = { allow = ["https://team-a.example"] }"#,
                "team-a.example",
            ),
            (r#"http = { allow = ["https://*"] }"#, "https://*"),
            (
                r#"http = { allow = ["https://api.team-a.example:8443"] }"#,
                "8443",
            ),
            (
                r#"http = { allow = ["http://api.team-a.example"] }"#,
                "http://",
            ),
            (
                r#"http = { allow = ["https://a.team-a.example"], private_networks = ["192.168.0.0/16"] }"#,
                "192.168",
            ),
            (
                "[[kube]]\ncluster = \"test\"\nnamespaces = [\"team-a\"]\nresources = [\"*\"]\nverbs = [\"get\"]",
                "kube",
            ),
            (
                "[[kube]]\ncluster = \"test\"\nnamespaces = [\"team-a\"]\nresources = [\"ConfigMap\"]\nverbs = [\"delete\"]",
                "delete",
            ),
            (
                "[[kube]]\ncluster = \"prod\"\nnamespaces = [\"team-a\"]\nresources = [\"ConfigMap\"]\nverbs = [\"get\"]",
                "prod",
            ),
            (
                "[[kube]]\ncluster = \"test\"\nresources = [\"rbac.authorization.k8s.io/ClusterRoleBinding\"]\nverbs = [\"apply\"]\ncluster_scoped = [\"rbac.authorization.k8s.io/ClusterRoleBinding\"]",
                "ClusterRoleBinding",
            ),
            ("[[fs]]\nhost_path = \"/\"\nguest_path = \"/h\"", "`/`"),
        ] {
            let beyond = exceeding(&grants(text), &[&c]);
            assert_eq!(beyond.len(), 1, "{text}: {beyond:?}");
            assert!(beyond[0].contains(needle), "{text}: {beyond:?}");
        }
        // No ceiling at all: nothing may be granted.
        assert_eq!(exceeding(&inside, &[]).len(), 7);
        assert!(exceeding(&Grants::default(), &[]).is_empty());
    }

    #[test]
    fn tcp_grants_need_a_ceiling_that_covers_them() {
        let c = ceiling(
            r#"
            [[ceilings]]
            project = "team-a"
            tcp = ["10.0.0.0/8:3306", "redis.team-a.internal:*"]
            private_networks = ["10.20.0.0/16"]
        "#,
        );
        c.ceiling.validate().unwrap();
        let inside = grants(
            r#"
            [tcp]
            connect = ["10.1.2.3:3306", "redis.team-a.internal:6379"]
            private_networks = ["10.20.1.0/24"]
        "#,
        );
        assert!(exceeding(&inside, &[&c.ceiling]).is_empty());
        let outside = grants("[tcp]\nconnect = [\"10.1.2.3:22\", \"127.0.0.1:6379\"]\n");
        let over = exceeding(&outside, &[&c.ceiling]);
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(over[0].contains("tcp: `10.1.2.3:22`"), "{over:?}");
        assert_eq!(
            exceeding(&inside, &[]).len(),
            3,
            "no ceiling, nothing granted"
        );
        let bad = Ceiling {
            tcp: vec!["*.example.com:80".into()],
            ..Ceiling::default()
        };
        assert!(bad.validate().is_err());
    }
}
