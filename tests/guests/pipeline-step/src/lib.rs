//! Test guest: a deploy step whose behaviour the pipeline decides, per
//! step, through its params:
//! - `fail_until_attempt: n`: a retryable error on attempts below `n`;
//! - `fail: "failed" | "invalid-input" | "retryable"`: always fail (the
//!   `failed` outcome, or that typed error); other values do nothing;
//! - `wait_polls: n` with `poll_ms`: answer `retry-after(poll_ms)` until it
//!   has been called `n` times for this run and step (counted in kv);
//! - `outputs: {..}`: outputs to return (strings);
//! - `spin_ms: n`: stay busy that long first;
//! - `log: ["..", ..]`: log each line (info);
//! - `quiet: true`: do not record the call, nor count it unless
//!   `wait_polls` is set (benchmarks: the record's free-key search grows
//!   with the number of calls, and the kv quota is 64 KiB);
//! - `leak_secret: "name"`: read that secret and log it as it is, line by
//!   line, and base64-encoded (the host must mask every form).
//!
//! Every `run` and `rollback` stores `<what> <run-id>/<step>#<attempt>`
//! (the idempotency key and the attempt) under the next free kv key
//! `call/NNNNN` (claimed with set-if-absent, so parallel steps never lose a
//! line): a test sees exactly what ran, in which order.

use capstan_sdk::Error;
use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};
use capstan_sdk::kv;

struct Step;

fn record(ctx: &Context, what: &str, quiet: bool, polls: bool) -> Result<u32, Error> {
    if !quiet {
        let line = format!("{what} {}/{}#{}", ctx.run_id, ctx.step, ctx.attempt);
        let mut n = 0;
        while !kv::set_if_absent(&format!("call/{n:05}"), line.as_bytes())? {
            n += 1;
        }
    }
    if !polls {
        return Ok(1);
    }
    let key = format!("polls/{}/{}", ctx.run_id, ctx.step);
    let n = kv::get(&key)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    kv::set(&key, n.to_string().as_bytes())?;
    Ok(n)
}

fn result(
    outcome: Outcome,
    message: String,
    outputs: Vec<(String, String)>,
) -> Result<StepResult, Error> {
    Ok(StepResult {
        outcome,
        message,
        outputs,
    })
}

impl DeployStep for Step {
    fn run(ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: serde_json::Value = capstan_sdk::parse_json(&params)?;
        let quiet = p["quiet"] == true;
        let calls = record(&ctx, "run", quiet, !quiet || p["wait_polls"].is_u64())?;
        for line in p["log"].as_array().into_iter().flatten() {
            capstan_sdk::log::info(line.as_str().unwrap_or_default());
        }
        if let Some(name) = p["leak_secret"].as_str() {
            leak(name)?;
        }
        if let Some(ms) = p["spin_ms"].as_u64() {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                std::hint::black_box(0);
            }
        }
        if p["fail_until_attempt"]
            .as_u64()
            .is_some_and(|n| u64::from(ctx.attempt) < n)
        {
            return Err(Error::Retryable(format!(
                "attempt {} fails on purpose",
                ctx.attempt
            )));
        }
        match p["fail"].as_str() {
            Some("invalid-input") => return Err(Error::InvalidInput("asked to fail".into())),
            Some("retryable") => return Err(Error::Retryable("asked to fail".into())),
            Some("failed") => return result(Outcome::Failed, "asked to fail".into(), vec![]),
            _ => {}
        }
        if p["wait_polls"]
            .as_u64()
            .is_some_and(|n| u64::from(calls) < n)
        {
            let ms = p["poll_ms"].as_u64().unwrap_or(50);
            return result(
                Outcome::RetryAfter(ms),
                format!("not ready (call {calls})"),
                vec![],
            );
        }
        let outputs = p["outputs"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let inputs: Vec<String> = ctx.inputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        result(
            Outcome::Succeeded,
            format!("done; inputs [{}]", inputs.join(", ")),
            outputs,
        )
    }

    fn rollback(ctx: Context, _params: String) -> Result<StepResult, Error> {
        record(&ctx, "rollback", false, true)?;
        result(Outcome::Succeeded, "rolled back".into(), vec![])
    }
}

/// Logs a secret in the forms a careless step prints it.
fn leak(name: &str) -> Result<(), Error> {
    let value = capstan_sdk::secrets::get(name)?;
    capstan_sdk::log::warn(&format!("the secret is {value}"));
    for line in value.lines() {
        capstan_sdk::log::info(&format!("line: {line}"));
    }
    capstan_sdk::log::info(&format!("as base64: {}", base64(value.as_bytes())));
    Ok(())
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

capstan_sdk::export_deploy_step!(Step);
