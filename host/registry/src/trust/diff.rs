//! How the grants of two versions differ. Grants are flattened into atoms
//! (one mount, one secret, one origin, one cluster/namespace/kind/verb...),
//! so that dropping a verb is a narrowing and adding one is a widening.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::capabilities::Grants;

/// The grant diff of a version against the active one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GrantDiff {
    /// Atoms the new version has and the active one does not.
    pub added: Vec<String>,
    /// Atoms the active version has and the new one does not.
    pub removed: Vec<String>,
}

impl GrantDiff {
    /// The diff from `old` (the active version's grants, if any) to `new`.
    pub fn between(old: Option<&Grants>, new: &Grants) -> GrantDiff {
        let old = old.map(atoms).unwrap_or_default();
        let new = atoms(new);
        GrantDiff {
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
        }
    }

    /// Whether the new version may reach something the old one could not.
    pub fn widens(&self) -> bool {
        !self.added.is_empty()
    }
}

/// Every atom of `g`, as readable strings.
pub fn atoms(g: &Grants) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in &g.fs {
        let mode = match f.mode {
            crate::capabilities::fs::Mode::Ro => "ro",
            crate::capabilities::fs::Mode::Rw => "rw",
        };
        out.insert(format!(
            "fs {} at {} ({mode})",
            f.host_path.display(),
            f.guest_path
        ));
    }
    if let Some(s) = &g.secrets {
        for n in &s.names {
            out.insert(format!("secret {n}"));
        }
    }
    if let Some(h) = &g.http {
        for p in &h.allow {
            out.insert(format!("http {p}"));
        }
        for n in &h.private_networks {
            out.insert(format!("http private network {n}"));
        }
        if let Some(b) = h.max_response_bytes {
            out.insert(format!("http max_response_bytes {b}"));
        }
        if let Some(t) = h.timeout_ms {
            out.insert(format!("http timeout_ms {t}"));
        }
    }
    if let Some(t) = &g.tcp {
        for e in &t.connect {
            out.insert(format!("tcp {e}"));
        }
        for n in &t.private_networks {
            out.insert(format!("tcp private network {n}"));
        }
    }
    if let Some(kv) = &g.kv {
        out.insert(format!("kv max_bytes {}", kv.max_bytes));
        out.insert(format!("kv max_value_bytes {}", kv.max_value_bytes));
    }
    for k in &g.kube {
        for r in &k.resources {
            for v in &k.verbs {
                for ns in &k.namespaces {
                    out.insert(format!(
                        "kube {} namespace {ns} {r} {}",
                        k.cluster,
                        v.as_str()
                    ));
                }
                for kind in &k.cluster_scoped {
                    if crate::capabilities::kube::resource_matches(r, kind) {
                        out.insert(format!(
                            "kube {} cluster-scoped {kind} {}",
                            k.cluster,
                            v.as_str()
                        ));
                    }
                }
            }
        }
        if k.force {
            out.insert(format!("kube {} force", k.cluster));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(toml_text: &str) -> Grants {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn dropping_is_narrowing_and_adding_is_widening() {
        let old = grants(
            r#"
            secrets = { names = ["a", "b"] }
            [[kube]]
            cluster = "test"
            namespaces = ["team-a"]
            resources = ["apps/Deployment"]
            verbs = ["get", "apply"]
            "#,
        );
        let narrower = grants(
            r#"
            secrets = { names = ["a"] }
            [[kube]]
            cluster = "test"
            namespaces = ["team-a"]
            resources = ["apps/Deployment"]
            verbs = ["get"]
            "#,
        );
        let d = GrantDiff::between(Some(&old), &narrower);
        assert!(!d.widens(), "{d:?}");
        assert_eq!(d.removed.len(), 2, "{d:?}");
        let d = GrantDiff::between(Some(&narrower), &old);
        assert!(d.widens());
        assert!(d.added.contains(&"secret b".to_string()), "{d:?}");
        assert!(
            d.added
                .contains(&"kube test namespace team-a apps/Deployment apply".to_string()),
            "{d:?}"
        );
        assert!(GrantDiff::between(None, &old).widens());
        assert!(!GrantDiff::between(None, &Grants::default()).widens());
    }
}
