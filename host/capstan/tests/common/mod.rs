//! What the tests of the real `capstan` binary share: a child process that
//! is killed when dropped, a free loopback port, and an HTTP client.

use std::process::Child;

/// A running `capstan` process and its base URL.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client (reqwest's rustls has no provider of its own: ring first).
#[allow(dead_code)]
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
