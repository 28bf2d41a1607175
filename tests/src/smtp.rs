//! A minimal SMTP sink on loopback: enough of RFC 5321 for one client to
//! deliver (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, no STARTTLS), and
//! it keeps what it got. A real MTA from Debian (exim4, postfix) wants
//! systemd, root-owned spools and a mail name; this is the one provider we
//! fake in-process. Tests can make it refuse the next message with a code.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The DATA, headers and body.
    pub data: String,
}

/// The sink.
#[derive(Clone)]
pub struct SmtpSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    refuse: Arc<Mutex<Option<String>>>,
}

impl SmtpSink {
    /// Starts listening.
    pub async fn start() -> SmtpSink {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = SmtpSink {
            port: l.local_addr().unwrap().port(),
            mails: Arc::default(),
            refuse: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(sock).await;
                });
            }
        });
        sink
    }

    /// Mails accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Answers the next DATA with `reply` (e.g. `550 5.7.1 relaying denied`).
    pub fn refuse_next(&self, reply: &str) {
        *self.refuse.lock().unwrap() = Some(reply.to_string());
    }

    async fn session(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 sink.test ESMTP ready\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                "250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8".into()
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
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
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
                        });
                        format!("250 2.0.0 Ok: queued as {}", mails.len())
                    }
                }
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.2 Command not recognized".into()
            };
            w.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }
}

fn address(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd.find('>').unwrap_or(cmd.len());
    cmd[start..end].to_string()
}
