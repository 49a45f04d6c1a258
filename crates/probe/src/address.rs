//! Probe addresses in socat-like spelling: `tcp4:127.0.0.1:3000`, `tcp6:[::1]:3000`,
//! `udp4:…`, `udp6:…`, `unix:PATH`, `unix-dgram:PATH`, `unix-seqpacket:PATH`,
//! `vsock:CID:PORT`. A Unix PATH starting with `@` is an abstract name.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, UnixAddr, VsockAddr,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix { kind: UnixKind, path: String },
    Vsock { cid: u32, port: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixKind {
    Stream,
    Datagram,
    SeqPacket,
}

/// How a probe exchanges data over an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Bytes until EOF.
    Stream,
    /// One record in, one record out.
    SeqPacket,
    /// One datagram in, one datagram out.
    Datagram,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {input:?}: {reason}")]
pub struct AddressError {
    pub input: String,
    pub reason: String,
}

const FORMS: &str = "expected tcp4:HOST:PORT, tcp6:[HOST]:PORT, udp4:HOST:PORT, udp6:[HOST]:PORT, unix:PATH, unix-dgram:PATH, unix-seqpacket:PATH or vsock:CID:PORT";

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| AddressError {
            input: input.into(),
            reason,
        };
        let (scheme, rest) = input
            .split_once(':')
            .ok_or_else(|| fail(format!("no scheme; {FORMS}")))?;
        let unix = |kind| {
            if rest.is_empty() {
                Err(fail("empty path".into()))
            } else {
                Ok(Address::Unix {
                    kind,
                    path: rest.into(),
                })
            }
        };
        match scheme {
            "tcp4" => resolve(rest, false).map(Address::Tcp).map_err(fail),
            "tcp6" => resolve(rest, true).map(Address::Tcp).map_err(fail),
            "udp4" => resolve(rest, false).map(Address::Udp).map_err(fail),
            "udp6" => resolve(rest, true).map(Address::Udp).map_err(fail),
            "unix" => unix(UnixKind::Stream),
            "unix-dgram" => unix(UnixKind::Datagram),
            "unix-seqpacket" => unix(UnixKind::SeqPacket),
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| fail("expected vsock:CID:PORT".into()))?;
                let cid = cid
                    .parse()
                    .map_err(|_| fail(format!("CID {cid:?} is not a number")))?;
                let port = port
                    .parse()
                    .map_err(|_| fail(format!("port {port:?} is not a number")))?;
                Ok(Address::Vsock { cid, port })
            }
            other => Err(fail(format!("unknown scheme {other:?}; {FORMS}"))),
        }
    }
}

fn resolve(host_port: &str, v6: bool) -> Result<SocketAddr, String> {
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("empty host".into());
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .find(|a| a.is_ipv6() == v6)
        .ok_or_else(|| format!("{host:?} has no IPv{} address", if v6 { 6 } else { 4 }))
}

impl Address {
    pub fn exchange(&self) -> Exchange {
        match self {
            Address::Tcp(_) | Address::Vsock { .. } => Exchange::Stream,
            Address::Udp(_) => Exchange::Datagram,
            Address::Unix { kind, .. } => match kind {
                UnixKind::Stream => Exchange::Stream,
                UnixKind::Datagram => Exchange::Datagram,
                UnixKind::SeqPacket => Exchange::SeqPacket,
            },
        }
    }

    pub fn family(&self) -> AddressFamily {
        match self {
            Address::Tcp(a) | Address::Udp(a) if a.is_ipv6() => AddressFamily::Inet6,
            Address::Tcp(_) | Address::Udp(_) => AddressFamily::Inet,
            Address::Unix { .. } => AddressFamily::Unix,
            Address::Vsock { .. } => AddressFamily::Vsock,
        }
    }

    pub fn socket_type(&self) -> SockType {
        match self.exchange() {
            Exchange::Stream => SockType::Stream,
            Exchange::Datagram => SockType::Datagram,
            Exchange::SeqPacket => SockType::SeqPacket,
        }
    }

    /// The socket address to connect or send to.
    pub fn sockaddr(&self) -> Result<Box<dyn SockaddrLike>, AddressError> {
        Ok(match self {
            Address::Tcp(a) | Address::Udp(a) => Box::new(SockaddrStorage::from(*a)),
            Address::Vsock { cid, port } => Box::new(VsockAddr::new(*cid, *port)),
            Address::Unix { path, .. } => Box::new(unix_addr(path).map_err(|e| AddressError {
                input: self.to_string(),
                reason: e.to_string(),
            })?),
        })
    }
}

pub(crate) fn unix_addr(path: &str) -> nix::Result<UnixAddr> {
    match path.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()),
        None => UnixAddr::new(path),
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |a: &SocketAddr| if a.is_ipv6() { "6" } else { "4" };
        match self {
            Address::Tcp(a) => write!(f, "tcp{}:{a}", v(a)),
            Address::Udp(a) => write!(f, "udp{}:{a}", v(a)),
            Address::Unix { kind, path } => {
                let scheme = match kind {
                    UnixKind::Stream => "unix",
                    UnixKind::Datagram => "unix-dgram",
                    UnixKind::SeqPacket => "unix-seqpacket",
                };
                write!(f, "{scheme}:{path}")
            }
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("tcp4:127.0.0.1:3000", "tcp4:127.0.0.1:3000", Exchange::Stream)]
    #[case("tcp6:[::1]:3000", "tcp6:[::1]:3000", Exchange::Stream)]
    #[case("udp4:127.0.0.1:53", "udp4:127.0.0.1:53", Exchange::Datagram)]
    #[case("udp6:[::1]:3000", "udp6:[::1]:3000", Exchange::Datagram)]
    #[case("unix:/run/echo.sock", "unix:/run/echo.sock", Exchange::Stream)]
    #[case("unix:@echo", "unix:@echo", Exchange::Stream)]
    #[case("unix-dgram:/tmp/d", "unix-dgram:/tmp/d", Exchange::Datagram)]
    #[case("unix-seqpacket:/tmp/s", "unix-seqpacket:/tmp/s", Exchange::SeqPacket)]
    #[case("vsock:1:3000", "vsock:1:3000", Exchange::Stream)]
    fn parses(#[case] input: &str, #[case] shown: &str, #[case] exchange: Exchange) {
        let a: Address = input.parse().unwrap();
        assert_eq!(a.to_string(), shown);
        assert_eq!(a.exchange(), exchange);
        a.sockaddr().unwrap();
    }

    #[rstest]
    #[case("127.0.0.1:3000", "unknown scheme \"127.0.0.1\"")]
    #[case("localhost", "no scheme")]
    #[case("sctp:1.2.3.4:5", "unknown scheme \"sctp\"")]
    #[case("tcp4:127.0.0.1", "expected HOST:PORT")]
    #[case("tcp4:127.0.0.1:http", "port \"http\" is not a number")]
    #[case("tcp4:127.0.0.1:70000", "port \"70000\"")]
    #[case("tcp6:127.0.0.1:3000", "has no IPv6 address")]
    #[case("tcp4:[::1]:3000", "has no IPv4 address")]
    #[case("unix:", "empty path")]
    #[case("vsock:1", "expected vsock:CID:PORT")]
    #[case("vsock:host:1", "CID \"host\" is not a number")]
    fn rejects(#[case] input: &str, #[case] reason: &str) {
        let e = input.parse::<Address>().unwrap_err().to_string();
        assert!(e.contains(reason) && e.contains(input), "{e}");
    }
}
