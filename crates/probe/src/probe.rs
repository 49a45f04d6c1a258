//! One probe: connect, send, read the reply, compare, all within one deadline.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::address::{Address, Exchange};
use crate::conn::Client;

/// What to send and what counts as success.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub address: Address,
    /// Sent as is (the CLI appends a newline, as `echo TEXT |` does).
    pub send: Vec<u8>,
    pub expect: Expect,
    pub timeout: Duration,
    /// On a stream, keep the write side open after sending (as a client that waits for
    /// the answer before it closes does) instead of half-closing it; the reply then
    /// ends when it matches `expect`, or when the server closes.
    pub keep_open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Any reply (even an empty one on a stream) is success.
    Anything,
    /// The reply must be exactly these bytes.
    Bytes(Vec<u8>),
    /// The reply must be our own local address and a newline: what
    /// `socket-activate-echo --reply-peer` answers when the source address was preserved.
    OwnAddress,
}

/// The outcome, also the `--json` output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeResult {
    pub address: String,
    pub ok: bool,
    /// The reply as text (lossy UTF-8).
    pub reply: Option<String>,
    #[serde(skip)]
    pub reply_bytes: Option<Vec<u8>>,
    /// Our end of the connection, as the kernel reports it.
    pub local_address: Option<String>,
    pub elapsed_ms: f64,
    pub error: Option<String>,
    /// What kind of failure `error` is, so a caller that expects one kind (nothing
    /// listens: `refused`) does not take another (a typo, a timeout) for it.
    pub failure: Option<Failure>,
}

/// How a probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// Nothing listens there: the connection (or, for a datagram, the port) was refused.
    Refused,
    /// The connection was not established before the deadline.
    ConnectTimeout,
    /// Connecting failed otherwise (no such socket file, no route, permission denied).
    ConnectError,
    /// Connected, then reset (or the pipe broke) before a whole reply.
    Reset,
    /// Connected, but no reply before the deadline.
    NoReply,
    /// A reply, but not the expected one.
    Mismatch,
    /// Anything else (a reply too long, an unexpected socket error).
    Other,
}

impl Failure {
    fn of_connect(e: &std::io::Error) -> Failure {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Failure::Refused,
            std::io::ErrorKind::TimedOut => Failure::ConnectTimeout,
            _ => Failure::ConnectError,
        }
    }

    fn of_exchange(e: &std::io::Error) -> Failure {
        match e.kind() {
            // A datagram to a closed port comes back as ECONNREFUSED on recv.
            std::io::ErrorKind::ConnectionRefused => Failure::Refused,
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted => Failure::Reset,
            std::io::ErrorKind::TimedOut => Failure::NoReply,
            _ => Failure::Other,
        }
    }
}

/// Upper bound for a stream reply: generous for any echo test, bounded against a server
/// that never stops talking.
const MAX_STREAM_REPLY: usize = 16 * 1024 * 1024;

pub fn probe(spec: &ProbeSpec) -> ProbeResult {
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let mut local_address = None;
    let outcome = exchange(spec, deadline, &mut local_address);
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (reply_bytes, mut error, mut failure) = match outcome {
        Ok(reply) => (Some(reply), None, None),
        Err((partial, e, kind)) => (partial, Some(e), Some(kind)),
    };
    if error.is_none() {
        let reply = reply_bytes.as_deref().unwrap_or_default();
        error = mismatch(&spec.expect, reply, local_address.as_deref());
        failure = error.as_ref().map(|_| Failure::Mismatch);
    }
    ProbeResult {
        address: spec.address.to_string(),
        ok: error.is_none(),
        reply: reply_bytes
            .as_deref()
            .map(|r| String::from_utf8_lossy(r).into_owned()),
        reply_bytes,
        local_address,
        elapsed_ms,
        error,
        failure,
    }
}

fn mismatch(expect: &Expect, reply: &[u8], local: Option<&str>) -> Option<String> {
    let wanted = match expect {
        Expect::Anything => return None,
        Expect::Bytes(b) => b.clone(),
        Expect::OwnAddress => format!("{}\n", local.unwrap_or("(unknown)")).into_bytes(),
    };
    (reply != wanted.as_slice()).then(|| {
        format!(
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(&wanted),
            String::from_utf8_lossy(reply)
        )
    })
}

type Partial = (Option<Vec<u8>>, String, Failure);

fn exchange(
    spec: &ProbeSpec,
    deadline: Instant,
    local: &mut Option<String>,
) -> Result<Vec<u8>, Partial> {
    let err = |e: std::io::Error| (None, e.to_string(), Failure::of_exchange(&e));
    let client = Client::connect(&spec.address, deadline).map_err(|e| {
        (
            None,
            format!("connecting to {}: {e}", spec.address),
            Failure::of_connect(&e),
        )
    })?;
    *local = client.local_address();
    client.send(&spec.send, deadline).map_err(err)?;
    match client.exchange() {
        Exchange::Datagram | Exchange::SeqPacket => {
            let mut buf = vec![0u8; 256 * 1024];
            let n = client.recv(&mut buf, deadline).map_err(err)?;
            buf.truncate(n);
            Ok(buf)
        }
        Exchange::Stream => {
            if !spec.keep_open {
                client.shutdown_write().map_err(err)?;
            }
            let mut reply = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // A server that answers but never closes still passes once the full
                // expected reply is in, and fails once the reply is no beginning of it
                // (a wrong byte is there for good: waiting for the close would only
                // wait out the deadline behind a proxy that keeps the connection open).
                if let Expect::Bytes(b) = &spec.expect {
                    if (!b.is_empty() && reply == *b) || !b.starts_with(&reply) {
                        return Ok(reply);
                    }
                }
                match client.recv(&mut buf, deadline) {
                    Ok(0) => return Ok(reply),
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        if reply.len() > MAX_STREAM_REPLY {
                            return Err((
                                Some(reply),
                                format!("reply longer than {MAX_STREAM_REPLY} bytes"),
                                Failure::Other,
                            ));
                        }
                    }
                    Err(e) => {
                        let partial = (!reply.is_empty()).then_some(reply);
                        return Err((partial, e.to_string(), Failure::of_exchange(&e)));
                    }
                }
            }
        }
    }
}
