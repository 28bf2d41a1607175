//! Test guest: a deploy step that misbehaves on request.
//! `params.fault`: `ok` (echo `params.echo`), `loop`, `oom`, `trap`, `panic`,
//! `stack`, `huge` (a result of `params.bytes` bytes), `slow` (busy for `params.ms`),
//! `error` (a typed invalid-input error).

use capstan_sdk::Error;
use capstan_sdk::deploy_step::{Context, DeployStep, Outcome, StepResult};

struct Fault;

/// Deep recursion with small frames, so the Wasm stack (not the shadow stack
/// in linear memory) overflows; `rotate_left` keeps LLVM from turning it into a loop.
fn recurse(n: u64) -> u64 {
    if n == u64::MAX {
        0
    } else {
        recurse(n + 1).rotate_left(3) ^ n
    }
}

impl DeployStep for Fault {
    fn run(_ctx: Context, params: String) -> Result<StepResult, Error> {
        let p: serde_json::Value = capstan_sdk::parse_json(&params)?;
        let ok = |message: String| {
            Ok(StepResult {
                outcome: Outcome::Succeeded,
                message,
                outputs: vec![],
            })
        };
        match p["fault"].as_str().unwrap_or("ok") {
            "ok" => ok(format!("echo {}", p["echo"])),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[allow(unreachable_code)]
                ok(String::new())
            }
            "panic" => panic!("fault-step was asked to panic"),
            "stack" => ok(format!("{}", recurse(0))),
            "huge" => {
                let n = p["bytes"].as_u64().unwrap_or(8 << 20) as usize;
                ok("x".repeat(n))
            }
            "slow" => {
                let until = std::time::Instant::now()
                    + std::time::Duration::from_millis(p["ms"].as_u64().unwrap_or(100));
                while std::time::Instant::now() < until {
                    std::hint::black_box(0);
                }
                ok("slow done".into())
            }
            "error" => Err(Error::InvalidInput("fault-step was asked to fail".into())),
            other => Err(Error::InvalidInput(format!("unknown fault `{other}`"))),
        }
    }

    fn rollback(_ctx: Context, _params: String) -> Result<StepResult, Error> {
        Ok(StepResult {
            outcome: Outcome::Succeeded,
            message: "rolled back".into(),
            outputs: vec![],
        })
    }
}

capstan_sdk::export_deploy_step!(Fault);
