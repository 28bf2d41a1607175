//! Apply order. Each object's step is `(wave, stage)` with the plugin's
//! wave first, then a stage by kind inside the wave:
//!
//! | stage | kinds |
//! |-------|-------|
//! | 0 | Namespace, CustomResourceDefinition, StorageClass, PriorityClass |
//! | 1 | LimitRange (before the quota, so pods without requests still get defaults) |
//! | 2 | ResourceQuota |
//! | 3 | everything else |
//!
//! Each step is applied, then waited on (kstatus) before the next starts.
//! Destroy runs the steps in reverse. The ApplySet parent is written after
//! the step that creates its namespace and before any other member.

/// The stage of `kind` inside a wave.
pub fn stage(kind: &str) -> u32 {
    match kind {
        "Namespace" | "CustomResourceDefinition" | "StorageClass" | "PriorityClass" => 0,
        "LimitRange" => 1,
        "ResourceQuota" => 2,
        _ => 3,
    }
}

/// The step number of an object: waves are spaced by 4 stages.
pub fn step(wave: u32, kind: &str) -> u32 {
    wave.saturating_mul(4).saturating_add(stage(kind))
}

/// `wave W, stage S` for progress lines.
pub fn describe(step: u32) -> String {
    let name = match step % 4 {
        0 => "namespaces/CRDs",
        1 => "limit ranges",
        2 => "quotas",
        _ => "the rest",
    };
    format!("wave {} ({name})", step / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limitrange_before_quota_before_rest() {
        let mut kinds = ["RoleBinding", "ResourceQuota", "Namespace", "LimitRange"];
        kinds.sort_by_key(|k| step(0, k));
        assert_eq!(
            kinds,
            ["Namespace", "LimitRange", "ResourceQuota", "RoleBinding"]
        );
        assert!(step(1, "Namespace") > step(0, "ConfigMap"));
    }
}
