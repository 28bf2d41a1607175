//! A real HAProxy (Debian package `haproxy`) in front of test replicas: a
//! loopback frontend balancing round-robin over the given backends, with
//! active health checks and retries as a production setup would have them,
//! started as a child (`haproxy -f cfg -db`) and killed on drop.
//!
//! ```ignore
//! let lb = capstan_tests::peers::haproxy(&[a.addr, b.addr], "/readyz")?;
//! lb.wait_until(|s| s.iter().all(|s| s.up()))?;
//! client.get(format!("{}/healthz", lb.url())).send().await?;
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const BINARY: &str = "/usr/sbin/haproxy";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running HAProxy; killed (SIGKILL) on drop.
pub struct HaproxyPeer {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// One backend server as HAProxy's runtime API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `replica0`, `replica1`... in the order the backends were given.
    pub name: String,
    /// The backend's address.
    pub addr: SocketAddr,
    /// `UP`, `DOWN`, `MAINT`, or a transition such as `UP 1/2` (one failed
    /// check of the two that mark it down).
    pub status: String,
}

impl ServerState {
    /// Whether HAProxy sends it traffic (fully up, not in transition).
    pub fn up(&self) -> bool {
        self.status == "UP"
    }
}

/// HAProxy on a free loopback port balancing over `backends` (servers
/// `replica0`, `replica1`... in this order), each checked every 200 ms with
/// `GET health_path` (down after 2 failures, up after 2 successes). A request
/// whose connection fails, gets no answer or times out is retried up to 3
/// times, each time on another server. Returns once the frontend accepts
/// connections; the backends need not be up (see [`HaproxyPeer::wait_until`]).
pub fn haproxy(backends: &[SocketAddr], health_path: &str) -> Result<HaproxyPeer> {
    if !Path::new(BINARY).exists() {
        bail!("{BINARY} is missing: run `bash tests/run.sh` (it installs Debian's haproxy)");
    }
    if backends.is_empty() || !health_path.starts_with('/') || health_path.contains(' ') {
        bail!("haproxy needs backends and an absolute health path without spaces");
    }
    // The port is picked free and released before HAProxy binds it: retry
    // if another process took it in between.
    let mut last = None;
    for _ in 0..3 {
        let dir = tempfile::Builder::new()
            .prefix("capstan-haproxy-")
            .tempdir()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(addr, backends, health_path, dir.path()))?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new(BINARY)
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        let mut peer = HaproxyPeer { addr, child, dir };
        match peer.wait_listening() {
            Ok(()) => return Ok(peer),
            Err(e) if format!("{e:#}").contains("Address already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("haproxy did not start")))
}

/// The configuration: a frontend on `addr`, a round-robin backend over
/// `backends`, logs on stderr and the runtime API on `dir/admin.sock`.
fn config(addr: SocketAddr, backends: &[SocketAddr], health_path: &str, dir: &Path) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server replica{i} {b} check\n"))
        .collect();
    let sock = dir.join("admin.sock");
    format!(
        "global
    maxconn 2000
    log stderr format raw local0 info
    stats socket {sock} mode 600 level admin

defaults
    mode http
    log global
    option httplog
    # A request is retried when the connection fails, the server closes it
    # without an answer (killed mid-request) or does not answer in time;
    # `redispatch 1` sends every retry to another server, right away.
    retries 3
    retry-on conn-failure empty-response response-timeout
    option redispatch 1
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check 1s

frontend capstan
    bind {addr}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET {health_path}
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}",
        sock = sock.display()
    )
}

impl HaproxyPeer {
    /// `http://127.0.0.1:PORT`, the frontend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The frontend's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HAProxy's log: startup messages, one line per request (`option
    /// httplog`: status, termination state and retries) and server state
    /// changes.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The path of [`HaproxyPeer::log`].
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    /// The backend servers' states, from the runtime API (`show stat`).
    pub fn servers(&self) -> Result<Vec<ServerState>> {
        let stat = self.command("show stat")?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .context("empty `show stat`")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (pxname, svname, status, addr) = (
            col("pxname").context("no pxname")?,
            col("svname").context("no svname")?,
            col("status").context("no status")?,
            col("addr").context("no addr column (HAProxy < 1.9?)")?,
        );
        let mut servers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            if f.get(pxname) != Some(&"replicas") || f[svname] == "BACKEND" {
                continue;
            }
            servers.push(ServerState {
                name: f[svname].to_string(),
                addr: f[addr].parse().with_context(|| format!("addr in {line}"))?,
                status: f[status].to_string(),
            });
        }
        Ok(servers)
    }

    /// Waits (up to 10 s) until `cond` holds for the servers' states, e.g.
    /// every server up after start, or a killed replica marked down.
    pub fn wait_until(&self, cond: impl Fn(&[ServerState]) -> bool) -> Result<Vec<ServerState>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let servers = self.servers()?;
            if cond(&servers) {
                return Ok(servers);
            }
            if Instant::now() > deadline {
                bail!("HAProxy servers did not reach the expected state: {servers:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command to the runtime API and returns its answer.
    pub fn command(&self, cmd: &str) -> Result<String> {
        let sock = self.dir.path().join("admin.sock");
        let mut s = UnixStream::connect(&sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = String::new();
        for line in BufReader::new(s).lines() {
            out.push_str(&line?);
            out.push('\n');
        }
        Ok(out)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited at start ({status}):\n{}", self.log());
            }
            // The runtime API answers once HAProxy has bound every listener,
            // so the frontend port is its own and not another process's that
            // took the port first (HAProxy then exits: "Address already in use").
            if self.command("show info").is_ok()
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy not listening on {} after 10 s:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HaproxyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    //! Against two tiny HTTP backends on loopback: balancing, draining (a
    //! failing health check) and a backend that stops listening.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// A backend answering its name on every path, and 200 or 503 on
    /// `/readyz` after `ready`; it stops listening when `stop` is set.
    struct Backend {
        addr: SocketAddr,
        ready: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Backend {
        fn start(name: &'static str) -> Backend {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let (ready, stop) = (
                Arc::new(AtomicBool::new(true)),
                Arc::new(AtomicBool::new(false)),
            );
            let (r, s) = (ready.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                while !s.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((conn, _)) => answer(conn, name, r.load(Ordering::Acquire)),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            Backend {
                addr,
                ready,
                stop,
                thread: Some(thread),
            }
        }

        /// Stops listening: connections are refused from now on.
        fn kill(&mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn answer(conn: TcpStream, name: &str, ready: bool) {
        conn.set_nonblocking(false).unwrap();
        let mut reader = BufReader::new(conn);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let status = if request_line.contains(" /readyz ") && !ready {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let _ = write!(
            reader.get_mut(),
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        );
    }

    /// `GET /` through `addr`: (status, body).
    fn get(addr: SocketAddr) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    }

    fn answers(addr: SocketAddr, n: usize) -> Vec<(u16, String)> {
        (0..n).map(|_| get(addr)).collect()
    }

    #[test]
    fn balances_drains_and_fails_over() {
        let (mut a, b) = (Backend::start("a"), Backend::start("b"));
        let lb = super::haproxy(&[a.addr, b.addr], "/readyz").unwrap();
        let servers = lb.wait_until(|s| s.iter().all(|s| s.up())).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            (servers[0].name.as_str(), servers[0].addr),
            ("replica0", a.addr)
        );

        // Round-robin: both backends answer.
        let got = answers(lb.addr(), 6);
        for name in ["a", "b"] {
            assert!(
                got.contains(&(200, name.into())),
                "{name} never answered: {got:?}"
            );
        }

        // A not ready (draining): taken out of rotation while still listening.
        a.ready.store(false, Ordering::Release);
        lb.wait_until(|s| s[0].status == "DOWN" && s[1].up())
            .unwrap();
        assert_eq!(answers(lb.addr(), 4), vec![(200, "b".to_string()); 4]);

        // A ready again, then gone: the requests it would get are retried on B.
        a.ready.store(true, Ordering::Release);
        lb.wait_until(|s| s.iter().all(|s| s.up())).unwrap();
        a.kill();
        assert_eq!(answers(lb.addr(), 6), vec![(200, "b".to_string()); 6]);
        lb.wait_until(|s| s[0].status == "DOWN").unwrap();
        assert!(lb.log().contains("replica0 is DOWN"), "{}", lb.log());

        // Dropping the peer stops HAProxy.
        let addr = lb.addr();
        drop(lb);
        assert!(
            TcpStream::connect(addr).is_err(),
            "haproxy still listens on {addr}"
        );
    }
}
