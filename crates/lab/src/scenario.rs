//! Scenarios are data (`tests/scenarios/*.toml`): the units, host-side preparation, the
//! steps, the expected outcome and the known upstream bugs. Running one on a guest gives
//! an outcome with its evidence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::units::{Listen, ServiceUnit, SocketUnit, exec_quote};
use crate::version;
use crate::vm::TrialVm;

pub const ECHO_IMAGE: &str = "localhost/socket-activate-echo:latest";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    /// What the articles claim, for the summary.
    #[serde(default)]
    pub claim: Option<String>,
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
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub file: PathBuf,
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
pub enum Source {
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
        source: Option<Source>,
        /// The probe must fail (nothing answers there).
        #[serde(default)]
        fail: bool,
        /// Retry every half second until `timeout` (for servers that start in the
        /// background, where a connection can be refused before they listen).
        #[serde(default)]
        retry: bool,
    },
    /// A real reboot of the guest.
    Reboot,
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
        #[serde(default)]
        outbound: Option<String>,
        #[serde(default)]
        outbound_ok: Option<bool>,
    },
    /// A shell command. Placeholders: {runtime}, {image}, {uid}, {home}.
    Run {
        command: String,
        #[serde(default, rename = "as")]
        who: Who,
        #[serde(default)]
        exit: i32,
        #[serde(default)]
        contains: Option<String>,
        /// Seconds the command may take (default 300).
        #[serde(default)]
        timeout: Option<f64>,
    },
    /// Wait, for things that settle on their own.
    Sleep {
        seconds: f64,
    },
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
    /// With `outcome = "fail"`: a text that must appear in the failure (step output or
    /// journal), so the scenario fails for the reason it claims.
    #[serde(default)]
    pub pattern: Option<String>,
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
    pub pattern: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// A version range podman must be in (`>=4.4` for quadlet).
    #[serde(default)]
    pub podman: Option<String>,
    #[serde(default)]
    pub systemd: Option<String>,
    /// Why a scenario cannot run anywhere yet (reported as SKIP).
    #[serde(default)]
    pub unavailable: Option<String>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        s.name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        s.file = path.to_path_buf();
        let p = path.display();
        if s.steps.is_empty() {
            bail!("{p}: key `steps` is empty");
        }
        if s.expect.outcome == ExpectedOutcome::Fail && s.expect.pattern.is_none() {
            bail!(
                "{p}: `expect.outcome = \"fail\"` needs `expect.pattern`, the text that proves why it fails"
            );
        }
        if s.service.is_some() && s.quadlet.is_some() {
            bail!("{p}: give either [service] or [quadlet], not both");
        }
        if s.quadlet.is_some() && s.scope == Scope::System {
            bail!("{p}: quadlet scenarios run in the user scope");
        }
        for b in &s.known_bug {
            version::in_range("1.0", &b.versions)
                .map_err(|e| anyhow::anyhow!("{p}: known_bug {}: {e}", b.issue))?;
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
        Ok(s)
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
        service_options.extend(spec.options.clone());
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

/// Every scenario under `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            all.push(Scenario::load(&p)?);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    /// A known upstream bug reproduced.
    Xfail,
    /// A known upstream bug did not reproduce: loud, and a failure of the run.
    Xpass,
    Skip,
}

impl Outcome {
    pub fn is_bad(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Xpass)
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Xfail => "XFAIL",
            Outcome::Xpass => "XPASS",
            Outcome::Skip => "SKIP",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialResult {
    /// `scenario::target::runtime`
    pub name: String,
    pub scenario: String,
    pub target: String,
    pub runtime: String,
    pub outcome: Outcome,
    pub elapsed_s: f64,
    pub versions: BTreeMap<String, String>,
    /// The upstream issue behind an XFAIL or XPASS.
    #[serde(default)]
    pub issue: Option<String>,
    /// Why: the failing step and the journal lines, or what the expected failure showed.
    pub detail: String,
    pub log_dir: PathBuf,
}

impl TrialResult {
    pub fn runtime_version(&self) -> &str {
        self.versions
            .get(&self.runtime)
            .map(String::as_str)
            .unwrap_or("?")
    }

    pub fn summary_line(&self) -> String {
        let podman = self
            .versions
            .get("podman")
            .map(String::as_str)
            .unwrap_or("?");
        let first = self.detail.lines().next().unwrap_or_default();
        let why = if first.is_empty() {
            String::new()
        } else {
            format!(": {first}")
        };
        let issue = self
            .issue
            .as_deref()
            .map(|i| format!(" [{i}]"))
            .unwrap_or_default();
        format!(
            "{} {} ({} {}, podman {podman}) in {:.1} s{issue}{why}",
            self.outcome.label(),
            self.name,
            self.runtime,
            self.runtime_version(),
            self.elapsed_s
        )
    }
}

/// Whether the scenario can run on a guest with these versions; the reason if not.
pub fn skip_reason(scenario: &Scenario, versions: &BTreeMap<String, String>) -> Option<String> {
    if let Some(why) = &scenario.requires.unavailable {
        return Some(why.clone());
    }
    for (tool, range) in [
        ("podman", &scenario.requires.podman),
        ("systemd", &scenario.requires.systemd),
    ] {
        if let Some(range) = range {
            let v = versions.get(tool).map(String::as_str).unwrap_or("0");
            if !version::in_range(v, range).unwrap_or(false) {
                return Some(format!("needs {tool} {range}, the guest has {v}"));
            }
        }
    }
    None
}

struct StepFailure {
    step: String,
    output: String,
}

/// Fills the placeholders of a `run` command.
fn expand(text: &str, runtime: &str, user: &crate::target::User) -> String {
    text.replace("{runtime}", runtime)
        .replace("{image}", ECHO_IMAGE)
        .replace("{uid}", &user.uid.to_string())
        .replace("{home}", &format!("/home/{}", user.name))
}

fn q(s: &str) -> String {
    shlex::try_quote(s).expect("no NUL").into_owned()
}

/// The runtime a trial uses: its name (what known bugs name), what podman gets as
/// `--runtime`, and the version the binary reported in the guest.
#[derive(Debug, Clone)]
pub struct RuntimeUse {
    pub name: String,
    pub podman_arg: String,
    pub version: String,
}

/// Runs `scenario` with `runtime` on a guest restored to the ready state, and judges the
/// outcome against the expectation and the known bugs for the runtime's version.
pub fn run_trial(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
) -> Result<(Outcome, String, Option<String>)> {
    install(vm, scenario, &runtime.podman_arg)?;
    let failure = run_steps(vm, scenario, &runtime.podman_arg)?;
    let units = scenario.journal_units();
    let journal = journal(vm, scenario, &units);
    std::fs::write(vm.dir.join("journal.txt"), &journal)?;
    Ok(judge(scenario, runtime, versions, failure, &journal))
}

/// The known bugs that apply to this runtime and these guest versions.
fn applicable<'a>(
    scenario: &'a Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
) -> Vec<&'a KnownBug> {
    scenario
        .known_bug
        .iter()
        .filter(|b| {
            let version = match (&b.runtime, &b.tool) {
                (Some(r), _) if *r == runtime.name => Some(runtime.version.as_str()),
                (_, Some(t)) => versions
                    .get(t)
                    .map(String::as_str)
                    .filter(|v| !v.is_empty()),
                _ => None,
            };
            version.is_some_and(|v| version::in_range(v, &b.versions).unwrap_or(false))
        })
        .collect()
}

/// What a known bug is about on this guest: `crun 1.21`, `container-selinux 2.180.0`.
fn affected(b: &KnownBug, runtime: &RuntimeUse, versions: &BTreeMap<String, String>) -> String {
    match &b.tool {
        Some(t) => format!("{t} {}", versions.get(t).map(String::as_str).unwrap_or("?")),
        None => format!("{} {}", runtime.name, runtime.version),
    }
}

fn judge(
    scenario: &Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
    failure: Option<StepFailure>,
    journal: &str,
) -> (Outcome, String, Option<String>) {
    let tail = |text: &str| -> String {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let bugs = applicable(scenario, runtime, versions);
    match failure {
        None => {
            if let Some(b) = bugs.first() {
                return (
                    Outcome::Xpass,
                    format!(
                        "known bug did not reproduce on {} (listed for {})",
                        affected(b, runtime, versions),
                        b.versions
                    ),
                    Some(b.issue.clone()),
                );
            }
            match scenario.expect.outcome {
                ExpectedOutcome::Pass => (Outcome::Pass, String::new(), None),
                ExpectedOutcome::Fail => (
                    Outcome::Fail,
                    "expected a failure, but every step passed".into(),
                    None,
                ),
            }
        }
        Some(f) => {
            let evidence = format!("{}\n{journal}", f.output);
            for b in &bugs {
                if let Some(line) = evidence.lines().find(|l| l.contains(&b.pattern)) {
                    return (
                        Outcome::Xfail,
                        format!("known bug at `{}`: {}", f.step, line.trim()),
                        Some(b.issue.clone()),
                    );
                }
            }
            if let (ExpectedOutcome::Fail, Some(pattern)) =
                (scenario.expect.outcome, &scenario.expect.pattern)
            {
                if let Some(line) = evidence.lines().find(|l| l.contains(pattern.as_str())) {
                    return (
                        Outcome::Pass,
                        format!("failed as expected at `{}`: {}", f.step, line.trim()),
                        None,
                    );
                }
                return (
                    Outcome::Fail,
                    format!(
                        "failed at `{}` but without {pattern:?}: {}\njournal:\n{}",
                        f.step,
                        f.output.trim(),
                        tail(journal)
                    ),
                    None,
                );
            }
            (
                Outcome::Fail,
                format!(
                    "step `{}` failed: {}\njournal:\n{}",
                    f.step,
                    f.output.trim(),
                    tail(journal)
                ),
                None,
            )
        }
    }
}

fn unit_dir(vm: &TrialVm, scope: Scope) -> (String, Option<String>) {
    match scope {
        Scope::User => (
            format!("/home/{}/.config/systemd/user", vm.guest.user.name),
            Some(vm.guest.user.name.clone()),
        ),
        Scope::System => ("/etc/systemd/system".into(), None),
    }
}

/// Runs `systemctl ARGS` in the scenario's scope.
/// The scenario's socket units that are in the failed state, if any.
fn failed_sockets(vm: &TrialVm, scenario: &Scenario) -> Result<Option<String>> {
    let sockets: Vec<String> = scenario
        .journal_units()
        .into_iter()
        .filter(|u| u.ends_with(".socket"))
        .collect();
    if sockets.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = sockets.iter().map(|u| q(u)).collect();
    let out = systemctl(
        vm,
        scenario.scope,
        &format!("is-failed {}", names.join(" ")),
    )?;
    let failed: Vec<&str> = sockets
        .iter()
        .zip(out.stdout.lines())
        .filter(|(_, state)| state.trim() == "failed")
        .map(|(u, _)| u.as_str())
        .collect();
    Ok((!failed.is_empty()).then(|| failed.join(", ")))
}

fn systemctl(vm: &TrialVm, scope: Scope, args: &str) -> Result<crate::proc::Output> {
    let t = Duration::from_secs(120);
    match scope {
        Scope::User => vm.guest.user(&format!("systemctl --user {args}"), t),
        Scope::System => vm.guest.root(&format!("systemctl {args}"), t),
    }
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

/// The guest address a client in the `client` namespace reaches the guest at.
pub const CLIENT_NETNS_SERVER: &str = "192.0.2.1";

/// A network namespace `client` on a veth pair: the guest end is
/// [`CLIENT_NETNS_SERVER`]/24, the client end 192.0.2.10/24, so a client there arrives
/// from outside the guest's loopback, as a remote client would.
pub fn add_client_netns(g: &crate::guest::Guest) -> Result<()> {
    g.root_ok(
        &format!(
            "set -e; ip netns add client; ip link add lab0 type veth peer name lab1; ip link set lab1 netns client; \
             ip addr add {CLIENT_NETNS_SERVER}/24 dev lab0; ip link set lab0 up; ip -n client addr add 192.0.2.10/24 dev lab1; \
             ip -n client link set lab1 up; ip -n client link set lo up; ip -n client route add default via {CLIENT_NETNS_SERVER}"
        ),
        Duration::from_secs(120),
    )?;
    Ok(())
}

fn install(vm: &TrialVm, scenario: &Scenario, runtime: &str) -> Result<()> {
    let g = &vm.guest;
    let t = Duration::from_secs(120);
    if !scenario.prepare.sysctl.is_empty() {
        let text: String = scenario
            .prepare
            .sysctl
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        g.write_file(
            "/etc/sysctl.d/90-socket-activation-lab.conf",
            text.as_bytes(),
            None,
            0o644,
        )?;
        g.root_ok(
            "sysctl -q -p /etc/sysctl.d/90-socket-activation-lab.conf",
            t,
        )?;
    }
    if scenario.prepare.client_netns {
        add_client_netns(g)?;
    }
    let (dir, owner) = unit_dir(vm, scenario.scope);
    let write = |name: &str, text: &str, dir: &str| -> Result<()> {
        g.write_file(
            &format!("{dir}/{name}"),
            text.as_bytes(),
            owner.as_deref(),
            0o644,
        )?;
        std::fs::write(vm.dir.join(name), text)?;
        Ok(())
    };
    if let Some(u) = scenario.socket_unit() {
        write(
            &format!("{}.socket", scenario.unit),
            &u.render().map_err(anyhow::Error::msg)?,
            &dir,
        )?;
    }
    if let Some(u) = scenario.service_unit(runtime) {
        write(
            &format!("{}.service", scenario.unit),
            &u.render().map_err(anyhow::Error::msg)?,
            &dir,
        )?;
    }
    for (name, u) in scenario.helper_units() {
        write(&name, &u.render().map_err(anyhow::Error::msg)?, &dir)?;
    }
    if let Some(text) = scenario.quadlet_file(runtime) {
        let qdir = format!("/home/{}/.config/containers/systemd", g.user.name);
        write(&format!("{}.container", scenario.unit), &text, &qdir)?;
    }
    let reload = systemctl(vm, scenario.scope, "daemon-reload")?;
    if !reload.success() {
        bail!("daemon-reload failed: {}", reload.combined());
    }
    Ok(())
}

fn journal(vm: &TrialVm, scenario: &Scenario, units: &[String]) -> String {
    let refs: Vec<&str> = units.iter().map(String::as_str).collect();
    match scenario.scope {
        Scope::User => vm.guest.user_unit_journal(&refs, 300),
        Scope::System => {
            let args: Vec<String> = units.iter().map(|u| format!("-u {}", q(u))).collect();
            vm.guest
                .root(
                    &format!(
                        "journalctl --no-pager -o short-monotonic -n 300 {}",
                        args.join(" ")
                    ),
                    Duration::from_secs(60),
                )
                .map(|o| o.combined())
                .unwrap_or_else(|e| format!("(journal unavailable: {e:#})"))
        }
    }
}

fn run_steps(vm: &TrialVm, scenario: &Scenario, runtime: &str) -> Result<Option<StepFailure>> {
    let g = &vm.guest;
    let fail = |step: String, output: String| Ok(Some(StepFailure { step, output }));
    for step in &scenario.steps {
        match step {
            Step::Start { unit }
            | Step::Stop { unit }
            | Step::Enable { unit }
            | Step::ResetFailed { unit } => {
                let verb = match step {
                    Step::Start { .. } => "start",
                    Step::Stop { .. } => "stop",
                    Step::Enable { .. } => "enable",
                    _ => "reset-failed",
                };
                let out = systemctl(vm, scenario.scope, &format!("{verb} {}", q(unit)))?;
                if !out.success() {
                    return fail(format!("{verb} {unit}"), out.combined());
                }
            }
            Step::Probe {
                address,
                send,
                expect,
                timeout,
                netns,
                source,
                fail: must_fail,
                retry,
            } => {
                let address = expand(address, runtime, &g.user);
                let mut cmd = format!(
                    "echo-probe {} --send {} --timeout {timeout} --json",
                    q(&address),
                    q(send)
                );
                if let Some(e) = expect {
                    cmd += &format!(" --expect {}", q(e));
                }
                if let Some(ns) = netns {
                    cmd = format!("ip netns exec {} {cmd}", q(ns));
                }
                let deadline = std::time::Instant::now() + Duration::from_secs_f64(*timeout);
                let mut gave_up = None;
                let out = loop {
                    let out = g.root(&cmd, Duration::from_secs_f64(timeout + 30.0))?;
                    if out.success() || !*retry || std::time::Instant::now() >= deadline {
                        break out;
                    }
                    // A failed socket unit (the service hit its start limit, or the socket
                    // its trigger limit) stays failed: no later attempt can be answered.
                    if let Some(failed) = failed_sockets(vm, scenario)? {
                        gave_up = Some(failed);
                        break out;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                let parsed: Option<serde_json::Value> =
                    serde_json::from_str(out.stdout.trim()).ok();
                let ok = out.success();
                let what = format!(
                    "probe {address}{}",
                    netns
                        .as_deref()
                        .map(|n| format!(" from {n}"))
                        .unwrap_or_default()
                );
                if *must_fail {
                    if ok {
                        return fail(
                            format!("{what} (must fail)"),
                            format!("it answered: {}", out.stdout.trim()),
                        );
                    }
                    continue;
                }
                if !ok {
                    let mut output = out.combined();
                    if let Some(failed) = gave_up {
                        output += &format!("\n(stopped retrying: {failed} failed)");
                    }
                    return fail(what, output);
                }
                if let (Some(src), Some(v)) = (source, parsed) {
                    let reply = v["reply"].as_str().unwrap_or("").trim().to_string();
                    let local = v["local_address"].as_str().unwrap_or("").to_string();
                    let good = match src {
                        Source::Preserved => reply == local,
                        Source::Rewritten => !reply.is_empty() && reply != local,
                    };
                    if !good {
                        return fail(
                            format!("{what} (source {src:?})"),
                            format!("the server saw {reply:?}, the client is {local:?}"),
                        );
                    }
                }
            }
            Step::Reboot => {
                let timeout = crate::vm::boot_timeout(vm.qemu.config.machine.accel);
                if let Err(e) = g.reboot(timeout, &vm.console_log()) {
                    return fail("reboot".into(), format!("{e:#}"));
                }
            }
            Step::IsFailed { unit, failed } => {
                // A unit between states (a failed service that its socket triggers again
                // is "activating" for a moment) is judged once it has settled: one
                // instant's state made restrict-pull-always flaky under load.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let out = loop {
                    let out = systemctl(vm, scenario.scope, &format!("is-failed {}", q(unit)))?;
                    let state = out.stdout.trim();
                    let moving = matches!(
                        state,
                        "activating" | "deactivating" | "reloading" | "refreshing"
                    );
                    if !moving || std::time::Instant::now() >= deadline {
                        break out;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                // is-failed exits 0 when the unit is failed.
                if out.success() != *failed {
                    return fail(
                        format!("is-failed {unit} (expect failed={failed})"),
                        out.combined(),
                    );
                }
            }
            Step::Journal { contains, lacks } => {
                let text = journal(vm, scenario, &scenario.journal_units());
                if let Some(c) = contains
                    && !text.contains(c.as_str())
                {
                    return fail(
                        format!("journal contains {c:?}"),
                        crate::proc::tail(&text, 15),
                    );
                }
                if let Some(l) = lacks
                    && let Some(line) = text.lines().find(|x| x.contains(l.as_str()))
                {
                    return fail(format!("journal lacks {l:?}"), line.to_string());
                }
            }
            Step::Netinfo {
                container,
                interfaces,
                other_interfaces,
                outbound,
                outbound_ok,
            } => {
                let mut cmd = format!(
                    "podman exec {} /echo-probe netinfo --json --timeout 5",
                    q(container)
                );
                if let Some(o) = outbound {
                    cmd += &format!(" --outbound {}", q(o));
                }
                let out = g.user(&cmd, Duration::from_secs(60))?;
                if !out.success() {
                    return fail(format!("netinfo in {container}"), out.combined());
                }
                let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
                    .with_context(|| format!("netinfo output: {}", out.stdout))?;
                std::fs::write(
                    vm.dir.join(format!("netinfo-{container}.json")),
                    out.stdout.as_bytes(),
                )?;
                let mut got: Vec<String> = v["interfaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| i["addresses"].as_array().is_some_and(|a| !a.is_empty()))
                    .filter_map(|i| i["name"].as_str().map(String::from))
                    .collect();
                got.sort();
                if let Some(expected) = other_interfaces
                    && got.iter().any(|i| i != "lo") != *expected
                {
                    return fail(
                        format!("netinfo in {container}: interfaces besides lo"),
                        format!("expected {expected}, the container has {got:?}"),
                    );
                }
                if let Some(want) = interfaces {
                    let mut want = want.clone();
                    want.sort();
                    if got != want {
                        return fail(
                            format!("netinfo in {container}: interfaces"),
                            format!("expected {want:?}, the container has {got:?}"),
                        );
                    }
                }
                if let Some(expected) = outbound_ok {
                    let connected = v["outbound"]["connected"].as_bool().unwrap_or(false);
                    if connected != *expected {
                        return fail(
                            format!(
                                "netinfo in {container}: outbound {}",
                                outbound.as_deref().unwrap_or("?")
                            ),
                            format!("expected connected={expected}: {}", v["outbound"]),
                        );
                    }
                }
            }
            Step::Run {
                command,
                who,
                exit,
                contains,
                timeout,
            } => {
                let command = expand(command, runtime, &g.user);
                let t = Duration::try_from_secs_f64(timeout.unwrap_or(300.0))
                    .with_context(|| format!("run `{command}`: timeout {timeout:?}"))?;
                let out = match who {
                    Who::User => g.user(&command, t)?,
                    Who::Root => g.root(&command, t)?,
                };
                if out.code() != Some(*exit) {
                    return fail(
                        format!("run `{command}` (expect exit {exit})"),
                        out.combined(),
                    );
                }
                if let Some(c) = contains
                    && !out.combined().contains(c.as_str())
                {
                    return fail(
                        format!("run `{command}` (expect output with {c:?})"),
                        out.combined(),
                    );
                }
            }
            Step::Sleep { seconds } => std::thread::sleep(Duration::from_secs_f64(*seconds)),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios() -> Vec<Scenario> {
        load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")).unwrap()
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

    fn scenario_with_bug() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bug.toml");
        std::fs::write(
            &p,
            "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\nruntime = \"runc\"\nversions = \"<1.1.3\"\nissue = \"https://github.com/opencontainers/runc/issues/3488\"\npattern = \"_LIBCONTAINER_LOGPIPE\"\n",
        )
        .unwrap();
        Scenario::load(&p).unwrap()
    }

    fn judge_rt(
        s: &Scenario,
        name: &str,
        version: &str,
        f: Option<StepFailure>,
        journal: &str,
    ) -> (Outcome, String, Option<String>) {
        let rt = RuntimeUse {
            name: name.into(),
            podman_arg: name.into(),
            version: version.into(),
        };
        judge(s, &rt, &BTreeMap::new(), f, journal)
    }

    #[test]
    fn tool_bugs_apply_only_where_the_tool_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("se.toml");
        std::fs::write(
            &p,
            "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\ntool = \"container-selinux\"\nversions = \"<2.183.0\"\nissue = \"u\"\npattern = \"avc:  denied\"\n",
        )
        .unwrap();
        let s = Scenario::load(&p).unwrap();
        let rt = RuntimeUse {
            name: "crun".into(),
            podman_arg: "crun".into(),
            version: "1.21".into(),
        };
        let old = BTreeMap::from([("container-selinux".to_string(), "2.180.0".to_string())]);
        let new = BTreeMap::from([("container-selinux".to_string(), "2.190.0".to_string())]);
        let denied = || failure("type=AVC msg=audit: avc:  denied { read write }");
        assert_eq!(judge(&s, &rt, &old, denied(), "").0, Outcome::Xfail);
        assert_eq!(judge(&s, &rt, &old, None, "").0, Outcome::Xpass);
        assert_eq!(judge(&s, &rt, &new, None, "").0, Outcome::Pass);
        // No SELinux on the guest: the bug does not apply.
        assert_eq!(judge(&s, &rt, &BTreeMap::new(), None, "").0, Outcome::Pass);
    }

    #[test]
    fn known_bug_needs_runtime_or_tool() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\nversions = \"<1\"\nissue = \"u\"\npattern = \"x\"\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p).unwrap_err());
        assert!(
            e.contains("needs exactly one of `runtime` and `tool`"),
            "{e}"
        );
    }

    fn failure(text: &str) -> Option<StepFailure> {
        Some(StepFailure {
            step: "probe".into(),
            output: text.into(),
        })
    }

    #[test]
    fn known_bug_reproduced_is_xfail() {
        let (o, _, issue) = judge_rt(
            &scenario_with_bug(),
            "runc",
            "1.0.0~rc93",
            failure("bad value for _LIBCONTAINER_LOGPIPE=7"),
            "",
        );
        assert_eq!(o, Outcome::Xfail);
        assert!(issue.unwrap().ends_with("/3488"));
    }

    #[test]
    fn known_bug_not_reproduced_is_xpass() {
        let (o, detail, _) = judge_rt(&scenario_with_bug(), "runc", "1.1.2", None, "");
        assert_eq!(o, Outcome::Xpass, "{detail}");
    }

    #[test]
    fn fixed_version_passes_and_other_failures_fail() {
        let s = scenario_with_bug();
        assert_eq!(
            judge_rt(&s, "runc", "1.1.15+ds1", None, "").0,
            Outcome::Pass
        );
        // In the bug's range but failing for another reason: a plain failure.
        assert_eq!(
            judge_rt(&s, "runc", "1.1.2", failure("connection refused"), "").0,
            Outcome::Fail
        );
        // The pattern on another runtime is not this bug.
        assert_eq!(
            judge_rt(&s, "crun", "1.1.2", failure("_LIBCONTAINER_LOGPIPE"), "").0,
            Outcome::Fail
        );
    }

    #[test]
    fn skip_reasons() {
        let mut s = scenario_with_bug();
        s.requires.podman = Some(">=4.4".into());
        let v = BTreeMap::from([("podman".to_string(), "4.3.1".to_string())]);
        assert_eq!(
            skip_reason(&s, &v).unwrap(),
            "needs podman >=4.4, the guest has 4.3.1"
        );
        let v = BTreeMap::from([("podman".to_string(), "5.4.2".to_string())]);
        assert!(skip_reason(&s, &v).is_none());
    }
}
