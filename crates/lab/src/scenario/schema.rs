//! The scenario file (`tests/scenarios/*.toml`): its schema, what is checked when it
//! loads, and the units it declares, rendered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use vm::ready::ECHO_IMAGE;

use crate::scenario::files::{self, DirFile, FileSpec, Rewrite};
use crate::units::{Listen, ServiceUnit, SocketUnit, exec_quote};
use crate::version;

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
    /// `systemctl is-failed UNIT` must say failed (or, with `failed = false`, not).
    IsFailed {
        unit: String,
        #[serde(default = "yes")]
        failed: bool,
    },
    /// The units' journal must (not) contain a text.
    Journal {
        #[serde(default)]
        contains: Option<String>,
        #[serde(default)]
        lacks: Option<String>,
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

/// The placeholders a `run` command or a probe address may hold.
pub const PLACEHOLDERS: [&str; 4] = ["{runtime}", "{image}", "{uid}", "{home}"];

/// `text` with every known placeholder filled with a sample value, or the first unknown
/// one: a `{word}` of letters and underscores that is not a shell `${word}` (and so not
/// `{print $1}` in awk either).
fn with_sample_placeholders(text: &str) -> Result<String, String> {
    let filled = text
        .replace("{runtime}", "crun")
        .replace("{image}", "localhost/image:latest")
        .replace("{uid}", "1000")
        .replace("{home}", "/home/test");
    let bytes = filled.as_bytes();
    for (i, _) in filled.match_indices('{') {
        let word: String = filled[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let closed = filled[i + 1 + word.len()..].starts_with('}');
        let shell = i > 0 && bytes[i - 1] == b'$';
        // `{{println}}` in a Go template (podman --format) is podman's, not ours.
        let template = i > 0 && bytes[i - 1] == b'{';
        if !word.is_empty() && closed && !shell && !template {
            return Err(format!(
                "unknown placeholder {{{word}}} (known: {})",
                PLACEHOLDERS.join(", ")
            ));
        }
    }
    Ok(filled)
}

fn check_seconds(key: &str, value: f64, zero_ok: bool) -> Result<(), String> {
    if !value.is_finite() || value < 0.0 || (value == 0.0 && !zero_ok) {
        return Err(format!(
            "{key} = {value}: expected a {} number of seconds",
            if zero_ok { "non-negative" } else { "positive" }
        ));
    }
    Ok(())
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
            | Step::IsFailed { unit, .. } => unit.clone(),
            Step::Probe { address, netns, .. } => match netns {
                Some(ns) => format!("{address} from {ns}"),
                None => address.clone(),
            },
            Step::Reboot {} => String::new(),
            Step::Journal { contains, lacks } => format!(
                "{}{}",
                contains
                    .as_deref()
                    .map(|c| format!("contains {c:?} "))
                    .unwrap_or_default(),
                lacks
                    .as_deref()
                    .map(|l| format!("lacks {l:?}"))
                    .unwrap_or_default()
            ),
            Step::Netinfo { container, .. } => container.clone(),
            Step::Run { command, .. } => command.clone(),
            Step::Sleep { seconds } => format!("{seconds} s"),
        }
    }

    /// Checks numbers, addresses and placeholders, so a mistake is a load error that
    /// names the key, never a trial that fails (or passes) for it.
    fn validate(&self) -> Result<(), String> {
        match self {
            Step::Probe {
                address,
                timeout,
                fail,
                retry,
                source,
                peer,
                expect,
                half_close,
                ..
            } => {
                check_seconds("timeout", *timeout, false)?;
                if !half_close && expect.is_none() {
                    return Err(
                        "half_close = false needs `expect`: the reply ends when it matches".into(),
                    );
                }
                let filled = with_sample_placeholders(address)?;
                filled
                    .parse::<echo_probe::Address>()
                    .map_err(|e| format!("address: {e}"))?;
                if fail.is_some() && (*retry || source.is_some()) {
                    return Err("a probe that must fail takes neither `retry` nor `source`".into());
                }
                match (source, peer) {
                    (Some(SourceAddress::Rewritten), None) => {
                        return Err("source = \"rewritten\" needs `peer`, the IP address the server must see (any other reply, an echo of the text included, is no proof)".into());
                    }
                    (Some(SourceAddress::Rewritten), Some(ip)) => {
                        ip.parse::<std::net::IpAddr>()
                            .map_err(|e| format!("peer = {ip:?}: {e}"))?;
                    }
                    (_, Some(_)) => return Err("`peer` goes with source = \"rewritten\"".into()),
                    _ => {}
                }
            }
            Step::Run {
                command,
                timeout,
                record,
                ..
            } => {
                if let Some(t) = timeout {
                    check_seconds("timeout", *t, false)?;
                }
                if let Some(name) = record
                    && (name.trim().is_empty() || name.contains(['\t', '\n']))
                {
                    return Err(format!(
                        "record = {name:?}: expected a name (no tab, no line break)"
                    ));
                }
                with_sample_placeholders(command)?;
            }
            Step::Sleep { seconds } => check_seconds("seconds", *seconds, true)?,
            Step::Netinfo {
                outbound,
                outbound_ok,
                outbound_error,
                ..
            } => {
                if outbound_ok.is_some() && outbound.is_none() {
                    return Err("`outbound_ok` needs `outbound`, the address to connect to".into());
                }
                match (outbound_ok, outbound_error) {
                    (Some(false), None) => {
                        return Err("outbound_ok = false needs `outbound_error`, the text of the connect error that proves why (e.g. \"Network unreachable (os error 101)\")".into());
                    }
                    (Some(true) | None, Some(_)) => {
                        return Err("`outbound_error` goes with outbound_ok = false".into());
                    }
                    _ => {}
                }
            }
            Step::Journal {
                contains: None,
                lacks: None,
            } => return Err("give `contains`, `lacks` or both".into()),
            _ => {}
        }
        Ok(())
    }
}

/// The dotted key of the first string under `value` that holds a NUL.
fn key_with_nul(value: &toml::Value, key: &str) -> Option<String> {
    match value {
        toml::Value::String(s) => s.contains('\0').then(|| key.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| key_with_nul(v, &format!("{key}[{i}]"))),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            key_with_nul(v, &key)
        }),
        _ => None,
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
    /// A scenario directory: `dir/scenario.toml` and the files beside it.
    pub fn load_dir(dir: &Path) -> Result<Scenario> {
        let manifest = files::manifest(dir);
        let mut s = Self::parse(&manifest)?;
        s.name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let p = manifest.display();
        if s.socket.is_some() || s.service.is_some() || s.quadlet.is_some() || !s.helper.is_empty()
        {
            bail!(
                "{p}: a scenario directory's units are its files; [socket], [service], [quadlet] and [[helper]] belong to TOML scenarios"
            );
        }
        s.dir_files = files::read_dir(dir, &s.files)?;
        for (name, spec) in &s.files {
            spec.mode_bits()
                .map_err(|e| anyhow::anyhow!("{p}: [files.{name:?}]: {e}"))?;
            if !spec.dest.starts_with('/') && !spec.dest.starts_with("{home}/") {
                bail!(
                    "{p}: [files.{name:?}]: dest = {:?}: expected an absolute path or {{home}}/...",
                    spec.dest
                );
            }
            if !["user", "root"].contains(&spec.owner.as_str()) {
                bail!(
                    "{p}: [files.{name:?}]: owner = {:?}: expected user or root",
                    spec.owner
                );
            }
        }
        let units = files::unit_names(&s.dir_files);
        if units.is_empty() && files::quadlet_services(&s.dir_files).is_empty() {
            bail!("{}: no unit or quadlet file to install", dir.display());
        }
        if s.scope == Scope::System
            && s.dir_files
                .iter()
                .any(|f| matches!(f.dest, files::Destination::Quadlet(_)))
        {
            bail!("{p}: quadlet files run in the user scope");
        }
        // A template needs an instance: a step that names one, or an instance drop-in.
        let instances = s.instances();
        let accepting = files::accepting_sockets(&s.dir_files);
        for t in units.iter().filter(|u| files::is_template(u)) {
            // An Accept=yes socket starts an instance of its template per connection.
            let prefix = t.split_once('@').map(|x| x.0).unwrap_or_default();
            if t.ends_with(".service") && accepting.contains(&format!("{prefix}.socket")) {
                continue;
            }
            let used = instances
                .iter()
                .any(|i| files::template_of(i).as_deref() == Some(t.as_str()))
                || units.iter().any(|u| {
                    // A template service is instantiated by its template socket.
                    files::is_template(u)
                        && u != t
                        && u.split_once('@').map(|x| x.0) == t.split_once('@').map(|x| x.0)
                        && instances
                            .iter()
                            .any(|i| files::template_of(i).as_deref() == Some(u.as_str()))
                });
            if !used {
                bail!(
                    "{}: the template {t} has no instance: start one in a step (`unit = \"{}\"`) or add an instance drop-in",
                    dir.join(t).display(),
                    t.replacen("@.", "@NAME.", 1)
                );
            }
        }
        s.validate(&manifest)?;
        Ok(s)
    }

    /// Instances of templates the scenario uses: in steps and as drop-in directories.
    fn instances(&self) -> Vec<String> {
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

    fn parse(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(key) = key_with_nul(&value, "") {
            bail!(
                "{}: key `{key}` holds a NUL character, which no command line or unit can carry",
                path.display()
            );
        }
        let mut s: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        s.file = path.to_path_buf();
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        let mut s = Self::parse(path)?;
        s.name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !s.files.is_empty() || s.rewrite != Rewrite::default() {
            bail!(
                "{}: [files] and [rewrite] belong to scenario directories (NAME/scenario.toml beside the files)",
                path.display()
            );
        }
        s.validate(path)?;
        Ok(s)
    }

    /// The checks every scenario gets when it loads.
    fn validate(&self, path: &Path) -> Result<()> {
        let s = self;
        let p = path.display();
        if s.steps.is_empty() {
            bail!("{p}: key `steps` is empty");
        }
        let steps = s.steps.len();
        let check_step = |what: &str, step: usize| -> Result<()> {
            if step == 0 || step > steps {
                bail!(
                    "{p}: {what}step = {step}: the scenario has steps 1 to {steps} (counted in [[steps]] order)"
                );
            }
            Ok(())
        };
        if s.expect.outcome == ExpectedOutcome::Fail {
            let (Some(pattern), Some(step)) = (&s.expect.pattern, s.expect.step) else {
                bail!(
                    "{p}: `expect.outcome = \"fail\"` needs `expect.step`, the step that must fail, and `expect.pattern`, the text that proves why"
                );
            };
            if pattern.trim().is_empty() {
                bail!("{p}: expect.pattern is empty");
            }
            check_step("expect.", step)?;
        } else if s.expect.pattern.is_some() || s.expect.step.is_some() {
            bail!("{p}: expect.pattern and expect.step belong to `outcome = \"fail\"`");
        }
        match (&s.claim, s.expect.outcome) {
            (None, _) if !s.claim_steps.is_empty() => {
                bail!("{p}: claim_steps without a `claim`: the steps judge nothing")
            }
            (Some(_), ExpectedOutcome::Pass) if s.claim_steps.is_empty() => bail!(
                "{p}: a scenario with a `claim` names the steps that judge it: claim_steps = [N, ...], each one that fails when the claim is false"
            ),
            (Some(_), ExpectedOutcome::Fail) if !s.claim_steps.is_empty() => {
                bail!("{p}: claim_steps: an expected failure's claim is judged at expect.step")
            }
            _ => {}
        }
        for &n in &s.claim_steps {
            if n == 0 {
                if s.load_complaints.is_empty() {
                    bail!(
                        "{p}: claim_steps: step 0 (the units' load) judges a claim only with load_complaints"
                    );
                }
                continue;
            }
            check_step("claim_", n)?;
            let step = &s.steps[n - 1];
            let judges = match step {
                Step::Reboot {} | Step::Sleep { .. } => false,
                Step::Run { record, .. } => record.is_none(),
                _ => true,
            };
            if !judges {
                bail!(
                    "{p}: claim_steps = {:?}: step {n} ({}) judges nothing (a reboot, a sleep or a recorded measurement never fails for a claim)",
                    s.claim_steps,
                    step.kind()
                );
            }
        }
        if s.load_complaints.iter().any(|c| c.trim().is_empty()) {
            bail!("{p}: load_complaints: an empty text would match any complaint");
        }
        for image in &s.prepare.images {
            let known = vm::container_image::known();
            if !known.contains(&image.as_str()) {
                bail!(
                    "{p}: prepare.images: unknown image {image:?} (the lab builds: {})",
                    known.join(", ")
                );
            }
        }
        if s.service.is_some() && s.quadlet.is_some() {
            bail!("{p}: give either [service] or [quadlet], not both");
        }
        if s.quadlet.is_some() && s.scope == Scope::System {
            bail!("{p}: quadlet scenarios run in the user scope");
        }
        for (tool, range) in [
            ("podman", &s.requires.podman),
            ("systemd", &s.requires.systemd),
        ] {
            if let Some(range) = range {
                version::check_range(range)
                    .map_err(|e| anyhow::anyhow!("{p}: requires.{tool} = {range:?}: {e}"))?;
            }
        }
        for (i, step) in s.steps.iter().enumerate() {
            step.validate()
                .map_err(|e| anyhow::anyhow!("{p}: step {} ({}): {e}", i + 1, step.kind()))?;
        }
        for b in &s.known_bug {
            version::check_range(&b.versions).map_err(|e| {
                anyhow::anyhow!(
                    "{p}: known_bug {}: versions = {:?}: {e}",
                    b.issue,
                    b.versions
                )
            })?;
            if let Some(r) = &b.runtime
                && !crate::runtimes::RUNTIMES.contains(&r.as_str())
            {
                bail!(
                    "{p}: known_bug {}: runtime = {r:?}: expected runc or crun",
                    b.issue
                );
            }
            check_step(&format!("known_bug {}: ", b.issue), b.step)?;
            if b.pattern.trim().is_empty() {
                bail!("{p}: known_bug {}: pattern is empty", b.issue);
            }
            if b.runtime.is_some() == b.tool.is_some() {
                bail!(
                    "{p}: known_bug {} needs exactly one of `runtime` and `tool`",
                    b.issue
                );
            }
        }
        // Render once so a bad unit is a load error, not a trial failure.
        if let Some(u) = s.socket_unit() {
            u.render()
                .map_err(|e| anyhow::anyhow!("{p}: [socket]: {e}"))?;
        }
        Ok(())
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

    pub fn socket_unit(&self) -> Option<SocketUnit> {
        self.socket.as_ref().map(|sock| SocketUnit {
            description: format!("socket-activation-lab {}", self.name),
            listen: sock.listen.clone(),
            options: sock.options.clone().into_iter().collect(),
        })
    }

    fn socket_name(&self) -> Option<String> {
        self.socket
            .as_ref()
            .map(|_| format!("{}.socket", self.unit))
    }

    pub fn service_unit(&self, runtime: &str) -> Option<ServiceUnit> {
        let spec = self.service.as_ref()?;
        let mut exec = podman_run_exec(&self.unit, runtime);
        exec.extend(spec.podman_args.iter().cloned());
        exec.push(spec.image.clone());
        exec.extend(spec.args.iter().cloned());
        let mut service_options = notify_service_options();
        // A service option may run podman itself (an ExecStartPre= that proves a
        // restriction): it names the trial's runtime as ExecStart= does.
        service_options.extend(
            spec.options
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{runtime}", runtime))),
        );
        Some(ServiceUnit {
            description: format!("socket-activation-lab {}", self.name),
            socket: self.socket_name(),
            unit_options: spec.unit_options.clone().into_iter().collect(),
            service_options,
            exec_start: exec,
        })
    }

    /// The quadlet `.container` file text.
    pub fn quadlet_file(&self, runtime: &str) -> Option<String> {
        let q = self.quadlet.as_ref()?;
        let mut s = format!("[Unit]\nDescription=socket-activation-lab {}\n", self.name);
        if let Some(sock) = self.socket_name() {
            s += &format!("Requires={sock}\nAfter={sock}\n");
        }
        s += &format!(
            "\n[Container]\nImage={}\nContainerName={}\nPodmanArgs=--runtime {runtime}\n",
            q.image, self.unit
        );
        if !q.args.is_empty() {
            let args: Vec<String> = q.args.iter().map(|a| exec_quote(a)).collect();
            s += &format!("Exec={}\n", args.join(" "));
        }
        for (k, v) in &q.options {
            s += &format!("{k}={v}\n");
        }
        Some(s)
    }

    pub fn helper_units(&self) -> Vec<(String, ServiceUnit)> {
        self.helper
            .iter()
            .map(|h| {
                let mut options = vec![("Type".to_string(), h.r#type.clone())];
                if h.remain_after_exit {
                    options.push(("RemainAfterExit".into(), "yes".into()));
                }
                (
                    h.name.clone(),
                    ServiceUnit {
                        description: format!("socket-activation-lab helper {}", h.name),
                        socket: None,
                        unit_options: Vec::new(),
                        service_options: options,
                        exec_start: h.exec.clone(),
                    },
                )
            })
            .collect()
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

/// A scenario file or directory (one with a `scenario.toml`).
pub fn load_path(path: &Path) -> Result<Scenario> {
    if path.is_dir() {
        Scenario::load_dir(path)
    } else {
        Scenario::load(path)
    }
}

/// Every scenario under `dir` (`*.toml` files and directories with a `scenario.toml`),
/// sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            all.push(Scenario::load(&p)?);
        } else if files::manifest(&p).is_file() {
            all.push(Scenario::load_dir(&p)?);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// The start of a socket-activated service's `ExecStart=`: `podman run` of a container
/// named `name` that replaces any leftover, with conmon relaying sd_notify.
pub fn podman_run_exec(name: &str, runtime: &str) -> Vec<String> {
    [
        "/usr/bin/podman",
        "run",
        "--rm",
        "--replace",
        "--name",
        name,
        "--cgroups=no-conmon",
        "--sdnotify=conmon",
        "--runtime",
        runtime,
    ]
    .map(String::from)
    .to_vec()
}

/// `Type=notify` with `NotifyAccess=all`: READY=1 comes from conmon, not the main PID.
pub fn notify_service_options() -> Vec<(String, String)> {
    vec![
        ("Type".into(), "notify".into()),
        ("NotifyAccess".into(), "all".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios() -> Vec<Scenario> {
        load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")).unwrap()
    }

    /// A directory's units are loaded as the journal watches them: so they must hold no
    /// template (systemd cannot load one) and every unit file and quadlet service that
    /// is not one.
    #[test]
    fn a_directorys_watched_units_are_what_can_be_loaded() {
        let dirs: Vec<Scenario> = scenarios()
            .into_iter()
            .filter(|s| !s.dir_files.is_empty())
            .collect();
        assert!(dirs.len() >= 3, "{} scenario directories", dirs.len());
        for s in &dirs {
            let units = s.journal_units();
            assert!(
                !units.iter().any(|u| files::is_template(u)),
                "{}: {units:?}",
                s.name
            );
            for u in files::unit_names(&s.dir_files)
                .into_iter()
                .chain(files::quadlet_services(&s.dir_files))
                .filter(|u| !files::is_template(u))
            {
                assert!(units.contains(&u), "{}: {u} not in {units:?}", s.name);
            }
        }
    }

    #[test]
    fn shipped_scenarios_load_and_render() {
        let all = scenarios();
        assert!(all.iter().any(|s| s.name == "echo-tcp4"));
        for s in &all {
            if let Some(u) = s.socket_unit() {
                u.render().unwrap();
            }
            if let Some(u) = s.service_unit("crun") {
                u.render().unwrap();
            }
            for (_, u) in s.helper_units() {
                u.render().unwrap();
            }
        }
    }

    #[test]
    fn echo_tcp4_service_golden() {
        let s = scenarios()
            .into_iter()
            .find(|s| s.name == "echo-tcp4")
            .unwrap();
        assert_eq!(
            s.service_unit("runc").unwrap().render().unwrap(),
            "[Unit]\nDescription=socket-activation-lab echo-tcp4\nRequires=echo.socket\nAfter=echo.socket\n\n[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/bin/podman run --rm --replace --name echo --cgroups=no-conmon --sdnotify=conmon --runtime runc --network=none --pull=never localhost/socket-activate-echo:latest\n"
        );
    }

    #[test]
    fn bad_scenario_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        std::fs::write(&p, "description = \"x\"\n[[steps]]\ndo = \"jump\"\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p).unwrap_err());
        assert!(
            e.contains("x.toml") && e.contains("unknown variant `jump`"),
            "{e}"
        );
    }

    #[test]
    fn known_bug_needs_runtime_or_tool() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\nversions = \"<1\"\nissue = \"u\"\npattern = \"x\"\nstep = 1\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p).unwrap_err());
        assert!(
            e.contains("needs exactly one of `runtime` and `tool`"),
            "{e}"
        );
    }

    fn load_text(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        format!("{:#}", Scenario::load(&p).unwrap_err())
    }

    #[rstest::rstest]
    #[case::range("[requires]\npodman = \"=>4.4\"\n", "requires.podman = \"=>4.4\"")]
    #[case::empty_range("[requires]\nsystemd = \"\"\n", "an empty range")]
    #[case::negative_timeout(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:3000\"\ntimeout = -1.0\n",
        "step 2 (probe): timeout = -1: expected a positive number"
    )]
    #[case::nan_timeout(
        "[[steps]]\ndo = \"run\"\ncommand = \"true\"\ntimeout = nan\n",
        "step 2 (run): timeout = NaN"
    )]
    #[case::address(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1\"\n",
        "step 2 (probe): address: address \"tcp4:127.0.0.1\""
    )]
    #[case::placeholder(
        "[[steps]]\ndo = \"run\"\ncommand = \"podman run {imag}\"\n",
        "unknown placeholder {imag}"
    )]
    #[case::nul(
        "[[steps]]\ndo = \"run\"\ncommand = \"a\\u0000b\"\n",
        "key `steps[1].command` holds a NUL"
    )]
    #[case::must_fail_retry(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:1\"\nfail = \"refused\"\nretry = true\n",
        "a probe that must fail takes neither `retry` nor `source`"
    )]
    #[case::outbound_failure_unsaid(
        "[[steps]]\ndo = \"netinfo\"\ncontainer = \"echo\"\noutbound = \"tcp4:10.0.2.2:1\"\noutbound_ok = false\n",
        "step 2 (netinfo): outbound_ok = false needs `outbound_error`"
    )]
    #[case::outbound_error_on_success(
        "[[steps]]\ndo = \"netinfo\"\ncontainer = \"echo\"\noutbound = \"tcp4:10.0.2.2:1\"\noutbound_ok = true\noutbound_error = \"x\"\n",
        "step 2 (netinfo): `outbound_error` goes with outbound_ok = false"
    )]
    #[case::outbound_ok_without_address(
        "[[steps]]\ndo = \"netinfo\"\ncontainer = \"echo\"\noutbound_ok = true\n",
        "step 2 (netinfo): `outbound_ok` needs `outbound`"
    )]
    #[case::rewritten_without_peer(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:1\"\nsource = \"rewritten\"\n",
        "source = \"rewritten\" needs `peer`"
    )]
    #[case::bug_runtime(
        "[[known_bug]]\nruntime = \"youki\"\nversions = \"*\"\nissue = \"u\"\npattern = \"x\"\nstep = 1\n",
        "runtime = \"youki\": expected runc or crun"
    )]
    fn bad_values_are_load_errors_naming_file_key_and_value(
        #[case] extra: &str,
        #[case] message: &str,
    ) {
        let text = format!("description = \"d\"\n[[steps]]\ndo = \"reboot\"\n{extra}");
        let e = load_text(&text);
        assert!(e.contains("bad.toml") && e.contains(message), "{e}");
    }

    #[rstest::rstest]
    #[case::claim_unjudged(
        "claim = \"c\"\n",
        "a scenario with a `claim` names the steps that judge it"
    )]
    #[case::claim_judged_by_a_reboot(
        "claim = \"c\"\nclaim_steps = [1]\n",
        "step 1 (reboot) judges nothing"
    )]
    #[case::claim_step_out_of_range(
        "claim = \"c\"\nclaim_steps = [3]\n",
        "claim_step = 3: the scenario has steps 1 to 2"
    )]
    #[case::claim_steps_without_claim("claim_steps = [2]\n", "claim_steps without a `claim`")]
    fn a_claim_names_the_steps_that_judge_it(#[case] top: &str, #[case] message: &str) {
        let text = format!(
            "description = \"d\"\n{top}[[steps]]\ndo = \"reboot\"\n[[steps]]\ndo = \"start\"\nunit = \"echo.socket\"\n"
        );
        let e = load_text(&text);
        assert!(e.contains("bad.toml") && e.contains(message), "{e}");
    }

    #[test]
    fn an_unknown_key_on_a_step_without_arguments_is_an_error() {
        let e = load_text("description = \"d\"\n[[steps]]\ndo = \"reboot\"\nclaim = \"c\"\n");
        assert!(e.contains("unknown field `claim`"), "{e}");
    }

    #[test]
    fn placeholders_and_addresses_that_are_fine_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ok.toml");
        std::fs::write(
            &p,
            "description = \"d\"\n[[steps]]\ndo = \"probe\"\naddress = \"unix:{home}/s\"\n[[steps]]\ndo = \"run\"\ncommand = \"podman run --runtime {runtime} {image}; echo ${HOME} {uid} | awk {print $1}; podman ps --format {{.Names}}{{println}}\"\n",
        )
        .unwrap();
        Scenario::load(&p).unwrap();
    }
}
