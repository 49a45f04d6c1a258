//! `echo-probe netinfo`: what a process in this network namespace can see and reach. Run
//! inside a container (`podman exec`) to show what `--network=none` leaves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::net::if_::InterfaceFlags;
use serde::Serialize;

use crate::address::Address;
use crate::conn::Client;

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
    pub error: Option<String>,
}

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

/// Tries to open a connection to `address` (any stream address; datagrams have no
/// handshake to prove reachability, so they are refused by the CLI).
pub fn outbound(address: &Address, timeout: Duration) -> Outbound {
    match Client::connect(address, Instant::now() + timeout) {
        Ok(_) => Outbound {
            address: address.to_string(),
            connected: true,
            error: None,
        },
        Err(e) => Outbound {
            address: address.to_string(),
            connected: false,
            error: Some(e.to_string()),
        },
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
            match &o.error {
                None => out += &format!("outbound {}: connected\n", o.address),
                Some(e) => out += &format!("outbound {}: failed: {e}\n", o.address),
            }
        }
        out
    }
}
