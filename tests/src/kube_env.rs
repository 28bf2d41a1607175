//! A real Kubernetes API server for end-to-end tests: Debian's `etcd` plus a
//! `kube-apiserver` v1.20.2 built from Debian's `kubernetes` source package by
//! `.ci/kube-testenv.sh build` (cached under `~/.cache/capstan/kube/bin/`),
//! both listening on loopback ports picked at start.
//!
//! There is no scheduler, kubelet or controller-manager: objects are stored
//! and served (CRUD, watch, RBAC, server-side apply), but pods stay Pending,
//! Deployments get no ReplicaSets and namespaces are not garbage-collected.
//! APIs newer than Kubernetes 1.20 do not exist.
//!
//! Authentication is by static bearer tokens (`--token-auth-file`): an admin
//! in group `system:masters`, plus any users given to
//! [`KubeEnv::start_with_tokens`]. Authorization is RBAC, so a user without
//! a binding gets 403 on everything but discovery and health endpoints.
//!
//! ```ignore
//! let env = capstan_tests::kube_env::shared();
//! // env.server, env.admin_token, env.kubeconfig (context `test`)
//! let alice = env.token("alice").unwrap(); // no RBAC bindings
//! ```

use std::collections::hash_map::RandomState;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

/// Env var that overrides the path of the kube-apiserver binary.
pub const APISERVER_ENV: &str = "CAPSTAN_KUBE_APISERVER";

/// Users (besides the admin) that [`shared`] creates tokens for. They are in
/// no group but `system:authenticated`, so they have no RBAC permissions
/// until a test binds a role to them (use a namespace of your own: the
/// environment is shared by every test of the process).
pub const SHARED_USERS: &[&str] = &["alice", "bob"];

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A real etcd + kube-apiserver on loopback, stopped on drop.
pub struct KubeEnv {
    /// `https://127.0.0.1:PORT` (self-signed certificate: skip verification).
    pub server: String,
    /// Bearer token of user `admin` in group `system:masters`.
    pub admin_token: String,
    /// A kubeconfig for the admin: cluster with `insecure-skip-tls-verify`,
    /// user with the token, context (and current context) `test`.
    pub kubeconfig: PathBuf,
    /// `(user, token)` for the users given at start, admin excluded.
    tokens: Vec<(String, String)>,
    // Stopped in this order: apiserver first, then etcd.
    apiserver: Supervised,
    etcd: Supervised,
    // Dropped last: data, keys, certificates, logs.
    dir: TempDir,
}

impl std::fmt::Debug for KubeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEnv")
            .field("server", &self.server)
            .field("kubeconfig", &self.kubeconfig)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// The environment shared by all tests of this test process, started on
/// first use with tokens for [`SHARED_USERS`]. Panics (in every caller) if it
/// could not be started.
///
/// A static is never dropped, so its servers are not stopped by `Drop`: they
/// stop when the test process exits, however it exits (see [`Supervised`]),
/// and their temporary directory is removed then too.
pub fn shared() -> &'static KubeEnv {
    static SHARED: OnceLock<Result<KubeEnv, String>> = OnceLock::new();
    let env = SHARED.get_or_init(|| {
        let users: Vec<(&str, &[&str])> = SHARED_USERS.iter().map(|u| (*u, &[][..])).collect();
        KubeEnv::start_with_tokens(&users).map_err(|e| format!("{e:#}"))
    });
    match env {
        Ok(env) => env,
        Err(e) => panic!("shared Kubernetes test environment: {e}"),
    }
}

/// Where the kube-apiserver binary is: `$CAPSTAN_KUBE_APISERVER`, else
/// `${CAPSTAN_CACHE:-$HOME/.cache/capstan}/kube/bin/kube-apiserver`.
pub fn apiserver_path() -> PathBuf {
    if let Some(p) = std::env::var_os(APISERVER_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = match std::env::var_os("CAPSTAN_CACHE").filter(|p| !p.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/capstan")
        }
    };
    cache.join("kube/bin/kube-apiserver")
}

fn etcd_path() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/bin/etcd")
}

impl KubeEnv {
    /// Start etcd and kube-apiserver with only the admin token.
    pub fn start() -> Result<KubeEnv> {
        Self::start_with_tokens(&[])
    }

    /// Start etcd and kube-apiserver with the admin token plus one token per
    /// `(user, groups)` (all in `system:authenticated` too); get them back
    /// with [`KubeEnv::token`]. Blocks until `/readyz` answers ok (a few
    /// seconds; fails after 60 s with the tail of the apiserver's log).
    pub fn start_with_tokens(users: &[(&str, &[&str])]) -> Result<KubeEnv> {
        let apiserver = apiserver_path();
        if !apiserver.is_file() {
            bail!(
                "kube-apiserver not found at {} (set {APISERVER_ENV} to override): \
                 run `.ci/kube-testenv.sh install && .ci/kube-testenv.sh build` first",
                apiserver.display()
            );
        }
        let etcd = etcd_path();
        if !etcd.is_file() {
            bail!(
                "etcd not found on PATH nor at {}: run `.ci/kube-testenv.sh install` \
                 (Debian package etcd-server)",
                etcd.display()
            );
        }
        for (user, _) in users {
            if *user == "admin" || user.is_empty() || user.contains([',', '"', '\n']) {
                bail!("invalid extra token user name {user:?}");
            }
        }

        // Ports are picked by binding :0 and released before the servers bind
        // them, so another process may take one in between: retry then.
        let mut last_err = None;
        for _attempt in 0..3 {
            match Self::try_start(&apiserver, &etcd, users) {
                Ok(env) => return Ok(env),
                Err(StartError::PortTaken(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("could not start")))
    }

    /// The bearer token of `user` (one given at start, or `admin`).
    pub fn token(&self, user: &str) -> Option<&str> {
        if user == "admin" {
            return Some(&self.admin_token);
        }
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
    }

    /// Write a kubeconfig like [`KubeEnv::kubeconfig`] but for `user` (one
    /// given at start), into the environment's directory; returns its path.
    pub fn kubeconfig_for(&self, user: &str) -> Result<PathBuf> {
        let token = self
            .token(user)
            .with_context(|| format!("no token for user {user:?}"))?;
        let path = self.dir.path().join(format!("kubeconfig-{user}.yaml"));
        fs::write(&path, kubeconfig_yaml(&self.server, user, token))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The apiserver's self-signed serving certificate followed by the CA
    /// that signed it (`--cert-dir`, for 127.0.0.1 and localhost): `curl
    /// --cacert` verifies the server with it, as an alternative to skipping
    /// verification.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// The directory holding the etcd data, keys, certificates and the logs
    /// `etcd.log` and `kube-apiserver.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn try_start(
        apiserver_bin: &Path,
        etcd_bin: &Path,
        users: &[(&str, &[&str])],
    ) -> Result<KubeEnv, StartError> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("capstan-kube-")
            .tempdir()
            .context("creating the temporary directory")?;
        let d = dir.path();

        // Service-account signing key pair.
        let sa_key = d.join("sa.key");
        let sa_pub = d.join("sa.pub");
        run_quiet(
            Command::new("openssl")
                .arg("genrsa")
                .arg("-out")
                .arg(&sa_key)
                .arg("2048"),
        )?;
        run_quiet(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&sa_key)
                .arg("-out")
                .arg(&sa_pub),
        )?;

        // Static tokens: `token,user,uid,"group1,group2"`.
        let admin_token = random_token();
        let mut csv = format!("{admin_token},admin,uid-admin,\"system:masters\"\n");
        let mut tokens = Vec::new();
        for (user, groups) in users {
            let token = random_token();
            csv.push_str(&format!(
                "{token},{user},uid-{user},\"{}\"\n",
                groups.join(",")
            ));
            tokens.push((user.to_string(), token));
        }
        let token_file = d.join("tokens.csv");
        fs::write(&token_file, csv).context("writing tokens.csv")?;

        let [client_port, peer_port, secure_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = d.join("kubeconfig.yaml");
        fs::write(&kubeconfig, kubeconfig_yaml(&server, "admin", &admin_token))
            .context("writing kubeconfig.yaml")?;

        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd_cmd = Command::new(etcd_bin);
        etcd_cmd
            .arg("--name=default")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"));
        // Only etcd's watchdog removes the directory: it is the last to stop.
        let etcd = Supervised::spawn("etcd", &etcd_cmd, &d.join("etcd.log"), Some(d))?;

        let mut api_cmd = Command::new(apiserver_bin);
        api_cmd
            .arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={secure_port}"))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false");
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &api_cmd,
            &d.join("kube-apiserver.log"),
            None,
        )?;

        let mut env = KubeEnv {
            server,
            admin_token,
            kubeconfig,
            tokens,
            apiserver,
            etcd,
            dir,
        };
        env.wait_ready(started)?;
        Ok(env)
    }

    fn wait_ready(&mut self, started: Instant) -> Result<(), StartError> {
        let url = format!("{}/readyz", self.server);
        let auth = format!("Authorization: Bearer {}", self.admin_token);
        loop {
            for proc in [&mut self.etcd, &mut self.apiserver] {
                if let Some(status) = proc.child.try_wait().context("checking a child process")? {
                    let tail = log_tail(&proc.log, 40);
                    let msg = anyhow!(
                        "{} exited during startup ({status}); last lines of {}:\n{tail}",
                        proc.name,
                        proc.log.display()
                    );
                    return Err(if tail.contains("address already in use") {
                        StartError::PortTaken(msg)
                    } else {
                        StartError::Other(msg)
                    });
                }
            }
            let ok = Command::new("curl")
                .args([
                    "-k",
                    "-sf",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "2",
                    "-H",
                    &auth,
                    &url,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running curl (is it installed?)")?
                .success();
            if ok {
                eprintln!(
                    "kube_env: kube-apiserver ready at {} after {:.1} s (dir {})",
                    self.server,
                    started.elapsed().as_secs_f64(),
                    self.dir.path().display()
                );
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(StartError::Other(anyhow!(
                    "kube-apiserver at {} not ready after {} s; last lines of {}:\n{}",
                    self.server,
                    READY_TIMEOUT.as_secs(),
                    self.apiserver.log.display(),
                    log_tail(&self.apiserver.log, 40)
                )));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }
}

enum StartError {
    /// A server lost the race for a port we picked: worth another try.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// A server process under a small `sh` watchdog that kills it when the test
/// process goes away.
///
/// Why: [`shared`] keeps its `KubeEnv` in a static, and statics are never
/// dropped, so `Drop` cannot be relied on; a test process may also die from a
/// panic in another thread, a signal or a harness timeout. `prctl(
/// PR_SET_PDEATHSIG)` needs `libc` and `unsafe` (both unavailable here), and
/// polling the parent's PID is fooled by PID reuse. Instead the watchdog's
/// stdin is a pipe whose only write end is held by this process (Rust opens
/// pipes close-on-exec, so no other child inherits it). The kernel closes
/// that end when the process exits for any reason, including SIGKILL; the
/// watchdog then reads EOF and sends SIGTERM to the server (SIGKILL 5 s
/// later). `Drop` closes the pipe itself to the same effect and then waits.
/// The watchdog exits with the server's status, so `try_wait` on it tells
/// whether the server died. With `cleanup_dir`, the watchdog also removes
/// that directory after it stopped the server (not when the server died by
/// itself: its log is read for the error then): a static env's `TempDir` is
/// never dropped either.
struct Supervised {
    name: &'static str,
    log: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG: &str = r#"
cleanup=$CAPSTAN_KUBE_CLEANUP
exec 3<&0 0</dev/null
"$@" 3<&- &
child=$!
(
    read -r _ <&3
    if [ -n "$cleanup" ]; then : >"$cleanup/.stop-requested"; fi
    kill -TERM "$child" 2>/dev/null
    sleep 5
    kill -KILL "$child" 2>/dev/null
) &
reader=$!
exec 3<&-
wait "$child"
status=$?
kill "$reader" 2>/dev/null
if [ -n "$cleanup" ] && [ -e "$cleanup/.stop-requested" ]; then rm -rf "$cleanup"; fi
exit "$status"
"#;

impl Supervised {
    fn spawn(
        name: &'static str,
        cmd: &Command,
        log: &Path,
        cleanup_dir: Option<&Path>,
    ) -> Result<Supervised> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(WATCHDOG).arg("capstan-kube-watchdog");
        sh.arg(cmd.get_program()).args(cmd.get_args());
        sh.env(
            "CAPSTAN_KUBE_CLEANUP",
            cleanup_dir.map(|d| d.as_os_str()).unwrap_or_default(),
        );
        sh.stdin(Stdio::piped()).stdout(out).stderr(err);
        let mut child = sh
            .spawn()
            .with_context(|| format!("starting {name} under sh"))?;
        let stdin = child.stdin.take();
        Ok(Supervised {
            name,
            log: log.to_path_buf(),
            child,
            stdin,
        })
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(50)),
            }
        }
        eprintln!(
            "kube_env: {} did not stop within {STOP_TIMEOUT:?}",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three distinct free loopback ports (held together while picking).
fn free_ports() -> Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let mut ports = [0u16; 3];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// 32 hex digits from std's randomly keyed hasher (test tokens only).
fn random_token() -> String {
    let mut out = String::new();
    for i in 0..2u8 {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn kubeconfig_yaml(server: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: {user}
current-context: test
"
    )
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?} (is it installed?)", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}
