//! A minimal SMTP sink on loopback: enough of RFC 5321 for one client to
//! deliver (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), and it keeps what
//! it got. A real MTA from Debian (exim4, postfix) wants systemd, root-owned
//! spools and a mail name; this is the one provider we fake in-process. Tests
//! can make it refuse the next message with a code.
//!
//! [`SmtpSink::start`] speaks clear text only (no STARTTLS offered);
//! [`SmtpSink::start_implicit_tls`] speaks TLS from the first byte (SMTPS,
//! as on port 465); [`SmtpSink::start_starttls`] offers `STARTTLS` in its
//! EHLO answer and upgrades when asked (RFC 3207: the session starts over,
//! the client says EHLO again). Each [`Mail`] records whether it came over
//! TLS.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::TlsAcceptor;

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The DATA, headers and body.
    pub data: String,
    /// Whether the session was encrypted (implicit TLS or after STARTTLS).
    pub tls: bool,
}

/// How the sink speaks.
#[derive(Clone)]
enum Mode {
    Plain,
    ImplicitTls(TlsAcceptor),
    StartTls(TlsAcceptor),
}

/// The sink.
#[derive(Clone)]
pub struct SmtpSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    refuse: Arc<Mutex<Option<String>>>,
    /// `STARTTLS` commands answered with 220.
    upgrades: Arc<Mutex<usize>>,
    mode: Mode,
}

/// What a session asks of its caller when it ends.
enum Ended<S> {
    /// The client quit or hung up.
    Closed,
    /// STARTTLS was accepted: the caller wraps this stream in TLS.
    Upgrade(S),
}

impl SmtpSink {
    /// Starts listening, clear text only.
    pub async fn start() -> SmtpSink {
        Self::listen(Mode::Plain).await
    }

    /// Starts listening with TLS from the first byte (SMTPS), presenting
    /// the PEM certificate `cert` with key `key` (e.g. from
    /// [`crate::self_signed_cert`]).
    pub async fn start_implicit_tls(cert: &Path, key: &Path) -> SmtpSink {
        Self::listen(Mode::ImplicitTls(acceptor(cert, key))).await
    }

    /// Starts listening in clear text, offering `STARTTLS` with the PEM
    /// certificate `cert` and key `key`.
    pub async fn start_starttls(cert: &Path, key: &Path) -> SmtpSink {
        Self::listen(Mode::StartTls(acceptor(cert, key))).await
    }

    async fn listen(mode: Mode) -> SmtpSink {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = SmtpSink {
            port: l.local_addr().unwrap().port(),
            mails: Arc::default(),
            refuse: Arc::default(),
            upgrades: Arc::default(),
            mode,
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(sock).await;
                });
            }
        });
        sink
    }

    /// Mails accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// How many STARTTLS upgrades were accepted.
    pub fn upgrades(&self) -> usize {
        *self.upgrades.lock().unwrap()
    }

    /// Answers the next DATA with `reply` (e.g. `550 5.7.1 relaying denied`).
    pub fn refuse_next(&self, reply: &str) {
        *self.refuse.lock().unwrap() = Some(reply.to_string());
    }

    async fn serve(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        match &self.mode {
            Mode::Plain => self.session(sock, false, true, false).await.map(drop),
            Mode::ImplicitTls(acceptor) => {
                let tls = acceptor.accept(sock).await?;
                self.session(tls, true, true, false).await.map(drop)
            }
            Mode::StartTls(acceptor) => match self.session(sock, false, true, true).await? {
                Ended::Closed => Ok(()),
                Ended::Upgrade(sock) => {
                    let tls = acceptor.accept(sock).await?;
                    // No greeting after the handshake: the client speaks first.
                    self.session(tls, true, false, false).await.map(drop)
                }
            },
        }
    }

    /// One SMTP session over `stream`: `tls` if it is encrypted, `greet` to
    /// send the 220 banner first, `offer_starttls` to advertise and accept
    /// STARTTLS.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        tls: bool,
        greet: bool,
        offer_starttls: bool,
    ) -> std::io::Result<Ended<S>> {
        let mut s = BufReader::new(stream);
        if greet {
            s.write_all(b"220 sink.test ESMTP ready\r\n").await?;
        }
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if s.read_line(&mut line).await? == 0 {
                return Ok(Ended::Closed);
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                let starttls = if offer_starttls {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!("250-sink.test\r\n{starttls}250-8BITMIME\r\n250 SMTPUTF8")
            } else if upper == "STARTTLS" && offer_starttls {
                s.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                *self.upgrades.lock().unwrap() += 1;
                // Whatever the client sent after STARTTLS in clear is
                // dropped with the buffer (RFC 3207 section 4.2).
                return Ok(Ended::Upgrade(s.into_inner()));
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                "250 OK".into()
            } else if upper.starts_with("RSET") {
                (from, to) = (String::new(), Vec::new());
                "250 OK".into()
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&cmd);
                "250 2.1.0 OK".into()
            } else if upper.starts_with("RCPT TO:") {
                to.push(address(&cmd));
                "250 2.1.5 OK".into()
            } else if upper == "DATA" {
                s.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if s.read_line(&mut line).await? == 0 {
                        return Ok(Ended::Closed);
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(
                        line.strip_prefix('.')
                            .filter(|_| line.starts_with(".."))
                            .unwrap_or(&line),
                    );
                }
                match self.refuse.lock().unwrap().take() {
                    Some(reply) => reply,
                    None => {
                        let mut mails = self.mails.lock().unwrap();
                        mails.push(Mail {
                            from: std::mem::take(&mut from),
                            to: std::mem::take(&mut to),
                            data,
                            tls,
                        });
                        format!("250 2.0.0 Ok: queued as {}", mails.len())
                    }
                }
            } else if upper == "QUIT" {
                s.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(Ended::Closed);
            } else {
                "502 5.5.2 Command not recognized".into()
            };
            s.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }
}

/// A TLS acceptor for the PEM certificate chain `cert` and key `key`.
fn acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("reading {}: {e}", cert.display()));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("reading {}: {e}", key.display()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("a usable certificate and key");
    TlsAcceptor::from(Arc::new(config))
}

fn address(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd.find('>').unwrap_or(cmd.len());
    cmd[start..end].to_string()
}
