//! `[[grants.kube]]` entries and the deny-first check against them.
//!
//! Cluster-scoped kinds are named one by one in `cluster_scoped`: a grant of
//! `resources = ["*"]` reaches every kind inside its namespaces, never a
//! ClusterRoleBinding unless that kind is named. `force` lets server-side
//! apply take over fields other field managers own.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A verb a grant may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    /// Read one object (also needed for `rollout-status`).
    Get,
    /// List objects.
    List,
    /// Server-side apply.
    Apply,
    /// Merge patch.
    Patch,
    /// Delete.
    Delete,
}

impl Verb {
    /// The verb as written in grants.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Apply => "apply",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// One `[[grants.kube]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeGrant {
    /// Cluster name from the server's `[[kube.clusters]]`.
    pub cluster: String,
    /// Namespaces; `*` for any.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `group/Kind` patterns; core kinds are written without a group.
    pub resources: Vec<String>,
    /// Allowed verbs.
    pub verbs: Vec<Verb>,
    /// Cluster-scoped kinds this entry may reach, each named as `group/Kind`
    /// (`Namespace`, `rbac.authorization.k8s.io/ClusterRole`); no wildcards.
    /// `false` is read as none; `true` is refused.
    #[serde(
        default,
        deserialize_with = "cluster_scoped_kinds",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_scoped: Vec<String>,
    /// Whether server-side apply may take over fields owned by other field
    /// managers. Without it, such a conflict is returned to the plugin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Reads `cluster_scoped` as a list of kinds; the old boolean form is
/// accepted as `false` (no kind) and refused as `true`.
fn cluster_scoped_kinds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Kinds;
    impl<'de> Visitor<'de> for Kinds {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of cluster-scoped kinds such as [\"Namespace\"]")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<String>, E> {
            if v {
                Err(E::custom(
                    "`cluster_scoped = true` is no longer accepted: name the cluster-scoped \
                     kinds one by one, e.g. cluster_scoped = [\"Namespace\", \
                     \"rbac.authorization.k8s.io/ClusterRole\"]",
                ))
            } else {
                Ok(Vec::new())
            }
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut kinds = Vec::new();
            while let Some(k) = seq.next_element::<String>()? {
                kinds.push(k);
            }
            Ok(kinds)
        }
    }
    d.deserialize_any(Kinds)
}

/// `group/Kind` as written in grants: the core group has no prefix.
pub(super) fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{group}/{kind}")
    }
}

impl KubeGrant {
    /// Checks the grant is well-formed.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.is_empty() {
            return Err("cluster must be named".into());
        }
        if self.verbs.is_empty() || self.resources.is_empty() {
            return Err(format!(
                "grant for cluster `{}` needs at least one verb and one resource",
                self.cluster
            ));
        }
        if self.namespaces.is_empty() && self.cluster_scoped.is_empty() {
            return Err(format!(
                "grant for cluster `{}` names no namespace and no cluster_scoped kind",
                self.cluster
            ));
        }
        for r in &self.resources {
            let kind = r.rsplit('/').next().unwrap_or_default();
            if kind.is_empty() || r.matches('/').count() > 1 {
                return Err(format!(
                    "resource `{r}` must be `Kind`, `group/Kind`, `group/*` or `*`"
                ));
            }
        }
        for k in &self.cluster_scoped {
            let (group, kind) = k.rsplit_once('/').unwrap_or(("", k));
            if k.contains('*') {
                return Err(format!(
                    "cluster_scoped: `{k}` is a wildcard; name each cluster-scoped kind, \
                     e.g. `Namespace` or `rbac.authorization.k8s.io/ClusterRole`"
                ));
            }
            if kind.is_empty() || group.contains('/') || (k.contains('/') && group.is_empty()) {
                return Err(format!(
                    "cluster_scoped: `{k}` must be `Kind` (core) or `group/Kind`"
                ));
            }
            if !self.matches_resource(group, kind) {
                return Err(format!(
                    "cluster_scoped: `{k}` is not among the grant's resources"
                ));
            }
        }
        Ok(())
    }

    fn matches_resource(&self, group: &str, kind: &str) -> bool {
        self.resources.iter().any(|r| {
            let (g, k) = r.rsplit_once('/').unwrap_or(("", r));
            r == "*" || (g == group && (k == "*" || k == kind))
        })
    }

    fn names_cluster_scoped(&self, group: &str, kind: &str) -> bool {
        let gk = group_kind(group, kind);
        self.cluster_scoped.contains(&gk)
    }
}

/// What a granted request may do beyond the verb itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Some covering entry allows a forced server-side apply.
    pub force: bool,
}

/// A plugin version's kube grants, checked against the configured clusters.
#[derive(Debug, Default)]
pub struct KubePolicy {
    pub(super) grants: Vec<KubeGrant>,
}

impl KubePolicy {
    /// Fails if a grant names a cluster the server does not know.
    pub fn new(grants: &[KubeGrant], clusters: &super::Clusters) -> Result<KubePolicy, String> {
        for g in grants {
            if !clusters.contains(&g.cluster) {
                return Err(format!(
                    "grant names cluster `{}`, which is not configured",
                    g.cluster
                ));
            }
        }
        Ok(KubePolicy {
            grants: grants.to_vec(),
        })
    }

    /// Deny first: Ok only if one grant entry covers cluster, kind,
    /// namespace (or the kind by name in `cluster_scoped`) and verb;
    /// otherwise the reason.
    pub fn check(
        &self,
        cluster: &str,
        group: &str,
        kind: &str,
        namespace: Option<&str>,
        verb: Verb,
    ) -> Result<Access, String> {
        let on_cluster: Vec<&KubeGrant> = self
            .grants
            .iter()
            .filter(|g| g.cluster == cluster)
            .collect();
        if on_cluster.is_empty() {
            return Err(format!("cluster `{cluster}` is not granted"));
        }
        let for_kind: Vec<&KubeGrant> = on_cluster
            .into_iter()
            .filter(|g| g.matches_resource(group, kind))
            .collect();
        let gk = group_kind(group, kind);
        if for_kind.is_empty() {
            return Err(format!("kind `{gk}` is not granted on cluster `{cluster}`"));
        }
        let in_scope: Vec<&KubeGrant> = for_kind
            .into_iter()
            .filter(|g| match namespace {
                Some(ns) => g.namespaces.iter().any(|n| n == "*" || n == ns),
                None => g.names_cluster_scoped(group, kind),
            })
            .collect();
        if in_scope.is_empty() {
            return Err(match namespace {
                Some(ns) => format!("namespace `{ns}` is not granted"),
                None => format!(
                    "cluster-scoped access to `{gk}` is not granted (cluster_scoped does not name it)"
                ),
            });
        }
        let with_verb: Vec<&KubeGrant> = in_scope
            .into_iter()
            .filter(|g| g.verbs.contains(&verb))
            .collect();
        if with_verb.is_empty() {
            return Err(format!("verb `{}` is not granted", verb.as_str()));
        }
        Ok(Access {
            force: with_verb.iter().any(|g| g.force),
        })
    }
}

/// Whether the resource pattern `pattern` (`*`, `group/*`, `group/Kind`,
/// `Kind`) matches the kind `gk`, written `group/Kind` or `Kind`.
pub fn resource_matches(pattern: &str, gk: &str) -> bool {
    let (g, k) = gk.rsplit_once('/').unwrap_or(("", gk));
    let (pg, pk) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    pattern == "*" || (pg == g && (pk == "*" || pk == k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> KubeGrant {
        KubeGrant {
            cluster: "test".into(),
            namespaces: vec!["team-a".into()],
            resources: vec!["apps/Deployment".into(), "ConfigMap".into()],
            verbs: vec![Verb::Get, Verb::Apply],
            cluster_scoped: vec![],
            force: false,
        }
    }

    fn policy(grants: Vec<KubeGrant>) -> KubePolicy {
        KubePolicy { grants }
    }

    fn why(r: Result<Access, String>) -> String {
        r.unwrap_err()
    }

    #[test]
    fn deny_unless_every_dimension_is_granted() {
        let p = policy(vec![grant()]);
        assert!(
            p.check("test", "apps", "Deployment", Some("team-a"), Verb::Apply)
                .is_ok()
        );
        assert!(
            p.check("test", "", "ConfigMap", Some("team-a"), Verb::Get)
                .is_ok()
        );
        assert!(
            why(p.check("prod", "apps", "Deployment", Some("team-a"), Verb::Get))
                .contains("cluster `prod`")
        );
        assert!(
            why(p.check("test", "apps", "StatefulSet", Some("team-a"), Verb::Get))
                .contains("apps/StatefulSet")
        );
        assert!(why(p.check("test", "", "Secret", Some("team-a"), Verb::Get)).contains("`Secret`"));
        assert!(
            why(p.check("test", "", "ConfigMap", Some("team-b"), Verb::Get))
                .contains("namespace `team-b`")
        );
        assert!(
            why(p.check("test", "apps", "Deployment", Some("team-a"), Verb::Delete))
                .contains("verb `delete`")
        );
        assert!(why(p.check("test", "", "Namespace", None, Verb::Get)).contains("`Namespace`"));
    }

    #[test]
    fn cluster_scoped_kinds_are_allowed_one_by_one() {
        let mut g = grant();
        g.resources = vec!["*".into()];
        g.cluster_scoped = vec!["Namespace".into()];
        let p = policy(vec![g]);
        assert!(p.check("test", "", "Namespace", None, Verb::Apply).is_ok());
        let crb = why(p.check(
            "test",
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            None,
            Verb::Apply,
        ));
        assert!(
            crb.contains(
                "cluster-scoped access to `rbac.authorization.k8s.io/ClusterRoleBinding` is not granted"
            ),
            "{crb}"
        );
        // A namespaced kind of the same grant stays namespaced.
        assert!(why(p.check("test", "", "ConfigMap", None, Verb::Get)).contains("cluster-scoped"));
        // The kind must be named in the same entry that grants the verb.
        let mut reader = grant();
        reader.resources = vec!["*".into()];
        reader.verbs = vec![Verb::Get];
        reader.cluster_scoped = vec!["Namespace".into()];
        let mut writer = grant();
        writer.resources = vec!["*".into()];
        writer.verbs = vec![Verb::Apply];
        let p = policy(vec![reader, writer]);
        assert!(p.check("test", "", "Namespace", None, Verb::Get).is_ok());
        assert!(why(p.check("test", "", "Namespace", None, Verb::Apply)).contains("verb `apply`"));
    }

    #[test]
    fn force_comes_from_a_covering_entry_only() {
        let mut forced = grant();
        forced.namespaces = vec!["team-b".into()];
        forced.force = true;
        let p = policy(vec![grant(), forced]);
        let access = |ns| {
            p.check("test", "", "ConfigMap", Some(ns), Verb::Apply)
                .unwrap()
        };
        assert!(!access("team-a").force);
        assert!(access("team-b").force);
    }

    #[test]
    fn grants_are_validated() {
        let mut g = grant();
        assert!(g.validate().is_ok());
        g.verbs.clear();
        assert!(g.validate().is_err());
        let mut g = grant();
        g.namespaces.clear();
        assert!(g.validate().unwrap_err().contains("no cluster_scoped kind"));
        g.resources = vec!["*".into()];
        g.cluster_scoped = vec!["Namespace".into()];
        assert!(g.validate().is_ok());
        let mut g = grant();
        g.resources = vec!["a/b/c".into()];
        assert!(g.validate().is_err());
    }

    fn parse(cluster_scoped: &str) -> Result<KubeGrant, String> {
        let text = format!(
            "cluster = \"test\"\nnamespaces = [\"a\"]\nresources = [\"*\"]\nverbs = [\"get\"]\n{cluster_scoped}"
        );
        let g: KubeGrant = toml::from_str(&text).map_err(|e| e.to_string())?;
        g.validate()?;
        Ok(g)
    }

    #[test]
    fn cluster_scoped_parses_kinds_and_the_old_false() {
        assert_eq!(parse("").unwrap().cluster_scoped, Vec::<String>::new());
        assert_eq!(
            parse("cluster_scoped = false").unwrap().cluster_scoped,
            Vec::<String>::new()
        );
        let g = parse(
            "cluster_scoped = [\"Namespace\", \"rbac.authorization.k8s.io/ClusterRole\"]\nforce = true",
        )
        .unwrap();
        assert_eq!(
            g.cluster_scoped,
            vec!["Namespace", "rbac.authorization.k8s.io/ClusterRole"]
        );
        assert!(g.force);
        let again: KubeGrant = toml::from_str(&toml::to_string(&g).unwrap()).unwrap();
        assert_eq!(again, g);
        // As stored: the whole manifest goes through TOML and back.
        let manifest = crate::manifest::Manifest::parse(
            "name = \"p\"\nversion = \"1.0.0\"\nrole = \"deploy-step\"\n[[grants.kube]]\n\
             cluster = \"test\"\nresources = [\"*\"]\nverbs = [\"apply\"]\n\
             cluster_scoped = [\"Namespace\"]\nforce = true\n",
        )
        .unwrap();
        let stored = manifest.to_toml();
        assert_eq!(crate::manifest::Manifest::parse(&stored).unwrap(), manifest);
        assert_eq!(manifest.grants.kube[0].cluster_scoped, ["Namespace"]);
    }

    #[test]
    fn cluster_scoped_true_and_wildcards_are_refused() {
        let e = parse("cluster_scoped = true").unwrap_err();
        assert!(
            e.contains("`cluster_scoped = true` is no longer accepted")
                && e.contains("name the cluster-scoped kinds"),
            "{e}"
        );
        for wild in ["*", "rbac.authorization.k8s.io/*", "Cluster*"] {
            let e = parse(&format!("cluster_scoped = [\"{wild}\"]")).unwrap_err();
            assert!(
                e.starts_with("cluster_scoped:") && e.contains("wildcard"),
                "{wild}: {e}"
            );
        }
        let e = parse("cluster_scoped = [\"/Namespace\"]").unwrap_err();
        assert!(e.starts_with("cluster_scoped:"), "{e}");
        let e = parse("cluster_scoped = [\"a/b/C\"]").unwrap_err();
        assert!(e.starts_with("cluster_scoped:"), "{e}");
        let mut narrow = parse("").unwrap();
        narrow.resources = vec!["ConfigMap".into()];
        narrow.cluster_scoped = vec!["Namespace".into()];
        assert!(
            narrow
                .validate()
                .unwrap_err()
                .contains("not among the grant's resources")
        );
    }
}
