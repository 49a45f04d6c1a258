//! `echo-probe netinfo`: what a process in this network namespace can see and reach. Run
//! inside a container (`podman exec`) to show what `--network=none` leaves.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::net::if_::InterfaceFlags;
use serde::Serialize;

use crate::address::Address;
use crate::probe::{Expect, Failure, ProbeSpec, probe};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    /// `ADDRESS/PREFIX`, as `ip -brief addr` shows them.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outbound {
    pub address: String,
    pub connected: bool,
    /// The line sent came back: an echo server answered, not just something that
    /// accepted the connection (a NAT that completes any handshake, say).
    pub echoed: bool,
    pub reply: Option<String>,
    pub error: Option<String>,
}

/// What an outbound attempt sends, expecting it back from an echo server.
pub const OUTBOUND_LINE: &str = "netinfo\n";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetInfo {
    pub interfaces: Vec<Interface>,
    pub outbound: Option<Outbound>,
}

pub fn interfaces() -> Result<Vec<Interface>, String> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))? {
        let entry = by_name
            .entry(ifa.interface_name.clone())
            .or_insert_with(|| Interface {
                name: ifa.interface_name.clone(),
                up: ifa.flags.contains(InterfaceFlags::IFF_UP),
                loopback: ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                addresses: Vec::new(),
            });
        let prefix = |mask: Option<&nix::sys::socket::SockaddrStorage>| -> Option<u32> {
            let mask = mask?;
            if let Some(m) = mask.as_sockaddr_in() {
                Some(u32::from(m.ip()).count_ones())
            } else {
                mask.as_sockaddr_in6()
                    .map(|m| u128::from(m.ip()).count_ones())
            }
        };
        let Some(addr) = ifa.address.as_ref() else {
            continue;
        };
        let ip = if let Some(a) = addr.as_sockaddr_in() {
            a.ip().to_string()
        } else if let Some(a) = addr.as_sockaddr_in6() {
            a.ip().to_string()
        } else {
            continue; // link-layer (AF_PACKET) entries
        };
        let text = match prefix(ifa.netmask.as_ref()) {
            Some(p) => format!("{ip}/{p}"),
            None => ip,
        };
        entry.addresses.push(text);
    }
    Ok(by_name.into_values().collect())
}

/// Tries one echo round trip to `address` (any stream address; datagrams have no
/// handshake to prove reachability, so they are refused by the CLI): `connected` when
/// the connection was made, `echoed` when [`OUTBOUND_LINE`] came back.
pub fn outbound(address: &Address, timeout: Duration) -> Outbound {
    let line = OUTBOUND_LINE.as_bytes().to_vec();
    let result = probe(&ProbeSpec {
        address: address.clone(),
        send: line.clone(),
        expect: Expect::Bytes(line),
        timeout,
        keep_open: false,
    });
    let connected = !matches!(
        result.failure,
        Some(Failure::Refused | Failure::ConnectTimeout | Failure::ConnectError)
    );
    Outbound {
        address: result.address,
        connected,
        echoed: result.ok,
        reply: result.reply,
        error: result.error,
    }
}

impl NetInfo {
    /// `ip -brief addr` style lines, then the outbound result.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for i in &self.interfaces {
            let state = if i.up { "UP" } else { "DOWN" };
            out += &format!("{:<16} {:<6} {}\n", i.name, state, i.addresses.join(" "));
        }
        if let Some(o) = &self.outbound {
            match (&o.error, o.connected) {
                (None, _) => out += &format!("outbound {}: connected, echoed\n", o.address),
                (Some(e), true) => {
                    out += &format!("outbound {}: connected, no echo: {e}\n", o.address)
                }
                (Some(e), false) => out += &format!("outbound {}: failed: {e}\n", o.address),
            }
        }
        out
    }
}
