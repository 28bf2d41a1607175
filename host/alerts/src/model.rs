//! What Alertmanager sends (the webhook payload, version 4) and what
//! Capstan keeps of it: the group as received and each alert's episode
//! identity, `(fingerprint, startsAt)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Labels or annotations.
pub type Labels = BTreeMap<String, String>;

/// An Alertmanager webhook body (payload version 4), as Alertmanager sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Payload version, `4`.
    #[serde(default)]
    #[schema(pattern = "^4?$")]
    pub version: String,
    /// Key identifying the group (the same on every Alertmanager of an HA cluster).
    #[schema(min_length = 1)]
    pub group_key: String,
    /// Alerts left out because of `max_alerts`. (Documented as a 64-bit
    /// integer with the u32 range: `u32` alone reads as `int32` to schema
    /// checkers, whose maximum is half of it.)
    #[serde(default)]
    #[schema(value_type = i64, minimum = 0, maximum = 4294967295_i64)]
    pub truncated_alerts: u32,
    /// `firing` if any alert fires, otherwise `resolved`.
    #[schema(pattern = "^(firing|resolved)$")]
    pub status: String,
    /// The Alertmanager receiver's name.
    #[serde(default)]
    pub receiver: String,
    /// Labels the group was formed by.
    #[serde(default)]
    pub group_labels: Labels,
    /// Labels shared by every alert.
    #[serde(default)]
    pub common_labels: Labels,
    /// Annotations shared by every alert.
    #[serde(default)]
    pub common_annotations: Labels,
    /// Alertmanager's external URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// The alerts.
    #[schema(min_items = 1)]
    pub alerts: Vec<Alert>,
}

/// One alert of a webhook body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    #[schema(pattern = "^(firing|resolved)$")]
    pub status: String,
    /// Identifying labels.
    #[serde(default)]
    pub labels: Labels,
    /// Annotations.
    #[serde(default)]
    pub annotations: Labels,
    /// RFC 3339 start.
    #[schema(min_length = 1, max_length = 64)]
    pub starts_at: String,
    /// RFC 3339 end; `0001-01-01T00:00:00Z` while firing.
    #[serde(default)]
    pub ends_at: String,
    /// Link to the rule's expression.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's fingerprint of the label set.
    #[schema(min_length = 1, max_length = 128)]
    pub fingerprint: String,
}

impl Alert {
    /// The alert's name label (empty if none).
    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    /// The episode: one firing of one label set, `fingerprint@startsAt`.
    pub fn episode(&self) -> String {
        format!("{}@{}", self.fingerprint, self.starts_at)
    }
}

/// Why a webhook body was refused (a 4xx: Alertmanager will not resend it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidWebhook(pub String);

impl Webhook {
    /// Parses and checks a body: JSON of the v4 shape, a group key, a known
    /// status on the group and every alert, a fingerprint and start on each.
    pub fn parse(body: &[u8]) -> Result<Webhook, InvalidWebhook> {
        let hook: Webhook = serde_json::from_slice(body)
            .map_err(|e| InvalidWebhook(format!("not an Alertmanager v4 webhook body: {e}")))?;
        hook.check()?;
        Ok(hook)
    }

    fn check(&self) -> Result<(), InvalidWebhook> {
        if !self.version.is_empty() && self.version != "4" {
            return Err(InvalidWebhook(format!(
                "payload version `{}` is not supported (Alertmanager sends `4`)",
                self.version
            )));
        }
        if self.group_key.is_empty() {
            return Err(InvalidWebhook("`groupKey` is empty".into()));
        }
        check_status("status", &self.status)?;
        if self.alerts.is_empty() {
            return Err(InvalidWebhook("`alerts` is empty".into()));
        }
        for (i, a) in self.alerts.iter().enumerate() {
            check_status(&format!("alerts[{i}].status"), &a.status)?;
            if a.fingerprint.is_empty() || a.fingerprint.len() > 128 {
                return Err(InvalidWebhook(format!(
                    "alerts[{i}].fingerprint must have 1 to 128 characters"
                )));
            }
            if a.starts_at.is_empty() || a.starts_at.len() > 64 {
                return Err(InvalidWebhook(format!(
                    "alerts[{i}].startsAt must be an RFC 3339 time"
                )));
            }
        }
        Ok(())
    }

    /// The same group with only `keep` alerts (in order); its status is
    /// `firing` if one of them fires.
    pub fn with_alerts(&self, keep: Vec<Alert>) -> Webhook {
        let firing = keep.iter().any(|a| a.status == "firing");
        Webhook {
            status: if firing { "firing" } else { "resolved" }.into(),
            alerts: keep,
            ..self.clone()
        }
    }

    /// Which of the processing shards the group belongs to: deliveries of
    /// one group key are handled in order, by one replica at a time.
    pub fn shard(&self, shards: u32) -> u32 {
        let d = Sha256::digest(self.group_key.as_bytes());
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % shards.max(1)
    }
}

fn check_status(field: &str, s: &str) -> Result<(), InvalidWebhook> {
    match s {
        "firing" | "resolved" => Ok(()),
        other => Err(InvalidWebhook(format!(
            "`{field}` is `{other}`; expected `firing` or `resolved`"
        ))),
    }
}

/// A short stable hash, hex.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_alertmanager_body_and_refuses_bad_ones() {
        let body = br#"{"version":"4","groupKey":"{}:{alertname=\"Down\"}","status":"firing","receiver":"capstan",
            "groupLabels":{"alertname":"Down"},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am",
            "truncatedAlerts":0,"alerts":[{"status":"firing","labels":{"alertname":"Down"},"annotations":{},
            "startsAt":"2026-12-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc"}]}"#;
        let hook = Webhook::parse(body).unwrap();
        assert_eq!(hook.alerts[0].alertname(), "Down");
        assert_eq!(hook.alerts[0].episode(), "abc@2026-12-01T00:00:00Z");
        assert!(Webhook::parse(b"{").is_err());
        let bad = String::from_utf8_lossy(body)
            .replace("\"firing\",\"labels\"", "\"burning\",\"labels\"");
        let e = Webhook::parse(bad.as_bytes()).unwrap_err();
        assert!(e.0.contains("alerts[0].status"), "{e}");
    }
}
