//! Unit tests of the pure model: signatures against `openssl dgst` vectors,
//! how answers are read, batching within a provider's size, spec validation.

use std::time::Duration;

use super::provider::*;
use super::*;

#[test]
fn signatures_match_openssl() {
    // printf '1700000000000\nSECdeadbeef' | openssl dgst -sha256 -hmac SECdeadbeef -binary | base64
    assert_eq!(
        dingtalk_sign("SECdeadbeef", 1_700_000_000_000),
        "NCJLKINTABhx3SnC+ENZIPZzT1H3juvunEn/A3cdKGY="
    );
    // printf '' | openssl dgst -sha256 -hmac "$(printf '1700000000\nfeishu-secret')" -binary | base64
    assert_eq!(
        feishu_sign("feishu-secret", 1_700_000_000),
        "OrBzY1Y01Gq+HgJsl+7OfWcMVwc7YocohQm5iiZwjhU="
    );
    let url = dingtalk_url(
        "https://oapi.dingtalk.com/robot/send?access_token=T",
        Some("SECdeadbeef"),
        1_700_000_000_000,
    );
    assert_eq!(
        url,
        "https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=1700000000000&sign=NCJLKINTABhx3SnC%2BENZIPZzT1H3juvunEn%2FA3cdKGY%3D"
    );
}

#[test]
fn business_errors_in_a_200_are_read_from_the_body() {
    let d = |body: &str| classify(ChannelKind::Dingtalk, 200, None, body);
    assert_eq!(d(r#"{"errcode":0,"errmsg":"ok"}"#).verdict, Verdict::Sent);
    let fast = d(r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#);
    assert_eq!(fast.verdict, Verdict::Retry { after_ms: None });
    assert_eq!(fast.code.as_deref(), Some("130101"));
    let sign = d(r#"{"errcode":310000,"errmsg":"sign not match"}"#);
    assert_eq!(sign.verdict, Verdict::Permanent);
    assert_eq!(sign.message.as_deref(), Some("sign not match"));
    assert_eq!(d("<html>").verdict, Verdict::Permanent);
    assert_eq!(
        classify(ChannelKind::Dingtalk, 502, None, "bad gateway").verdict,
        Verdict::Retry { after_ms: None }
    );
    let w = |body: &str| classify(ChannelKind::Wecom, 200, None, body).verdict;
    assert_eq!(
        w(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        Verdict::Retry { after_ms: None }
    );
    assert_eq!(
        w(r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#),
        Verdict::Permanent
    );
    let f = |body: &str| classify(ChannelKind::Feishu, 200, None, body).verdict;
    assert_eq!(f(r#"{"code":0,"msg":"success","data":{}}"#), Verdict::Sent);
    assert_eq!(
        f(r#"{"StatusCode":0,"StatusMessage":"success"}"#),
        Verdict::Sent
    );
    assert_eq!(
        f(r#"{"code":9499,"msg":"too many request"}"#),
        Verdict::Retry { after_ms: None }
    );
    assert_eq!(
        f(r#"{"code":11232,"msg":"frequency limited"}"#),
        Verdict::Retry { after_ms: None }
    );
    assert_eq!(
        f(
            r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#
        ),
        Verdict::Permanent
    );
}

#[test]
fn slack_answers_text_and_429_carries_retry_after() {
    let s = |st, ra, body: &str| classify(ChannelKind::Slack, st, ra, body);
    assert_eq!(s(200, None, "ok").verdict, Verdict::Sent);
    let bad = s(400, None, "invalid_payload");
    assert_eq!(bad.verdict, Verdict::Permanent);
    assert_eq!(bad.code.as_deref(), Some("invalid_payload"));
    assert_eq!(
        s(404, None, "channel_not_found").verdict,
        Verdict::Permanent
    );
    assert_eq!(
        s(429, Some(3), "rate_limited").verdict,
        Verdict::Retry {
            after_ms: Some(3000)
        }
    );
    assert_eq!(
        s(500, None, "rollup_error").verdict,
        Verdict::Retry { after_ms: None }
    );
}

#[test]
fn batches_fit_the_provider_and_long_text_is_cut_on_a_char_boundary() {
    let bodies = ["aaaa", "bbbb", "cccc"];
    let (n, text) = join_batch(&bodies, 4 + BATCH_SEPARATOR.len() + 4);
    assert_eq!(n, 2);
    assert_eq!(text, format!("aaaa{BATCH_SEPARATOR}bbbb"));
    // One message alone is always taken, cut to the size.
    let long = "告警".repeat(2000);
    let (n, text) = join_batch(&[&long], max_bytes(ChannelKind::Wecom, Format::Text));
    assert_eq!(n, 1);
    assert!(
        text.len() <= 2048 && text.ends_with("(truncated)"),
        "{}",
        text.len()
    );
    assert_eq!(
        title("## [FIRING:2] HighLatency\nmore"),
        "[FIRING:2] HighLatency"
    );
}

#[test]
fn retry_delays_grow_and_honour_retry_after() {
    let min = Duration::from_millis(100);
    let max = Duration::from_secs(10);
    let first = retry_delay(1, min, max, None);
    assert!(first >= min && first <= min * 2, "{first:?}");
    let fifth = retry_delay(5, min, max, None);
    assert!(fifth >= min * 16, "{fifth:?}");
    assert!(retry_delay(1, min, max, Some(3000)) >= Duration::from_secs(3));
}

#[test]
fn specs_are_validated() {
    let spec: ChannelSpec = serde_json::from_value(serde_json::json!({
        "name": "ops-dingtalk", "project": "default", "type": "dingtalk",
        "webhook_secret": "dt-url", "sign_secret": "dt-sign"
    }))
    .unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.limits()[0].max, 20);
    let mut bad = spec.clone();
    bad.webhook_secret = None;
    bad.name = "Ops!".into();
    let e = bad.validate().unwrap_err();
    assert!(e.contains("webhook_secret") && e.contains("name"), "{e}");
    let email: ChannelSpec = serde_json::from_value(serde_json::json!({
        "name": "mail", "project": "default", "type": "email",
        "smtp": {"host": "smtp.example.com", "from": "capstan@example.com", "to": ["not an address"]}
    }))
    .unwrap();
    assert!(
        email
            .validate()
            .unwrap_err()
            .contains("not an email address")
    );
    let mut slack = spec.clone();
    slack.kind = ChannelKind::Slack;
    assert!(slack.validate().unwrap_err().contains("sign_secret"));
}

#[test]
fn smtp_specs_stored_before_implicit_tls_still_read_and_it_is_stored_only_when_set() {
    let stored = serde_json::json!({
        "name": "mail", "project": "default", "type": "email",
        "smtp": {"host": "smtp.example.com", "port": 587, "starttls": true,
                 "username": null, "password_secret": null,
                 "from": "capstan@example.com", "to": ["oncall@example.com"]}
    });
    let spec: ChannelSpec = serde_json::from_value(stored.clone()).unwrap();
    let smtp = spec.smtp.as_ref().unwrap();
    assert!(!smtp.implicit_tls && smtp.starttls);
    assert_eq!(serde_json::to_value(&spec).unwrap(), stored);
    let mut smtps = spec.clone();
    smtps.smtp.as_mut().unwrap().implicit_tls = true;
    let v = serde_json::to_value(&smtps).unwrap();
    assert_eq!(v["smtp"]["implicit_tls"], true);
    assert_eq!(serde_json::from_value::<ChannelSpec>(v).unwrap(), smtps);
}
