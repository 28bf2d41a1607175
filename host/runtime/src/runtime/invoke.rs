//! One invocation: a fresh `Store` with the version's limits, a call into the
//! role's export, and an account of what it cost.

use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::admission::{LimitScope, PluginConcurrency, PluginPermit, deadline_after};
use super::bindings::{WitError, alert_handler, deploy_step, metrics_source, provisioner};
use super::engine::{EPOCH_TICK, Runtime};
use super::error::{InvokeError, PluginError};
use super::limits::{DeadlineExceeded, Limiter, MemoryLimitExceeded};
use super::load::{Prepared, RoleIndices};
use super::state::{CallInfo, CapturedLog, HostState};

/// A call into one of the role exports.
#[derive(Debug, Clone)]
pub enum Call {
    /// `provisioner.plan`.
    Plan {
        /// Spec as JSON text.
        spec: String,
    },
    /// `provisioner.apply`.
    Apply {
        /// Spec as JSON text.
        spec: String,
        /// Persist nothing.
        dry_run: bool,
    },
    /// `provisioner.destroy`.
    Destroy {
        /// Spec as JSON text.
        spec: String,
        /// Persist nothing.
        dry_run: bool,
    },
    /// `deploy-step.run`.
    Run {
        /// Pipeline context.
        ctx: deploy_step::Context,
        /// Params as JSON text.
        params: String,
    },
    /// `deploy-step.rollback`.
    Rollback {
        /// Pipeline context.
        ctx: deploy_step::Context,
        /// Params as JSON text.
        params: String,
    },
    /// `metrics-source.collect`.
    Collect,
    /// `alert-handler.handle`.
    Handle {
        /// The alert group.
        group: alert_handler::AlertGroup,
    },
}

impl Call {
    /// The function's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Plan { .. } => "plan",
            Call::Apply { .. } => "apply",
            Call::Destroy { .. } => "destroy",
            Call::Run { .. } => "run",
            Call::Rollback { .. } => "rollback",
            Call::Collect => "collect",
            Call::Handle { .. } => "handle",
        }
    }
}

/// What an invocation returned.
#[derive(Debug, Clone)]
pub enum Output {
    /// From `plan`.
    Plan(provisioner::DesiredState),
    /// From `apply` or `destroy`.
    Report(provisioner::Report),
    /// From `run` or `rollback`.
    Step(deploy_step::StepResult),
    /// From `collect`.
    Metrics(Vec<metrics_source::MetricFamily>),
    /// From `handle`.
    Actions(Vec<alert_handler::Action>),
}

/// How an invocation ended, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It returned a value.
    Ok,
    /// It failed; the error kind is given.
    Error(&'static str),
}

/// What one invocation cost.
#[derive(Debug, Clone)]
pub struct Accounting {
    /// Invocation id.
    pub invocation: String,
    /// Plugin version that ran.
    pub version: std::sync::Arc<str>,
    /// Function called.
    pub call: &'static str,
    /// Wall-clock time including instantiation.
    pub duration: Duration,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// Peak linear memory, bytes.
    pub peak_memory: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// What the plugin logged, secrets masked (see [`super::state::MAX_CAPTURED_LOGS`]).
    pub logs: Vec<CapturedLog>,
    /// Log lines beyond [`super::state::MAX_CAPTURED_LOGS`], not kept.
    pub logs_dropped: usize,
}

type GuestResult<T> = wasmtime::Result<Result<T, WitError>>;

impl Runtime {
    /// Runs `call` on a fresh instance of `p` within its limits, admitted by
    /// the server's concurrency limit only.
    pub async fn invoke(
        &self,
        p: &Prepared,
        call: Call,
        invocation: String,
    ) -> (Result<Output, InvokeError>, Accounting) {
        self.invoke_limited(None, p, call, invocation).await
    }

    /// Runs `call` on a fresh instance of `p` within its limits, admitted
    /// first by the plugin's own concurrency limit (counted in `plugin`,
    /// shared by all its versions), then by the server's.
    #[tracing::instrument(name = "plugin.invoke", skip_all, fields(
        plugin = %p.manifest.name, version = %p.manifest.version, call = call.name(), invocation = %invocation,
    ))]
    pub async fn invoke_limited(
        &self,
        plugin: Option<&PluginConcurrency>,
        p: &Prepared,
        call: Call,
        invocation: String,
    ) -> (Result<Output, InvokeError>, Accounting) {
        let started = Instant::now();
        let call_name = call.name();
        let mut account = Accounting {
            invocation: invocation.clone(),
            version: p.manifest.version.as_str().into(),
            call: call_name,
            duration: Duration::ZERO,
            fuel_used: 0,
            peak_memory: 0,
            outcome: Outcome::Ok,
            logs: Vec::new(),
            logs_dropped: 0,
        };
        let result = match self.admit(plugin, p).await {
            Ok(_permits) => self.run(p, call, invocation, &mut account).await,
            Err(e) => Err(e),
        };
        account.duration = started.elapsed();
        if let Err(e) = &result {
            account.outcome = Outcome::Error(e.kind());
        }
        (result, account)
    }

    /// The plugin's place first, so a plugin at its own limit waits (and is
    /// refused) without holding any of the server's slots; both waits share
    /// one `queue_wait_ms`.
    async fn admit<'a>(
        &'a self,
        plugin: Option<&'a PluginConcurrency>,
        p: &Prepared,
    ) -> Result<(Option<PluginPermit<'a>>, tokio::sync::SemaphorePermit<'a>), InvokeError> {
        let deadline = deadline_after(Duration::from_millis(self.config.queue_wait_ms));
        let own = match plugin {
            Some(c) => {
                let limit = self.plugin_limit(&p.manifest);
                Some(
                    c.acquire(limit, deadline)
                        .await
                        .ok_or(InvokeError::Overloaded {
                            scope: LimitScope::Plugin,
                            limit,
                        })?,
                )
            }
            None => None,
        };
        match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok((own, permit)),
            _ => Err(InvokeError::Overloaded {
                scope: LimitScope::Server,
                limit: self.config.max_concurrent,
            }),
        }
    }

    async fn run(
        &self,
        p: &Prepared,
        call: Call,
        invocation: String,
        account: &mut Accounting,
    ) -> Result<Output, InvokeError> {
        let limits = &p.manifest.limits;
        let deadline_ms = limits
            .deadline_ms
            .unwrap_or(self.config.default_deadline_ms);
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        let info = CallInfo {
            plugin: p.manifest.name.as_str().into(),
            version: p.manifest.version.as_str().into(),
            invocation: invocation.into(),
            settings: p.settings.clone(),
        };
        let limiter = Limiter::new(self.memory_cap(&p.manifest), deadline_ms);
        let mut store = Store::new(
            &self.engine,
            HostState::new(info, limiter, p.call_caps(&self.env)),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(fuel).map_err(host)?;
        // Yield to the executor every tick so a busy plugin never starves the
        // server's threads, and stop it once its deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let l = &ctx.data().limiter;
            if Instant::now() >= l.deadline {
                Err(DeadlineExceeded {
                    deadline_ms: l.deadline_ms,
                }
                .into())
            } else {
                // tokio's yield_now lets the I/O driver run before this task
                // is polled again; a plain yield would starve it.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });

        // Host calls (e.g. to a hung API server) are bounded by the same deadline.
        let budget = Duration::from_millis(deadline_ms) + 2 * EPOCH_TICK;
        let outcome = tokio::time::timeout(budget, call_guest(&mut store, p, call)).await;
        account.fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(fuel));
        account.peak_memory = store.data().limiter.peak();
        account.logs = std::mem::take(&mut store.data_mut().logs);
        account.logs_dropped = store.data().logs_dropped;
        let output = match outcome {
            Err(_elapsed) => return Err(InvokeError::Deadline { deadline_ms }),
            Ok(Err(trap)) => return Err(classify(trap, &store, fuel)),
            Ok(Ok(Err(plugin_error))) => {
                let mut e = PluginError::from(plugin_error);
                e.message = store.data().redact(&e.message).into_owned();
                return Err(InvokeError::Plugin(e));
            }
            Ok(Ok(Ok(output))) => output,
        };
        let mut output = output;
        redact(&mut output, store.data());
        let tail = store.data().output_tail();
        if !tail.is_empty() {
            tracing::debug!(target: "capstan::plugin", output = %tail, "plugin wrote to stdout/stderr");
        }
        let size = output_size(&mut output);
        if size > self.config.max_result_bytes {
            return Err(InvokeError::ResultTooLarge {
                size,
                limit: self.config.max_result_bytes,
            });
        }
        Ok(output)
    }
}

async fn call_guest(store: &mut Store<HostState>, p: &Prepared, call: Call) -> GuestResult<Output> {
    let instance = p.pre.instantiate_async(&mut *store).await?;
    let wrong = |role: &str| -> GuestResult<Output> {
        Err(wasmtime::Error::from(WrongCallError(format!(
            "`{}` is not a function of a {role} plugin",
            call.name()
        ))))
    };
    match (&p.indices, call.clone()) {
        (RoleIndices::Provisioner(i), call) => {
            let g = i.load(&mut *store, &instance)?;
            match call {
                Call::Plan { spec } => Ok(g.call_plan(&mut *store, &spec).await?.map(Output::Plan)),
                Call::Apply { spec, dry_run } => Ok(g
                    .call_apply(&mut *store, &spec, dry_run)
                    .await?
                    .map(Output::Report)),
                Call::Destroy { spec, dry_run } => Ok(g
                    .call_destroy(&mut *store, &spec, dry_run)
                    .await?
                    .map(Output::Report)),
                _ => wrong("provisioner"),
            }
        }
        (RoleIndices::DeployStep(i), call) => {
            let g = i.load(&mut *store, &instance)?;
            match call {
                Call::Run { ctx, params } => Ok(g
                    .call_run(&mut *store, &ctx, &params)
                    .await?
                    .map(Output::Step)),
                Call::Rollback { ctx, params } => Ok(g
                    .call_rollback(&mut *store, &ctx, &params)
                    .await?
                    .map(Output::Step)),
                _ => wrong("deploy-step"),
            }
        }
        (RoleIndices::MetricsSource(i), Call::Collect) => {
            let g = i.load(&mut *store, &instance)?;
            Ok(g.call_collect(&mut *store).await?.map(Output::Metrics))
        }
        (RoleIndices::AlertHandler(i), Call::Handle { group }) => {
            let g = i.load(&mut *store, &instance)?;
            Ok(g.call_handle(&mut *store, &group)
                .await?
                .map(Output::Actions))
        }
        (RoleIndices::MetricsSource(_), _) => wrong("metrics-source"),
        (RoleIndices::AlertHandler(_), _) => wrong("alert-handler"),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WrongCallError(String);

fn host(e: wasmtime::Error) -> InvokeError {
    InvokeError::Host(format!("{e:#}"))
}

/// Names a failure precisely: which limit, which trap, and what the guest said.
fn classify(err: wasmtime::Error, store: &Store<HostState>, fuel: u64) -> InvokeError {
    if let Some(e) = err.downcast_ref::<WrongCallError>() {
        return InvokeError::WrongCall(e.0.clone());
    }
    if let Some(d) = err.downcast_ref::<DeadlineExceeded>() {
        return InvokeError::Deadline {
            deadline_ms: d.deadline_ms,
        };
    }
    if let Some(m) = err.downcast_ref::<MemoryLimitExceeded>() {
        return InvokeError::Memory {
            cap: m.cap,
            requested: m.requested,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => InvokeError::Fuel { fuel },
        Some(Trap::StackOverflow) => InvokeError::StackOverflow,
        Some(Trap::Interrupt) => InvokeError::Deadline {
            deadline_ms: store.data().limiter.deadline_ms,
        },
        Some(trap) => {
            let said = store.data().output_tail();
            let message = if said.is_empty() {
                trap.to_string()
            } else {
                format!("{trap}; the plugin printed: {said}")
            };
            InvokeError::Trap { message }
        }
        None => InvokeError::Trap {
            message: format!("{err:#}"),
        },
    }
}

/// Calls `f` on every string of a result: for measuring and redacting it.
fn for_each_string(output: &mut Output, f: &mut dyn FnMut(&mut String)) {
    let kv = |pairs: &mut Vec<(String, String)>, f: &mut dyn FnMut(&mut String)| {
        for (k, v) in pairs {
            f(k);
            f(v);
        }
    };
    match output {
        Output::Plan(p) => {
            for o in &mut p.objects {
                for s in [
                    &mut o.api_version,
                    &mut o.kind,
                    &mut o.name,
                    &mut o.manifest,
                ] {
                    f(s);
                }
                o.namespace.iter_mut().for_each(&mut *f);
            }
            kv(&mut p.owner_labels, f);
            p.notes.iter_mut().for_each(f);
        }
        Output::Report(r) => {
            for o in &mut r.objects {
                for s in [&mut o.api_version, &mut o.kind, &mut o.name] {
                    f(s);
                }
                o.namespace.iter_mut().for_each(&mut *f);
            }
            r.notes.iter_mut().for_each(f);
        }
        Output::Step(s) => {
            f(&mut s.message);
            kv(&mut s.outputs, f);
        }
        Output::Metrics(fams) => {
            for fam in fams {
                f(&mut fam.name);
                f(&mut fam.help);
                for sample in &mut fam.samples {
                    kv(&mut sample.labels, f);
                }
            }
        }
        Output::Actions(actions) => {
            for a in actions {
                match a {
                    alert_handler::Action::Notify(n) => {
                        [&mut n.channel, &mut n.format, &mut n.body]
                            .into_iter()
                            .for_each(&mut *f)
                    }
                    alert_handler::Action::RunPipeline(r) => [&mut r.pipeline, &mut r.params]
                        .into_iter()
                        .for_each(&mut *f),
                    alert_handler::Action::Kube(k) => [
                        &mut k.verb,
                        &mut k.api_version,
                        &mut k.kind,
                        &mut k.namespace,
                        &mut k.name,
                        &mut k.body,
                    ]
                    .into_iter()
                    .for_each(&mut *f),
                    alert_handler::Action::Silence(s) => {
                        kv(&mut s.matchers, f);
                        f(&mut s.comment);
                    }
                }
            }
        }
    }
}

/// Bytes of string data in a result: roughly what a client would receive.
fn output_size(output: &mut Output) -> usize {
    let mut size = 0;
    for_each_string(output, &mut |s| size += s.len());
    size
}

/// Replaces secret values the plugin read during this call with `[REDACTED]`.
fn redact(output: &mut Output, state: &HostState) {
    if state.caps.revealed.is_empty() {
        return;
    }
    for_each_string(output, &mut |s| {
        if let std::borrow::Cow::Owned(clean) = state.redact(s) {
            *s = clean;
        }
    });
}
