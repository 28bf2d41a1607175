//! A small blocking TCP client over `wasi:sockets`, with a deadline on
//! every step. The host checks each connect against `[grants.tcp]`: a
//! target outside the grant fails with [`Error::Denied`].
//!
//! ```no_run
//! use std::time::Duration;
//! let mut conn = capstan_sdk::tcp::connect("127.0.0.1", 6379, Duration::from_secs(2))?;
//! conn.write_all(b"PING\r\n")?;
//! let reply = conn.read_until(|b| b.ends_with(b"\r\n"), 512)?;
//! assert_eq!(reply, b"+PONG\r\n");
//! # Ok::<(), capstan_sdk::Error>(())
//! ```

use std::net::IpAddr;
use std::time::{Duration, Instant};

use wasip2::clocks::monotonic_clock;
use wasip2::io::poll::{Pollable, poll};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::ip_name_lookup::resolve_addresses;
use wasip2::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
};
use wasip2::sockets::tcp::TcpSocket;
use wasip2::sockets::tcp_create_socket::create_tcp_socket;

use crate::Error;

/// How long the steps of [`connect`] took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Name resolution (zero for an address literal).
    pub resolve: Duration,
    /// The TCP handshake (of the address that answered).
    pub connect: Duration,
}

/// An open connection. Reads and writes share the deadline given to
/// [`connect`]; the invocation's own deadline bounds everything anyway.
pub struct TcpStream {
    // Field order is drop order: the streams are children of the socket.
    input: InputStream,
    output: OutputStream,
    _socket: TcpSocket,
    deadline: Instant,
    peer: IpAddr,
    timings: Timings,
}

/// Resolves `host` (unless it is an address) and connects to `port` on the
/// first address that answers, all within `timeout`.
pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Error> {
    let deadline = Instant::now() + timeout;
    let network = instance_network();
    let started = Instant::now();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let stream =
                resolve_addresses(&network, host).map_err(|e| map_error("resolve", host, e))?;
            let mut out = Vec::new();
            loop {
                match stream.resolve_next_address() {
                    Ok(Some(a)) => out.push(from_wasi(a)),
                    Ok(None) => break,
                    Err(ErrorCode::WouldBlock) => {
                        wait(&stream.subscribe(), deadline, "resolve", host)?
                    }
                    Err(e) => return Err(map_error("resolve", host, e)),
                }
            }
            out
        }
    };
    let resolve = started.elapsed();
    let mut last = Error::NotFound(format!("{host} has no address"));
    for ip in addrs {
        let started = Instant::now();
        match connect_one(&network, ip, port, deadline) {
            Ok((socket, input, output)) => {
                return Ok(TcpStream {
                    input,
                    output,
                    _socket: socket,
                    deadline,
                    peer: ip,
                    timings: Timings {
                        resolve,
                        connect: started.elapsed(),
                    },
                });
            }
            Err(e @ Error::Denied(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connect_one(
    network: &wasip2::sockets::network::Network,
    ip: IpAddr,
    port: u16,
    deadline: Instant,
) -> Result<(TcpSocket, InputStream, OutputStream), Error> {
    let target = format!("{}", std::net::SocketAddr::new(ip, port));
    let (family, addr) = to_wasi(ip, port);
    let socket = create_tcp_socket(family).map_err(|e| map_error("connect", &target, e))?;
    socket
        .start_connect(network, addr)
        .map_err(|e| map_error("connect", &target, e))?;
    let ready = socket.subscribe();
    loop {
        match socket.finish_connect() {
            Ok((i, o)) => {
                drop(ready);
                return Ok((socket, i, o));
            }
            Err(ErrorCode::WouldBlock) => wait(&ready, deadline, "connect", &target)?,
            Err(e) => return Err(map_error("connect", &target, e)),
        }
    }
}

impl TcpStream {
    /// How long resolving and connecting took.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The address connected to.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Writes all of `data` and flushes it.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(4096) {
            self.output
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Failed(format!("tcp write to {}: {e:?}", self.peer)))?;
        }
        Ok(())
    }

    /// Up to `max` bytes, waiting until some arrive; empty at end of stream.
    pub fn read_some(&mut self, max: usize) -> Result<Vec<u8>, Error> {
        loop {
            match self.input.read(max as u64) {
                Ok(b) if b.is_empty() => {
                    let peer = self.peer.to_string();
                    wait(&self.input.subscribe(), self.deadline, "read", &peer)?;
                }
                Ok(b) => return Ok(b),
                Err(StreamError::Closed) => return Ok(Vec::new()),
                Err(e) => return Err(Error::Failed(format!("tcp read from {}: {e:?}", self.peer))),
            }
        }
    }

    /// Reads until `done` holds for what was read, the peer closes, or
    /// `max` bytes arrived.
    pub fn read_until(
        &mut self,
        done: impl Fn(&[u8]) -> bool,
        max: usize,
    ) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::new();
        while !done(&buf) && buf.len() < max {
            let more = self.read_some(max - buf.len())?;
            if more.is_empty() {
                break;
            }
            buf.extend(more);
        }
        Ok(buf)
    }
}

/// Waits for `p` until `deadline`.
fn wait(p: &Pollable, deadline: Instant, step: &str, target: &str) -> Result<(), Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Failed(format!("tcp {step} {target}: timed out")));
    }
    let timer = monotonic_clock::subscribe_duration(left.as_nanos() as u64);
    let ready = poll(&[p, &timer]);
    if ready.contains(&0) {
        Ok(())
    } else {
        Err(Error::Failed(format!("tcp {step} {target}: timed out")))
    }
}

fn map_error(step: &str, target: &str, e: ErrorCode) -> Error {
    match e {
        ErrorCode::AccessDenied => {
            Error::Denied(format!("tcp {step} {target}: not allowed by [grants.tcp]"))
        }
        ErrorCode::NameUnresolvable => {
            Error::NotFound(format!("tcp {step} {target}: no such name"))
        }
        e => Error::Failed(format!("tcp {step} {target}: {e:?}")),
    }
}

fn from_wasi(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

fn to_wasi(ip: IpAddr, port: u16) -> (IpAddressFamily, IpSocketAddress) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port,
                    address: (a, b, c, d),
                }),
            )
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port,
                    flow_info: 0,
                    address: (a, b, c, d, e, f, g, h),
                    scope_id: 0,
                }),
            )
        }
    }
}
