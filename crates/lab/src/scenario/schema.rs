//! The scenario file (`tests/scenarios/*.toml`): its schema, and what follows from it
//! alone (the steps that judge the claim, the units to watch). [`super::load`] reads
//! it, [`super::check`] checks it, [`super::render`] makes its units.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vm::ready::ECHO_IMAGE;

use crate::scenario::files::{self, DirFile, FileSpec, Rewrite};
use crate::units::Listen;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    /// What the articles claim, for the summary.
    #[serde(default)]
    pub claim: Option<String>,
    /// The steps that judge the claim, counted from 1 (0: the units' load, with
    /// `load_complaints`): each fails when the claim is false.
    /// A mutant counts as caught only at one of them. An expected failure's claim is
    /// judged at `expect.step`.
    #[serde(default)]
    pub claim_steps: Vec<usize>,
    /// Part of the representative subset that `cargo xtask ci` runs.
    #[serde(default)]
    pub ci: bool,
    /// The unit name stem: `echo` makes `echo.socket` and `echo.service`.
    #[serde(default = "default_unit")]
    pub unit: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub prepare: Prepare,
    #[serde(default)]
    pub socket: Option<SocketSpec>,
    #[serde(default)]
    pub service: Option<ServiceSpec>,
    /// A quadlet `.container` instead of a service unit.
    #[serde(default)]
    pub quadlet: Option<QuadletSpec>,
    #[serde(default)]
    pub helper: Vec<HelperSpec>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub expect: Expectation,
    #[serde(default)]
    pub known_bug: Vec<KnownBug>,
    #[serde(default)]
    pub requires: Requires,
    /// What systemd must say when it loads the units (a key the version at hand does not
    /// know): each text must be in one of its complaints, and any other complaint still
    /// fails the trial.
    #[serde(default)]
    pub load_complaints: Vec<String>,
    /// A scenario directory's other files and where they go.
    #[serde(default)]
    pub files: BTreeMap<String, FileSpec>,
    /// The only changes the lab may make to a scenario directory's files.
    #[serde(default)]
    pub rewrite: Rewrite,
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub file: PathBuf,
    /// A scenario directory's files as read (units, drop-ins, quadlets, declared files);
    /// empty for a TOML scenario.
    #[serde(skip)]
    pub dir_files: Vec<DirFile>,
}

fn default_unit() -> String {
    "echo".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The test user's manager (`systemctl --user`), units in `~/.config/systemd/user`.
    #[default]
    User,
    /// The system manager, units in `/etc/systemd/system`.
    System,
}

impl Scope {
    pub fn manager(self) -> vm::guest::Manager {
        match self {
            Scope::User => vm::guest::Manager::User,
            Scope::System => vm::guest::Manager::System,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    /// Written to `/etc/sysctl.d/90-socket-activation-lab.conf` and applied.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// A network namespace `client` joined by a veth pair: the guest end `lab0` is
    /// 192.0.2.1/24, the client end 192.0.2.10/24.
    #[serde(default)]
    pub client_netns: bool,
    /// Container images the lab builds from the Debian archive and imports into the
    /// guest (`systemd`: systemd as PID 1, as `localhost/sal-systemd`).
    #[serde(default)]
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSpec {
    pub listen: Vec<Listen>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Options for `podman run` between the lab's fixed ones and the image.
    #[serde(default)]
    pub podman_args: Vec<String>,
    #[serde(default = "default_image")]
    pub image: String,
    /// Arguments for the echo server.
    #[serde(default)]
    pub args: Vec<String>,
    /// `[Service]` settings.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `[Unit]` settings.
    #[serde(default)]
    pub unit_options: BTreeMap<String, String>,
}

fn default_image() -> String {
    ECHO_IMAGE.into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuadletSpec {
    #[serde(default = "default_image")]
    pub image: String,
    /// `[Container]` settings (`Network=none`, ...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub args: Vec<String>,
}

/// A helper service, such as `podman-usernamespace.service`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperSpec {
    pub name: String,
    pub exec: Vec<String>,
    #[serde(default = "default_oneshot")]
    pub r#type: String,
    #[serde(default)]
    pub remain_after_exit: bool,
}

fn default_oneshot() -> String {
    "oneshot".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    #[default]
    User,
    Root,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceAddress {
    /// The server saw the client's own address.
    Preserved,
    /// The server saw another address.
    Rewritten,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    Start {
        unit: String,
    },
    Stop {
        unit: String,
    },
    Enable {
        unit: String,
    },
    ResetFailed {
        unit: String,
    },
    /// `echo-probe ADDRESS` in the guest (as root, or in the client namespace).
    Probe {
        address: String,
        #[serde(default = "default_text")]
        send: String,
        #[serde(default)]
        expect: Option<String>,
        #[serde(default = "default_probe_timeout")]
        timeout: f64,
        /// Run in this network namespace (`client`).
        #[serde(default)]
        netns: Option<String>,
        /// Check the reply of a `--reply-peer` server against our own address.
        #[serde(default)]
        source: Option<SourceAddress>,
        /// With `source = "rewritten"`: the IP address the server must have seen instead
        /// of ours (the one the port forwarder connects from).
        #[serde(default)]
        peer: Option<String>,
        /// The probe must fail, and in this way: `refused` (nothing listens), `reset`
        /// (accepted, then reset), `no-reply`, `connect-timeout`, `connect-error`,
        /// `mismatch`. Any other failure (a usage error, a missing binary, a failed
        /// `ip netns exec`, another kind) fails the step.
        #[serde(default)]
        fail: Option<echo_probe::Failure>,
        /// Retry every half second until `timeout` (for servers that start in the
        /// background, where a connection can be refused before they listen).
        #[serde(default)]
        retry: bool,
        /// On a stream, half-close after sending (the default, as `echo hello | nc -N`
        /// does); `false` keeps the write side open until the reply is in
        /// (`echo-probe --keep-open`, needs `expect`).
        #[serde(default = "yes")]
        half_close: bool,
    },
    /// A real reboot of the guest.
    Reboot {},
    /// `systemctl is-failed UNIT` must say failed (or, with `failed = false`, not), once
    /// the unit is out of a passing state (activating, deactivating, ...). `within =
    /// SECONDS`: an active unit may still fail until then (a notify service started
    /// before its server looks for its socket); without it, active is the answer.
    IsFailed {
        unit: String,
        #[serde(default = "yes")]
        failed: bool,
        #[serde(default)]
        within: Option<f64>,
    },
    /// The units' journal must (not) contain a text.
    Journal {
        #[serde(default)]
        contains: Option<String>,
        #[serde(default)]
        lacks: Option<String>,
        /// With `contains`: wait up to this many seconds for the text, for what systemd
        /// logs on its own later (a start timeout, a start limit), and go on the moment
        /// it is there instead of sleeping a fixed time first.
        #[serde(default)]
        within: Option<f64>,
    },
    /// `echo-probe netinfo` inside a running container via `podman exec`.
    Netinfo {
        container: String,
        /// The exact set of interfaces with addresses, e.g. `["lo"]`.
        #[serde(default)]
        interfaces: Option<Vec<String>>,
        /// Whether an interface other than `lo` has an address (its name varies).
        #[serde(default)]
        other_interfaces: Option<bool>,
        /// A stream address to reach from inside the container: it must be the test's
        /// own echo server, since reaching it means a line echoed back.
        #[serde(default)]
        outbound: Option<String>,
        /// true: the line came back; false: no connection at all (see `outbound_error`).
        #[serde(default)]
        outbound_ok: Option<bool>,
        /// With `outbound_ok = false`: a text the connect error must contain (e.g.
        /// "Network unreachable (os error 101)"), so a failure of another kind is not taken for it.
        #[serde(default)]
        outbound_error: Option<String>,
    },
    /// A shell command. Placeholders: {runtime}, {image}, {uid}, {home}.
    Run {
        command: String,
        #[serde(default, rename = "as")]
        who: Who,
        #[serde(default)]
        exit: i32,
        /// A text the output (stdout and stderr) must contain.
        #[serde(default)]
        contains: Option<String>,
        /// The whole standard output, trimmed, line for line: for values a wrong state
        /// also contains as a substring (`inactive` holds `active`, `unhealthy` holds
        /// `healthy`).
        #[serde(default)]
        output: Option<String>,
        /// Seconds the command may take (default 300).
        #[serde(default)]
        timeout: Option<f64>,
        /// Record the command's output (trimmed) under this name: a measurement that goes
        /// to the reports beside the verdict, never into it.
        #[serde(default)]
        record: Option<String>,
    },
    /// Wait, for things that settle on their own.
    Sleep {
        seconds: f64,
    },
}

impl Step {
    /// The step's kind as scenario files spell it (`do = "probe"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Start { .. } => "start",
            Step::Stop { .. } => "stop",
            Step::Enable { .. } => "enable",
            Step::ResetFailed { .. } => "reset-failed",
            Step::Probe { .. } => "probe",
            Step::Reboot {} => "reboot",
            Step::IsFailed { .. } => "is-failed",
            Step::Journal { .. } => "journal",
            Step::Netinfo { .. } => "netinfo",
            Step::Run { .. } => "run",
            Step::Sleep { .. } => "sleep",
        }
    }

    /// The step's main argument, for headings: the unit, the address, the command.
    pub fn summary(&self) -> String {
        match self {
            Step::Start { unit }
            | Step::Stop { unit }
            | Step::Enable { unit }
            | Step::ResetFailed { unit }
            | Step::IsFailed {
                unit, within: None, ..
            } => unit.clone(),
            Step::IsFailed {
                unit,
                within: Some(w),
                ..
            } => format!("{unit} within {w} s"),
            Step::Probe { address, netns, .. } => match netns {
                Some(ns) => format!("{address} from {ns}"),
                None => address.clone(),
            },
            Step::Reboot {} => String::new(),
            Step::Journal {
                contains,
                lacks,
                within,
            } => format!(
                "{}{}{}",
                contains
                    .as_deref()
                    .map(|c| format!("contains {c:?} "))
                    .unwrap_or_default(),
                lacks
                    .as_deref()
                    .map(|l| format!("lacks {l:?}"))
                    .unwrap_or_default(),
                within.map(|w| format!("within {w} s")).unwrap_or_default()
            ),
            Step::Netinfo { container, .. } => container.clone(),
            Step::Run { command, .. } => command.clone(),
            Step::Sleep { seconds } => format!("{seconds} s"),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_text() -> String {
    "hello".into()
}

fn default_probe_timeout() -> f64 {
    30.0
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    #[serde(default)]
    pub outcome: ExpectedOutcome,
    /// With `outcome = "fail"`: a text that must appear in the failure, in the output of
    /// the step `step` or in the units' journal lines logged while that step ran, so the
    /// scenario fails where and for the reason it claims.
    #[serde(default)]
    pub pattern: Option<String>,
    /// With `outcome = "fail"`: the step that must fail, counted from 1 in `[[steps]]`.
    #[serde(default)]
    pub step: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedOutcome {
    #[default]
    Pass,
    Fail,
}

/// An upstream bug: on `runtime` in `versions`, the scenario fails with `pattern`.
#[derive(Debug, Clone, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KnownBug {
    /// The runtime (`runc`, `crun`) whose versions carry the bug...
    #[serde(default)]
    pub runtime: Option<String>,
    /// ...or another component read from the guest (`container-selinux`, `podman`). A bug
    /// of a component the guest does not have (no SELinux on Debian) does not apply.
    #[serde(default)]
    pub tool: Option<String>,
    pub versions: String,
    pub issue: String,
    /// The text that proves the bug, in the output of step `step` (counted from 1) or the
    /// units' journal lines logged while it ran.
    pub pattern: String,
    pub step: usize,
    /// The pattern settles its step the moment it is logged (the application was handed
    /// another socket than the one probed, so no answer can come): a probe at that step
    /// stops waiting once the text is in the journal, instead of waiting out its timeout.
    #[serde(default)]
    pub decisive: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// A version range podman must be in (`>=4.4` for quadlet).
    #[serde(default)]
    pub podman: Option<String>,
    #[serde(default)]
    pub systemd: Option<String>,
    /// The guest has SELinux (container-selinux installed): a scenario about labels
    /// proves nothing without it, and SKIPs.
    #[serde(default)]
    pub selinux: bool,
    /// Why a scenario cannot run anywhere yet (reported as SKIP).
    #[serde(default)]
    pub unavailable: Option<String>,
    /// Why the version ranges are what they are, added to the SKIP's reason.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Scenario {
    /// Instances of templates the scenario uses: in steps and as drop-in directories.
    pub(super) fn instances(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Start { unit }
                | Step::Stop { unit }
                | Step::Enable { unit }
                | Step::ResetFailed { unit }
                | Step::IsFailed { unit, .. } => Some(unit.clone()),
                _ => None,
            })
            .filter(|u| files::template_of(u).is_some())
            .collect();
        for f in &self.dir_files {
            if let Some((dropin, _)) = f.name.split_once(".d/")
                && files::template_of(dropin).is_some()
                && !names.iter().any(|n| n == dropin)
            {
                names.push(dropin.to_string());
            }
        }
        names
    }

    /// The steps that judge the claim: `claim_steps`, or an expected failure's step, and
    /// then step 0 (the units' load) when the scenario expects systemd to complain.
    pub fn claim_steps(&self) -> Vec<usize> {
        let mut steps = match (self.expect.outcome, self.expect.step) {
            (ExpectedOutcome::Fail, Some(step)) if self.claim.is_some() => vec![step],
            _ => self.claim_steps.clone(),
        };
        if self.claim.is_some() && !self.load_complaints.is_empty() && !steps.contains(&0) {
            steps.insert(0, 0);
        }
        steps
    }

    /// `UNIT.socket` when the scenario declares a socket.
    pub(super) fn socket_name(&self) -> Option<String> {
        self.socket
            .as_ref()
            .map(|_| format!("{}.socket", self.unit))
    }

    /// The units whose journal explains a failure.
    pub fn journal_units(&self) -> Vec<String> {
        if !self.dir_files.is_empty() {
            let mut units: Vec<String> = files::unit_names(&self.dir_files)
                .into_iter()
                .filter(|u| !files::is_template(u))
                .collect();
            units.extend(
                files::quadlet_services(&self.dir_files)
                    .into_iter()
                    .filter(|u| !files::is_template(u)),
            );
            for i in self.instances() {
                // A socket instance activates the service instance of the same name.
                if let Some(stem) = i.strip_suffix(".socket") {
                    units.push(format!("{stem}.service"));
                }
                units.push(i);
            }
            units.sort();
            units.dedup();
            return units;
        }
        let mut units: Vec<String> = self.socket_name().into_iter().collect();
        if self.service.is_some() || self.quadlet.is_some() {
            units.push(format!("{}.service", self.unit));
        }
        units.extend(self.helper.iter().map(|h| h.name.clone()));
        for step in &self.steps {
            if let Step::Start { unit } | Step::Enable { unit } = step
                && !units.contains(unit)
            {
                units.push(unit.clone());
            }
        }
        units
    }
}
