//! Real Redis and MariaDB servers (Debian packages `redis-server`,
//! `mariadb-server`) and an `openssl s_server`, started on loopback ports
//! with temporary directories, no systemd, and killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A service process with its own temporary directory.
pub struct Service {
    /// Its loopback port.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// What the service logged (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }
}

fn need(path: &str, package: &str) -> Result<()> {
    if !Path::new(path).exists() {
        bail!("{path} is missing: run `bash tests/run.sh` (it installs Debian's {package})");
    }
    Ok(())
}

/// Waits until something accepts connections on `port` (or 60 s pass).
async fn wait_listening(port: u16, child: &mut Child) -> Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status} before listening");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("port {port} did not open within 60 s")
}

/// `redis-server` on a free loopback port, without persistence.
pub async fn redis() -> Result<Service> {
    need("/usr/bin/redis-server", "redis-server")?;
    let dir = tempfile::tempdir()?;
    let port = crate::procs::free_port();
    let child = Command::new("/usr/bin/redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::fs::File::create(dir.path().join("service.log"))?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let mut s = Service { port, child, dir };
    wait_listening(port, &mut s.child)
        .await
        .with_context(|| format!("redis-server: {}", s.log()))?;
    Ok(s)
}

/// `mariadbd` on a free loopback port, with a fresh data directory
/// (`mariadb-install-db`), grant tables skipped (run as root: `--user=root`).
pub async fn mariadb() -> Result<Service> {
    need("/usr/sbin/mariadbd", "mariadb-server")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let out = Command::new("/usr/bin/mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .context("running mariadb-install-db")?;
    if !out.status.success() {
        bail!(
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = crate::procs::free_port();
    let child = Command::new("/usr/sbin/mariadbd")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!(
            "--socket={}",
            dir.path().join("mysqld.sock").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("mysqld.pid").display()
        ))
        .arg(format!(
            "--log-error={}",
            dir.path().join("service.log").display()
        ))
        .args([
            &format!("--port={port}"),
            "--bind-address=127.0.0.1",
            "--user=root",
            "--skip-grant-tables",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mariadbd")?;
    let mut s = Service { port, child, dir };
    wait_listening(port, &mut s.child)
        .await
        .with_context(|| format!("mariadbd: {}", s.log()))?;
    Ok(s)
}

/// An `openssl s_server -www` on 127.0.0.1 with a self-signed certificate
/// for `localhost` (valid 2 days); killed on drop.
pub struct TlsServer {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    /// The certificate it presents (PEM), e.g. to trust it.
    pub cert: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    /// The certificate's `notAfter` as Unix seconds (read by `openssl x509`).
    pub fn not_after(&self) -> u64 {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
            .arg(&self.cert)
            .output()
            .expect("openssl x509");
        let text = String::from_utf8_lossy(&out.stdout);
        let date = text.trim().trim_start_matches("notAfter=");
        let out = Command::new("date")
            .args(["-u", "-d", date, "+%s"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("notAfter `{date}` did not parse"))
    }
}

/// Starts an `openssl s_server` (see [`TlsServer`]).
pub async fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::self_signed_cert(dir.path());
    let port = crate::procs::free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let server = TlsServer {
        child,
        port,
        cert,
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not start on port {port}");
}
