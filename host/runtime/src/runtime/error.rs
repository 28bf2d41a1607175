//! What can go wrong loading or invoking a plugin, each case precise enough
//! for a plugin author to act on.

use super::bindings::WitError;

/// Why a component could not be loaded as a plugin of its role.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary: {0}")]
    NotWasm(String),
    /// A core module was given where a component is required.
    #[error(
        "this is a core WebAssembly module, not a component; build the plugin with `--target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component failed validation or compilation.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component does not export its role's interface.
    #[error(
        "the manifest says role `{role}`, but the component does not export `{expected}`{found}"
    )]
    WrongWorld {
        /// Role from the manifest.
        role: String,
        /// Interface that was expected.
        expected: String,
        /// What it exports instead, pre-formatted.
        found: String,
    },
    /// The role's interface is exported but a function is missing or mistyped.
    #[error("the component's `{export}` export does not match the contract: {reason}")]
    BadExport {
        /// The interface.
        export: String,
        /// What is wrong.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error("the component imports something the host does not provide: {0}")]
    UnknownImport(String),
    /// Instantiating the component failed (e.g. its start function trapped).
    #[error("the component fails to instantiate: {0}")]
    Instantiate(String),
    /// The manifest's grants cannot be honoured (missing directory, unknown cluster...).
    #[error("the manifest's grants cannot be honoured: {0}")]
    Grants(String),
    /// The precompiled-artifact cache could not be used.
    #[error("artifact cache: {0}")]
    Cache(String),
}

/// Why an invocation did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The plugin ran past its deadline and was stopped.
    #[error("plugin exceeded its deadline of {deadline_ms} ms and was stopped")]
    Deadline {
        /// The deadline.
        deadline_ms: u64,
    },
    /// The plugin tried to use more memory than its cap.
    #[error("plugin exceeded its memory limit of {cap} bytes (asked for {requested})")]
    Memory {
        /// Cap in bytes.
        cap: usize,
        /// What the refused growth would have reached.
        requested: usize,
    },
    /// The plugin used up its fuel.
    #[error("plugin ran out of fuel ({fuel} units)")]
    Fuel {
        /// The fuel it was given.
        fuel: u64,
    },
    /// The plugin overflowed its stack.
    #[error("plugin overflowed its stack")]
    StackOverflow,
    /// The plugin trapped (a panic, unreachable, an out-of-bounds access...).
    #[error("plugin trapped: {message}")]
    Trap {
        /// The trap and what the guest printed before it.
        message: String,
    },
    /// The plugin returned more data than allowed.
    #[error("plugin returned {size} bytes, more than the limit of {limit}")]
    ResultTooLarge {
        /// Size of the result.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin returned its own typed error.
    #[error("plugin returned an error: {0}")]
    Plugin(PluginError),
    /// The request does not fit the plugin's role (e.g. `plan` on a deploy step).
    #[error("{0}")]
    WrongCall(String),
    /// Too many invocations are running; try again shortly.
    #[error("{}", overloaded_message(*scope, *limit))]
    Overloaded {
        /// Which limit was reached: the plugin's own or the server's.
        scope: super::admission::LimitScope,
        /// The concurrency limit.
        limit: usize,
    },
    /// A host-side failure (a bug, or the host ran out of a resource).
    #[error("host error: {0}")]
    Host(String),
}

fn overloaded_message(scope: super::admission::LimitScope, limit: usize) -> String {
    match scope {
        super::admission::LimitScope::Plugin => format!(
            "this plugin already runs {limit} invocations, its concurrency limit (manifest `[limits] max_concurrent`, or the server's `max_concurrent_per_plugin`); retry shortly"
        ),
        super::admission::LimitScope::Server => format!(
            "the server already runs {limit} invocations, its concurrency limit (`[limits] max_concurrent`); retry shortly"
        ),
    }
}

/// A plugin's own typed error, as it returned it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PluginError {
    /// `invalid-input`, `denied`, `not-found`, `failed` or `retryable`.
    pub kind: &'static str,
    /// The plugin's message.
    pub message: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<WitError> for PluginError {
    fn from(e: WitError) -> Self {
        let (kind, message) = match e {
            WitError::InvalidInput(m) => ("invalid-input", m),
            WitError::Denied(m) => ("denied", m),
            WitError::NotFound(m) => ("not-found", m),
            WitError::Failed(m) => ("failed", m),
            WitError::Retryable(m) => ("retryable", m),
        };
        PluginError { kind, message }
    }
}

impl InvokeError {
    /// A stable, machine-readable name for the error kind (metrics label, API code).
    pub fn kind(&self) -> &'static str {
        match self {
            InvokeError::Deadline { .. } => "deadline_exceeded",
            InvokeError::Memory { .. } => "memory_limit_exceeded",
            InvokeError::Fuel { .. } => "fuel_exhausted",
            InvokeError::StackOverflow => "stack_overflow",
            InvokeError::Trap { .. } => "trap",
            InvokeError::ResultTooLarge { .. } => "result_too_large",
            InvokeError::Plugin(_) => "plugin_error",
            InvokeError::WrongCall(_) => "wrong_call",
            InvokeError::Overloaded { .. } => "overloaded",
            InvokeError::Host(_) => "host_error",
        }
    }
}
