//! Article 003's "native performance" column, measured. One guest serves the echo server
//! behind each rootless inbound method (socket activation, pasta, slirp4netns with each
//! port handler, host networking, systemd-socket-proxyd in front of a container without
//! socket activation, Accept=yes with a container per connection) and, as the baseline,
//! directly on the guest without a container. The outbound column too: the same client
//! in a container (host networking, pasta `--map-gw`, slirp4netns
//! `allow_host_loopback=true`) against the baseline server, beside that client run
//! directly on the guest. A client in the `client` network namespace (a veth pair, so its traffic
//! arrives from outside the guest's loopback, as a remote client's does) runs the same
//! `echo-probe bench` against each, in rounds whose order rotates; the report is medians
//! and their ratios to the baseline, all from one run (absolute numbers from different
//! runs, or from TCG and KVM, are not comparable).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use vm::ready::ECHO_IMAGE;
use vm::trial_vm::TrialVm;

use crate::events::Events;
use crate::scenario::install::{CLIENT_NETNS_SERVER, add_client_netns};
use crate::scenario::render::{notify_service_options, podman_run_exec};
use crate::units::{Listen, ServiceUnit, SocketUnit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    SocketActivation,
    Host,
    Pasta,
    SlirpRootlesskit,
    SlirpSlirp,
    SocketProxyd,
    AcceptYes,
}

/// One inbound method: how its server starts and the port the client reaches it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub kind: Kind,
    pub name: &'static str,
    pub port: u16,
    /// What article 003 says: "no slowdown compared to running directly on the host";
    /// `None` where it says nothing (the baseline, and methods it does not list).
    pub article_native: Option<bool>,
}

pub const BASELINE: &str = "directly on the guest";

pub const METHODS: [Method; 8] = [
    Method {
        kind: Kind::Direct,
        name: BASELINE,
        port: 4100,
        article_native: None,
    },
    Method {
        kind: Kind::SocketActivation,
        name: "socket activation (user service)",
        port: 4101,
        article_native: Some(true),
    },
    Method {
        kind: Kind::Host,
        name: "host",
        port: 4102,
        article_native: Some(true),
    },
    Method {
        kind: Kind::Pasta,
        name: "pasta",
        port: 4103,
        article_native: Some(false),
    },
    Method {
        kind: Kind::SlirpRootlesskit,
        name: "slirp4netns port_handler=rootlesskit",
        port: 4104,
        article_native: Some(false),
    },
    Method {
        kind: Kind::SlirpSlirp,
        name: "slirp4netns port_handler=slirp4netns",
        port: 4105,
        article_native: Some(false),
    },
    Method {
        kind: Kind::SocketProxyd,
        name: "systemd-socket-proxyd to a --network=none container's Unix socket",
        port: 4106,
        article_native: None,
    },
    Method {
        kind: Kind::AcceptYes,
        name: "Accept=yes, a container per connection",
        port: 4107,
        article_native: None,
    },
];

/// Outbound: where a client reaches the baseline server (port 4100 on every address of
/// the guest) from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    pub name: &'static str,
    /// `None`: the client runs directly on the guest (the baseline).
    pub network: Option<&'static str>,
    /// The server's address as the client sees it.
    pub address: &'static str,
}

pub const OUTBOUND_BASELINE: &str = "the client directly on the guest";

pub const OUTBOUND: [Outbound; 4] = [
    Outbound {
        name: OUTBOUND_BASELINE,
        network: None,
        address: "tcp4:127.0.0.1:4100",
    },
    Outbound {
        name: "host",
        network: Some("host"),
        address: "tcp4:127.0.0.1:4100",
    },
    // QEMU's user network gives the guest the gateway 10.0.2.2; both map it to the
    // guest's loopback.
    Outbound {
        name: "pasta --map-gw",
        network: Some("pasta:--map-gw"),
        address: "tcp4:10.0.2.2:4100",
    },
    Outbound {
        name: "slirp4netns allow_host_loopback=true",
        network: Some("slirp4netns:allow_host_loopback=true"),
        address: "tcp4:10.0.2.2:4100",
    },
];

/// The `echo-probe bench` command (as the test user) of an outbound client.
pub fn outbound_command(o: &Outbound, runtime: &str, opts: &Options) -> String {
    let bench = format!(
        "bench {} --connections {} --seconds {} --size {} --json",
        o.address, opts.connections, opts.seconds, opts.size
    );
    match o.network {
        None => format!("echo-probe {bench}"),
        Some(net) => format!(
            "podman run --rm --runtime {runtime} --pull=never --network={net} --entrypoint /echo-probe {ECHO_IMAGE} {bench}"
        ),
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: f64,
    pub size: usize,
    pub connections: usize,
    pub rounds: usize,
}

/// What `echo-probe bench --json` reports (the fields used here).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measurement {
    pub mib_per_s: f64,
    pub round_trips_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The slowest connection's first, unmeasured round trip (Accept=yes: its container's
    /// start).
    #[serde(default)]
    pub first_reply_ms: f64,
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub method: String,
    pub round: usize,
    pub measurement: Measurement,
}

const UNIT: &str = "bench-echo";
const PROXYD: &str = "bench-proxyd";
const ACCEPT: &str = "bench-accept";

/// The units of the systemd-socket-proxyd and Accept=yes methods, as (file name, text).
fn other_units(runtime: &str) -> Vec<(String, String)> {
    let port = |k: Kind| METHODS.iter().find(|m| m.kind == k).map_or(0, |m| m.port);
    vec![
        (
            format!("{PROXYD}.socket"),
            format!(
                "[Socket]\nListenStream=0.0.0.0:{}\n",
                port(Kind::SocketProxyd)
            ),
        ),
        (
            format!("{PROXYD}.service"),
            format!(
                "[Service]\nExecStart=/usr/lib/systemd/systemd-socket-proxyd %t/{PROXYD}/echo.sock\n"
            ),
        ),
        (
            format!("{ACCEPT}.socket"),
            format!(
                "[Socket]\nListenStream=0.0.0.0:{}\nAccept=yes\n",
                port(Kind::AcceptYes)
            ),
        ),
        (
            format!("{ACCEPT}@.service"),
            format!(
                "[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/bin/podman run --rm --runtime {runtime} --cgroups=no-conmon --sdnotify=conmon --network=none --pull=never {ECHO_IMAGE} --idle-exit 1\n"
            ),
        ),
    ]
}

/// The socket and service of the socket-activation method: the lab's usual
/// `podman run --network=none` service behind a TCP listener.
fn socket_activation_units(runtime: &str, port: u16) -> Result<(String, String)> {
    let socket = SocketUnit {
        description: "socket-activation-lab bench echo".into(),
        listen: vec![Listen {
            stream: Some(format!("0.0.0.0:{port}")),
            datagram: None,
            seqpacket: None,
        }],
        options: vec![],
    };
    let service = ServiceUnit {
        description: "socket-activation-lab bench echo".into(),
        socket: Some(format!("{UNIT}.socket")),
        unit_options: vec![],
        service_options: notify_service_options(),
        exec_start: podman_run_exec(UNIT, runtime)
            .into_iter()
            .chain(["--network=none", "--pull=never", ECHO_IMAGE].map(String::from))
            .collect(),
    };
    Ok((
        socket.render().map_err(anyhow::Error::msg)?,
        service.render().map_err(anyhow::Error::msg)?,
    ))
}

/// The command (as the test user) that starts `method`'s server.
pub fn start_command(method: &Method, runtime: &str) -> String {
    let p = method.port;
    let run = |net: &str, publish: bool| {
        let (publish, listen) = if publish {
            (format!(" -p {p}:3000"), "tcp:0.0.0.0:3000".to_string())
        } else {
            (String::new(), format!("tcp:0.0.0.0:{p}"))
        };
        format!(
            "podman run -d --name bench-{p} --runtime {runtime} --pull=never --network={net}{publish} {ECHO_IMAGE} --listen {listen}"
        )
    };
    match method.kind {
        Kind::Direct => format!(
            "systemd-run --user --quiet --collect --unit=bench-direct /usr/local/bin/socket-activate-echo --listen tcp:0.0.0.0:{p}"
        ),
        // The port is in the socket unit.
        Kind::SocketActivation => {
            format!("systemctl --user daemon-reload && systemctl --user start {UNIT}.socket")
        }
        // The units are written by start_all; the backend is the echo server on a Unix
        // socket in a directory it shares with systemd-socket-proxyd.
        Kind::SocketProxyd => format!(
            "mkdir -p $XDG_RUNTIME_DIR/{PROXYD} && podman run -d --name bench-{p} --runtime {runtime} --pull=never --network=none --user 0:0 --volume $XDG_RUNTIME_DIR/{PROXYD}:/run/backend {ECHO_IMAGE} --listen unix:/run/backend/echo.sock && systemctl --user daemon-reload && systemctl --user start {PROXYD}.socket"
        ),
        Kind::AcceptYes => {
            format!("systemctl --user daemon-reload && systemctl --user start {ACCEPT}.socket")
        }
        Kind::Host => run("host", false),
        Kind::Pasta => run("pasta", true),
        Kind::SlirpRootlesskit => run("slirp4netns:port_handler=rootlesskit", true),
        Kind::SlirpSlirp => run("slirp4netns:port_handler=slirp4netns", true),
    }
}

/// Rounds of methods, each round in a different order, so that no method is always
/// measured first or last (a warm or tired guest).
pub fn schedule(methods: &[Method], rounds: usize) -> Vec<(usize, Method)> {
    let mut out = Vec::new();
    for r in 0..rounds {
        for i in 0..methods.len() {
            out.push((r + 1, methods[(i + r) % methods.len()]));
        }
    }
    out
}

/// A method whose server could not start on this guest (pasta needs podman >= 4.4), with
/// the error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unavailable {
    pub method: String,
    pub why: String,
}

/// Starts every method's server in `vm` and checks each answers from the client
/// namespace; returns the methods that did not.
fn start_all(vm: &TrialVm, runtime: &str, events: &Events) -> Result<Vec<Unavailable>> {
    let g = &vm.guest;
    let t = Duration::from_secs(180);
    add_client_netns(g)?;
    let port = METHODS
        .iter()
        .find(|m| m.kind == Kind::SocketActivation)
        .map_or(0, |m| m.port);
    let (socket, service) = socket_activation_units(runtime, port)?;
    let dir = format!("/home/{}/.config/systemd/user", g.user.name);
    let owner = Some(g.user.name.as_str());
    g.write_file(
        &format!("{dir}/{UNIT}.socket"),
        socket.as_bytes(),
        owner,
        0o644,
    )?;
    g.write_file(
        &format!("{dir}/{UNIT}.service"),
        service.as_bytes(),
        owner,
        0o644,
    )?;
    for (name, text) in other_units(runtime) {
        g.write_file(&format!("{dir}/{name}"), text.as_bytes(), owner, 0o644)?;
    }
    let mut unavailable = Vec::new();
    for m in &METHODS {
        let step = events.step(m.name, "starting the server");
        let started = g.user(&start_command(m, runtime), t)?;
        if !started.success() {
            let why = vm::proc::tail(started.combined().trim(), 3);
            events.note(m.name, format!("unavailable on this guest: {why}"));
            unavailable.push(Unavailable {
                method: m.name.into(),
                why,
            });
            continue;
        }
        // The first connection also starts the socket-activated container; forwarders
        // take a moment to listen.
        let warm = format!(
            "for i in $(seq 60); do ip netns exec client echo-probe tcp4:{CLIENT_NETNS_SERVER}:{} --send warm --timeout 20 >/dev/null && exit 0; sleep 1; done; exit 1",
            m.port
        );
        // A server that started but never answers is a failure, not an absence.
        g.root_ok(&warm, Duration::from_secs(1500))
            .with_context(|| format!("{} started but never answered on port {}", m.name, m.port))?;
        step.done();
    }
    Ok(unavailable)
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub unavailable: Vec<Unavailable>,
    /// The outbound clients' samples (method = the client's [`Outbound::name`]).
    #[serde(default)]
    pub outbound: Vec<Sample>,
    #[serde(default)]
    pub outbound_unavailable: Vec<Unavailable>,
}

fn parse_measurement(what: &str, round: usize, stdout: &str) -> Result<Measurement> {
    let measurement: Measurement = serde_json::from_str(stdout.trim())
        .with_context(|| format!("echo-probe bench printed {stdout:?}"))?;
    if !measurement.errors.is_empty() {
        bail!(
            "{what} (round {round}): the benchmark's connections failed: {}",
            measurement.errors.join("; ")
        );
    }
    Ok(measurement)
}

/// The outbound clients, in rotating rounds like the inbound methods. A client whose
/// network podman refuses (pasta options before podman 4.4) is unavailable, with
/// podman's words.
fn run_outbound(
    vm: &TrialVm,
    runtime: &str,
    opts: &Options,
    events: &Events,
) -> Result<(Vec<Sample>, Vec<Unavailable>)> {
    let mut samples = Vec::new();
    let mut unavailable: Vec<Unavailable> = Vec::new();
    let n = OUTBOUND.len();
    for round in 1..=opts.rounds {
        for i in 0..n {
            let o = &OUTBOUND[(i + round - 1) % n];
            if unavailable.iter().any(|u| u.method == o.name) {
                continue;
            }
            let out = vm.guest.user(
                &outbound_command(o, runtime, opts),
                Duration::from_secs_f64(opts.seconds + 120.0),
            )?;
            if !out.success() && o.network.is_some() && out.stdout.trim().is_empty() {
                let why = vm::proc::tail(out.combined().trim(), 3);
                events.note(o.name, format!("unavailable on this guest: {why}"));
                unavailable.push(Unavailable {
                    method: o.name.into(),
                    why,
                });
                continue;
            }
            let m = parse_measurement(o.name, round, &out.stdout)?;
            events.note(
                o.name,
                format!(
                    "outbound round {round}: {:.1} MiB/s, {:.0} round trips/s",
                    m.mib_per_s, m.round_trips_per_s
                ),
            );
            samples.push(Sample {
                method: o.name.into(),
                round,
                measurement: m,
            });
        }
    }
    if unavailable.iter().any(|u| u.method == OUTBOUND_BASELINE) {
        bail!("the outbound baseline client failed: {unavailable:?}");
    }
    Ok((samples, unavailable))
}

/// Runs the benchmark in `vm` (restored from the ready state; the caller owns it).
pub fn run(vm: &TrialVm, runtime: &str, opts: &Options, events: &Events) -> Result<Results> {
    let unavailable = start_all(vm, runtime, events)?;
    if unavailable.iter().any(|u| u.method == BASELINE) {
        bail!("the baseline server did not start: {unavailable:?}");
    }
    let available: Vec<Method> = METHODS
        .iter()
        .filter(|m| !unavailable.iter().any(|u| u.method == m.name))
        .copied()
        .collect();
    let mut samples = Vec::new();
    for (round, m) in schedule(&available, opts.rounds) {
        let cmd = format!(
            "ip netns exec client echo-probe bench tcp4:{CLIENT_NETNS_SERVER}:{} --connections {} --seconds {} --size {} --json",
            m.port, opts.connections, opts.seconds, opts.size
        );
        let out = vm
            .guest
            .root_ok(&cmd, Duration::from_secs_f64(opts.seconds + 120.0))?;
        let measurement = parse_measurement(m.name, round, &out.stdout)?;
        events.note(
            m.name,
            format!(
                "round {round}: {:.1} MiB/s, {:.0} round trips/s, p99 {:.0} µs",
                measurement.mib_per_s, measurement.round_trips_per_s, measurement.p99_us
            ),
        );
        samples.push(Sample {
            method: m.name.into(),
            round,
            measurement,
        });
    }
    let (outbound, outbound_unavailable) = run_outbound(vm, runtime, opts, events)?;
    Ok(Results {
        samples,
        unavailable,
        outbound,
        outbound_unavailable,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Each method's throughput as a ratio to the baseline's in the same round.
pub fn bars(results: &Results) -> Vec<crate::report::html::Bar> {
    let samples: Vec<(String, usize, f64)> = results
        .samples
        .iter()
        .map(|s| (s.method.clone(), s.round, s.measurement.mib_per_s))
        .collect();
    crate::report::html::ratio_bars(&samples, BASELINE)
}

/// Samples grouped by method, for medians over the rounds.
struct ByMethod<'a>(BTreeMap<&'a str, Vec<&'a Measurement>>);

impl<'a> ByMethod<'a> {
    fn new(samples: &'a [Sample]) -> Self {
        let mut by: BTreeMap<&str, Vec<&Measurement>> = BTreeMap::new();
        for s in samples {
            by.entry(s.method.as_str())
                .or_default()
                .push(&s.measurement);
        }
        ByMethod(by)
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn median(&self, name: &str, f: fn(&Measurement) -> f64) -> f64 {
        median(
            self.0
                .get(name)
                .map(|v| v.iter().map(|m| f(m)).collect())
                .unwrap_or_default(),
        )
    }
}

/// Why `name` could not be measured, escaped for a table cell.
fn unavailable_cell(unavailable: &[Unavailable], name: &str) -> Option<String> {
    unavailable
        .iter()
        .find(|u| u.method == name)
        .map(|u| u.why.replace('\n', " ").replace('|', "\\|"))
}

/// The report: per method, the medians over rounds and throughput as a ratio to the
/// baseline, beside what the article claims; then the outbound clients.
pub fn table(results: &Results, opts: &Options, context: &str) -> String {
    let by = ByMethod::new(&results.samples);
    let base = by.median(BASELINE, |m| m.mib_per_s);
    let mut s = String::new();
    writeln!(
        s,
        "## Inbound methods: echo round trips from a client namespace\n\n{context}; {} connection(s), {} B per round trip, {} s per measurement, {} rounds in rotating order; medians.\n",
        opts.connections, opts.size, opts.seconds, opts.rounds
    )
    .unwrap();
    writeln!(
        s,
        "| method | article 003: native performance | MiB/s | vs directly on the guest | round trips/s | p50 µs | p99 µs | first reply ms |\n|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    for m in &METHODS {
        let claim = match (m.kind, m.article_native) {
            (Kind::Direct, _) => "(baseline)",
            (_, None) => "(not listed)",
            (_, Some(true)) => "yes",
            (_, Some(false)) => "no",
        };
        if let Some(why) = unavailable_cell(&results.unavailable, m.name) {
            writeln!(s, "| {} | {claim} | unavailable: {why} | | | | | |", m.name).unwrap();
            continue;
        }
        if !by.has(m.name) {
            continue;
        }
        let mib = by.median(m.name, |x| x.mib_per_s);
        writeln!(
            s,
            "| {} | {claim} | {mib:.1} | {:.2}x | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.name,
            mib / base,
            by.median(m.name, |x| x.round_trips_per_s),
            by.median(m.name, |x| x.p50_us),
            by.median(m.name, |x| x.p99_us),
            by.median(m.name, |x| x.first_reply_ms),
        )
        .unwrap();
    }
    if results.outbound.is_empty() && results.outbound_unavailable.is_empty() {
        return s;
    }
    s += &outbound_table(results, opts);
    s
}

/// Article 003's outbound column: the same client in a container and directly on the
/// guest, against the same server, as ratios.
fn outbound_table(results: &Results, opts: &Options) -> String {
    let by = ByMethod::new(&results.outbound);
    let base = by.median(OUTBOUND_BASELINE, |m| m.mib_per_s);
    let mut s = format!(
        "\n## Outbound: echo round trips from a client in a container to a server on the guest\n\n\
         The baseline server above (port 4100); {} connection(s), {} B per round trip, {} s per \
         measurement, {} rounds in rotating order; medians.\n\n\
         | client | MiB/s | vs the client directly on the guest | round trips/s | p50 µs | p99 µs |\n|---|---|---|---|---|---|\n",
        opts.connections, opts.size, opts.seconds, opts.rounds
    );
    for o in &OUTBOUND {
        if let Some(why) = unavailable_cell(&results.outbound_unavailable, o.name) {
            writeln!(s, "| {} | unavailable: {why} | | | | |", o.name).unwrap();
            continue;
        }
        if !by.has(o.name) {
            continue;
        }
        let mib = by.median(o.name, |x| x.mib_per_s);
        writeln!(
            s,
            "| {} | {mib:.1} | {:.2}x | {:.0} | {:.0} | {:.0} |",
            o.name,
            mib / base,
            by.median(o.name, |x| x.round_trips_per_s),
            by.median(o.name, |x| x.p50_us),
            by.median(o.name, |x| x.p99_us),
        )
        .unwrap();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_has_every_method_and_the_first_rotates() {
        let s = schedule(&METHODS, 3);
        let n = METHODS.len();
        assert_eq!(s.len(), 3 * n);
        for r in 1..=3 {
            let names: std::collections::BTreeSet<_> = s
                .iter()
                .filter(|(x, _)| *x == r)
                .map(|(_, m)| m.name)
                .collect();
            assert_eq!(names.len(), METHODS.len());
        }
        let firsts: Vec<_> = (0..3).map(|r| s[r * n].1.name).collect();
        assert_eq!(firsts, [METHODS[0].name, METHODS[1].name, METHODS[2].name]);
    }

    #[test]
    fn servers_listen_where_the_client_connects() {
        // Methods whose port is in a socket unit are checked with their units.
        for m in METHODS
            .iter()
            .filter(|m| ![Kind::SocketActivation, Kind::AcceptYes].contains(&m.kind))
        {
            let c = start_command(m, "crun");
            assert!(c.contains(&m.port.to_string()), "{c}");
        }
        assert!(start_command(&METHODS[3], "runc").contains("--network=pasta -p 4103:3000"));
        assert!(
            start_command(&METHODS[5], "runc")
                .contains("--network=slirp4netns:port_handler=slirp4netns -p 4105:3000")
        );
        let (socket, service) = socket_activation_units("crun", 4101).unwrap();
        assert!(socket.contains("ListenStream=0.0.0.0:4101"), "{socket}");
        assert!(
            service.contains("--runtime crun --network=none"),
            "{service}"
        );
    }

    fn sample(method: &str, round: usize, mib: f64) -> Sample {
        Sample {
            method: method.into(),
            round,
            measurement: Measurement {
                mib_per_s: mib,
                round_trips_per_s: mib * 64.0,
                p50_us: 100.0,
                p99_us: 300.0,
                first_reply_ms: 2.0,
                errors: vec![],
            },
        }
    }

    #[test]
    fn table_reports_medians_as_ratios_to_the_baseline() {
        let samples = vec![
            sample(BASELINE, 1, 10.0),
            sample(BASELINE, 2, 30.0),
            sample(BASELINE, 3, 20.0),
            sample("pasta", 1, 5.0),
            sample("pasta", 2, 4.0),
            sample("pasta", 3, 100.0),
        ];
        let opts = Options {
            seconds: 3.0,
            size: 16384,
            connections: 1,
            rounds: 3,
        };
        let results = Results {
            samples,
            unavailable: vec![Unavailable {
                method: "pasta".into(),
                why: "Error: unknown network mode | pasta".into(),
            }],
            ..Default::default()
        };
        let t = table(&results, &opts, "debian-13, crun 1.21, tcg");
        assert!(
            t.contains("| directly on the guest | (baseline) | 20.0 | 1.00x | 1280 |"),
            "{t}"
        );
        assert!(
            t.contains("| pasta | no | unavailable: Error: unknown network mode \\| pasta |"),
            "{t}"
        );
        let measured = Results {
            samples: results.samples.clone(),
            ..Default::default()
        };
        let t = table(&measured, &opts, "x");
        assert!(
            t.contains("| pasta | no | 5.0 | 0.25x | 320 | 100 | 300 | 2 |"),
            "{t}"
        );
        assert!(
            !t.contains("host |"),
            "methods without samples are left out: {t}"
        );
        assert!(
            t.contains("x; 1 connection(s), 16384 B per round trip"),
            "{t}"
        );
    }

    #[test]
    fn proxyd_and_accept_yes_units_listen_where_the_client_connects() {
        let units: BTreeMap<String, String> = other_units("runc").into_iter().collect();
        assert!(units["bench-proxyd.socket"].contains("ListenStream=0.0.0.0:4106"));
        assert!(
            units["bench-proxyd.service"]
                .contains("systemd-socket-proxyd %t/bench-proxyd/echo.sock")
        );
        assert!(units["bench-accept.socket"].contains("ListenStream=0.0.0.0:4107\nAccept=yes"));
        assert!(units["bench-accept@.service"].contains("--runtime runc "));
        // The backend listens where the proxy forwards.
        let proxyd = start_command(&METHODS[6], "crun");
        assert!(
            proxyd.contains("--volume $XDG_RUNTIME_DIR/bench-proxyd:/run/backend")
                && proxyd.contains("--listen unix:/run/backend/echo.sock"),
            "{proxyd}"
        );
    }

    #[test]
    fn outbound_clients_reach_the_baseline_server() {
        let opts = Options {
            seconds: 2.0,
            size: 1024,
            connections: 1,
            rounds: 1,
        };
        let direct = outbound_command(&OUTBOUND[0], "crun", &opts);
        assert!(
            direct.starts_with("echo-probe bench tcp4:127.0.0.1:4100 "),
            "{direct}"
        );
        let pasta = outbound_command(&OUTBOUND[2], "crun", &opts);
        assert!(
            pasta.contains("--network=pasta:--map-gw --entrypoint /echo-probe")
                && pasta.contains("bench tcp4:10.0.2.2:4100"),
            "{pasta}"
        );
        let baseline_port = METHODS[0].port.to_string();
        assert!(OUTBOUND.iter().all(|o| o.address.ends_with(&baseline_port)));
    }

    #[test]
    fn outbound_table_gives_ratios_to_the_client_on_the_guest() {
        let opts = Options {
            seconds: 2.0,
            size: 1024,
            connections: 1,
            rounds: 1,
        };
        let results = Results {
            samples: vec![sample(BASELINE, 1, 10.0)],
            outbound: vec![
                sample(OUTBOUND_BASELINE, 1, 40.0),
                sample("host", 1, 40.0),
                sample("slirp4netns allow_host_loopback=true", 1, 10.0),
            ],
            outbound_unavailable: vec![Unavailable {
                method: "pasta --map-gw".into(),
                why: "Error: unknown bridge network option: --map-gw".into(),
            }],
            ..Default::default()
        };
        let t = table(&results, &opts, "x");
        assert!(t.contains("| host | 40.0 | 1.00x |"), "{t}");
        assert!(
            t.contains("| slirp4netns allow_host_loopback=true | 10.0 | 0.25x |"),
            "{t}"
        );
        assert!(
            t.contains("| pasta --map-gw | unavailable: Error: unknown bridge network option"),
            "{t}"
        );
    }

    #[test]
    fn medians_of_even_counts_average_the_middle_two() {
        assert_eq!(median(vec![1.0, 4.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
