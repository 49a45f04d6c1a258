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
use crate::report::html::Bar;
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

/// The baseline measured a second time, as another method in the rotation (the A/A
/// check): the same server, so any difference between the two is the bench's own noise.
pub const BASELINE_AGAIN: &str = "directly on the guest, again (A/A)";

pub const METHODS: [Method; 9] = [
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
    // Apart from the first baseline in the rotation, so the two follow other methods.
    Method {
        kind: Kind::Direct,
        name: BASELINE_AGAIN,
        port: 4100,
        article_native: None,
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

/// Shell (as the test user) that waits while an Accept=yes connection's service is still
/// loaded: its container's teardown (`podman run --rm` removing it) takes seconds of the
/// guest's CPU under TCG, and a measurement taken meanwhile is that of a busy guest.
/// Before this wait the method measured after Accept=yes, in every round the baseline,
/// came out 20-40% slow with a p99 of 4-7 ms.
pub const SETTLE: &str = "for i in $(seq 240); do [ -z \"$(systemctl --user list-units --all --plain --no-legend 'bench-accept@*')\" ] && exit 0; sleep 0.5; done; echo 'an Accept=yes service instance was still loaded after 120 s:' >&2; systemctl --user list-units --all --plain --no-legend 'bench-accept@*' >&2; exit 1";

/// Waits until no earlier measurement's work is left in the guest ([`SETTLE`]).
fn settle(vm: &TrialVm) -> Result<()> {
    let out = vm.guest.user(SETTLE, Duration::from_secs(180))?;
    if !out.success() {
        bail!(
            "the guest did not settle between measurements: {}",
            out.combined().trim()
        );
    }
    Ok(())
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
    for (i, m) in METHODS.iter().enumerate() {
        // The A/A method measures the baseline's server again.
        if METHODS[..i].iter().any(|earlier| earlier.port == m.port) {
            continue;
        }
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
            settle(vm)?;
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
        settle(vm)?;
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
pub fn bars(results: &Results) -> Vec<Bar> {
    ratios_per_round(&results.samples, BASELINE)
}

/// Throughput of each method in `samples` as ratios to `baseline`'s in the same round.
fn ratios_per_round(samples: &[Sample], baseline: &str) -> Vec<Bar> {
    let per_round: Vec<(String, usize, f64)> = samples
        .iter()
        .map(|s| (s.method.clone(), s.round, s.measurement.mib_per_s))
        .collect();
    crate::report::html::ratio_bars(&per_round, baseline)
}

/// `name`'s ratio for a table cell: the median over the rounds and their min-max.
fn ratio_cell(ratios: &[Bar], name: &str) -> String {
    ratios
        .iter()
        .find(|b| b.label == name)
        .map_or("?".to_string(), |b| {
            format!("{:.2}x ({:.2}-{:.2})", b.median, b.min, b.max)
        })
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

    fn values(&self, name: &str, f: fn(&Measurement) -> f64) -> Vec<f64> {
        self.0
            .get(name)
            .map(|v| v.iter().map(|m| f(m)).collect())
            .unwrap_or_default()
    }

    fn median(&self, name: &str, f: fn(&Measurement) -> f64) -> f64 {
        median(self.values(name, f))
    }
}

/// Why `name` could not be measured, escaped for a table cell.
fn unavailable_cell(unavailable: &[Unavailable], name: &str) -> Option<String> {
    unavailable
        .iter()
        .find(|u| u.method == name)
        .map(|u| u.why.replace('\n', " ").replace('|', "\\|"))
}

/// Rounds below this leave the A/A check unjudged: one or two rounds give no spread to
/// compare with.
pub const ROUNDS_TO_JUDGE: usize = 3;

/// Methods whose data path is the baseline's (the guest's own TCP stack into the echo
/// server's socket, no forwarder): they can match the baseline, not beat it.
const SAME_PATH_AS_BASELINE: [Kind; 2] = [Kind::SocketActivation, Kind::Host];

/// The A/A check of a run: the baseline measured twice, and the methods that share its
/// data path, against the spread of the baseline's rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct AaCheck {
    /// Enough rounds to judge ([`ROUNDS_TO_JUDGE`]).
    pub judged: bool,
    /// MiB/s medians of the baseline and of its second measurement.
    pub baseline: f64,
    pub again: f64,
    /// The larger of the two measurements' ranges over the rounds (max - min, MiB/s).
    pub spread: f64,
    /// What failed, in words; empty when the check passed (or was not judged).
    pub problems: Vec<String>,
}

/// Judges the run's A/A check (see [`AaCheck`]).
pub fn aa_check(results: &Results) -> AaCheck {
    let by = ByMethod::new(&results.samples);
    let range = |name: &str| {
        let v = by.values(name, |m| m.mib_per_s);
        let max = v.iter().copied().fold(f64::NAN, f64::max);
        let min = v.iter().copied().fold(f64::NAN, f64::min);
        max - min
    };
    let baseline = by.median(BASELINE, |m| m.mib_per_s);
    let again = by.median(BASELINE_AGAIN, |m| m.mib_per_s);
    let spread = range(BASELINE).max(range(BASELINE_AGAIN));
    let rounds = by.values(BASELINE, |m| m.mib_per_s).len();
    let judged = rounds >= ROUNDS_TO_JUDGE && by.has(BASELINE_AGAIN);
    let mut problems = Vec::new();
    if judged {
        if (baseline - again).abs() > spread {
            problems.push(format!(
                "the baseline measured twice differs by {:.1} MiB/s ({baseline:.1} and {again:.1}), more than its rounds vary ({spread:.1})",
                (baseline - again).abs()
            ));
        }
        for m in METHODS
            .iter()
            .filter(|m| SAME_PATH_AS_BASELINE.contains(&m.kind))
        {
            if !by.has(m.name) {
                continue;
            }
            let mib = by.median(m.name, |x| x.mib_per_s);
            if mib - baseline > spread {
                problems.push(format!(
                    "{} ({mib:.1} MiB/s) beats the baseline ({baseline:.1}) by {:.1} MiB/s, more than the rounds' spread ({spread:.1}): it shares the baseline's data path, so the baseline is not measuring the fastest path",
                    m.name,
                    mib - baseline
                ));
            }
        }
    }
    AaCheck {
        judged,
        baseline,
        again,
        spread,
        problems,
    }
}

/// The A/A check in words, for the report.
fn aa_paragraph(check: &AaCheck, rounds: usize) -> String {
    if !check.judged {
        return format!(
            "\nA/A check: not judged ({rounds} round(s); it needs {ROUNDS_TO_JUDGE} and both baseline measurements).\n"
        );
    }
    if check.problems.is_empty() {
        return format!(
            "\nA/A check: passed. The baseline measured twice: {:.1} and {:.1} MiB/s, within the rounds' spread ({:.1}); no method that shares its data path beats it by more.\n",
            check.baseline, check.again, check.spread
        );
    }
    let mut s = String::from(
        "\n**A/A check failed**: the numbers above do not measure what they claim.\n\n",
    );
    for p in &check.problems {
        s += &format!("- {p}\n");
    }
    s
}

/// The report: per method, the medians over rounds and throughput as a ratio to the
/// baseline of the same round (median, and min-max over the rounds), beside what the
/// article claims; the A/A check; then the outbound clients.
pub fn table(results: &Results, opts: &Options, context: &str) -> String {
    let by = ByMethod::new(&results.samples);
    let ratios = bars(results);
    let mut s = String::new();
    writeln!(
        s,
        "## Inbound methods: echo round trips from a client namespace\n\n{context}; {} connection(s), {} B per round trip, {} s per measurement, {} rounds in rotating order; medians, and the ratio's min-max over the rounds.\n",
        opts.connections, opts.size, opts.seconds, opts.rounds
    )
    .unwrap();
    writeln!(
        s,
        "| method | article 003: native performance | MiB/s | vs directly on the guest (min-max) | round trips/s | p50 µs | p99 µs | first reply ms |\n|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    for m in &METHODS {
        let claim = match (m.kind, m.article_native) {
            (Kind::Direct, _) if m.name == BASELINE => "(baseline)",
            (Kind::Direct, _) => "(the baseline again)",
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
        let ratio = ratio_cell(&ratios, m.name);
        writeln!(
            s,
            "| {} | {claim} | {:.1} | {ratio} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.name,
            by.median(m.name, |x| x.mib_per_s),
            by.median(m.name, |x| x.round_trips_per_s),
            by.median(m.name, |x| x.p50_us),
            by.median(m.name, |x| x.p99_us),
            by.median(m.name, |x| x.first_reply_ms),
        )
        .unwrap();
    }
    s += &aa_paragraph(&aa_check(results), opts.rounds);
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
    let ratios = ratios_per_round(&results.outbound, OUTBOUND_BASELINE);
    let mut s = format!(
        "\n## Outbound: echo round trips from a client in a container to a server on the guest\n\n\
         The baseline server above (port 4100); {} connection(s), {} B per round trip, {} s per \
         measurement, {} rounds in rotating order; medians, and the ratio's min-max over the rounds.\n\n\
         | client | MiB/s | vs the client directly on the guest (min-max) | round trips/s | p50 µs | p99 µs |\n|---|---|---|---|---|---|\n",
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
        let ratio = ratio_cell(&ratios, o.name);
        writeln!(
            s,
            "| {} | {:.1} | {ratio} | {:.0} | {:.0} | {:.0} |",
            o.name,
            by.median(o.name, |x| x.mib_per_s),
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
        assert!(
            start_command(&method(Kind::Pasta), "runc").contains("--network=pasta -p 4103:3000")
        );
        assert!(
            start_command(&method(Kind::SlirpSlirp), "runc")
                .contains("--network=slirp4netns:port_handler=slirp4netns -p 4105:3000")
        );
        let (socket, service) = socket_activation_units("crun", 4101).unwrap();
        assert!(socket.contains("ListenStream=0.0.0.0:4101"), "{socket}");
        assert!(
            service.contains("--runtime crun --network=none"),
            "{service}"
        );
    }

    fn method(kind: Kind) -> Method {
        *METHODS.iter().find(|m| m.kind == kind).unwrap()
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
            t.contains("| directly on the guest | (baseline) | 20.0 | 1.00x (1.00-1.00) | 1280 |"),
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
            // Per round 0.50, 0.13 and 5.00 of the baseline: their median, and the range.
            t.contains("| pasta | no | 5.0 | 0.50x (0.13-5.00) | 320 | 100 | 300 | 2 |"),
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
        let proxyd = start_command(&method(Kind::SocketProxyd), "crun");
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
        assert!(t.contains("| host | 40.0 | 1.00x (1.00-1.00) |"), "{t}");
        assert!(
            t.contains("| slirp4netns allow_host_loopback=true | 10.0 | 0.25x (0.25-0.25) |"),
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

    fn rounds_of(method: &str, mibs: &[f64]) -> Vec<Sample> {
        mibs.iter()
            .enumerate()
            .map(|(i, m)| sample(method, i + 1, *m))
            .collect()
    }

    #[test]
    fn the_aa_check_passes_within_the_spread_and_fails_beyond_it() {
        let host = method(Kind::Host).name;
        let pasta = method(Kind::Pasta).name;
        let run = |again: &[f64], host_mib: &[f64]| {
            let samples = [
                rounds_of(BASELINE, &[30.0, 32.0, 34.0]),
                rounds_of(BASELINE_AGAIN, again),
                rounds_of(host, host_mib),
                // A method with a data path of its own may differ as it likes.
                rounds_of(pasta, &[90.0, 90.0, 90.0]),
            ]
            .concat();
            aa_check(&Results {
                samples,
                ..Default::default()
            })
        };
        let ok = run(&[31.0, 33.0, 35.0], &[33.0, 34.0, 35.0]);
        assert!(ok.judged && ok.problems.is_empty(), "{ok:?}");
        assert_eq!((ok.baseline, ok.again, ok.spread), (32.0, 33.0, 4.0));
        // The baseline's second measurement far from its first: the bench is noisy.
        let aa = run(&[20.0, 21.0, 22.0], &[33.0, 34.0, 35.0]);
        assert_eq!(aa.problems.len(), 1, "{aa:?}");
        assert!(
            aa.problems[0].contains("the baseline measured twice differs by 11.0 MiB/s"),
            "{aa:?}"
        );
        // --network=host well above the baseline: the baseline is not the fastest path.
        let fast = run(&[31.0, 33.0, 35.0], &[40.0, 41.0, 42.0]);
        assert_eq!(fast.problems.len(), 1, "{fast:?}");
        assert!(
            fast.problems[0]
                .starts_with("host (41.0 MiB/s) beats the baseline (32.0) by 9.0 MiB/s"),
            "{fast:?}"
        );
        let t = table(
            &Results {
                samples: [
                    rounds_of(BASELINE, &[30.0, 32.0, 34.0]),
                    rounds_of(BASELINE_AGAIN, &[31.0, 33.0, 35.0]),
                    rounds_of(host, &[40.0, 41.0, 42.0]),
                ]
                .concat(),
                ..Default::default()
            },
            &Options {
                seconds: 3.0,
                size: 16384,
                connections: 1,
                rounds: 3,
            },
            "x",
        );
        assert!(
            t.contains("**A/A check failed**") && t.contains("- host (41.0 MiB/s) beats"),
            "{t}"
        );
    }

    #[test]
    fn one_round_leaves_the_aa_check_unjudged() {
        let samples = [
            rounds_of(BASELINE, &[30.0]),
            rounds_of(BASELINE_AGAIN, &[10.0]),
        ]
        .concat();
        let check = aa_check(&Results {
            samples: samples.clone(),
            ..Default::default()
        });
        assert!(!check.judged && check.problems.is_empty(), "{check:?}");
        let t = table(
            &Results {
                samples,
                ..Default::default()
            },
            &Options {
                seconds: 1.0,
                size: 16384,
                connections: 1,
                rounds: 1,
            },
            "x",
        );
        assert!(
            t.contains("A/A check: not judged (1 round(s); it needs 3"),
            "{t}"
        );
    }

    #[test]
    fn the_baseline_server_is_started_once_for_both_measurements() {
        let direct: Vec<_> = METHODS.iter().filter(|m| m.kind == Kind::Direct).collect();
        assert_eq!(direct.len(), 2);
        assert_eq!(direct[0].port, direct[1].port);
        // No two other methods share a port.
        let mut ports: Vec<u16> = METHODS.iter().map(|m| m.port).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), METHODS.len() - 1);
    }
}
