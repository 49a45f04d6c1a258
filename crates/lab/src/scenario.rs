//! Scenarios are data (`tests/scenarios/*.toml`): the units, the steps, the expected
//! outcome. Running one on a guest gives a [`TrialResult`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::units::{Listen, ServiceUnit, SocketUnit};
use crate::vm::TrialVm;

pub const ECHO_IMAGE: &str = "localhost/socket-activate-echo:latest";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    /// The unit name stem: `echo` makes `echo.socket` and `echo.service`.
    #[serde(default = "default_unit")]
    pub unit: String,
    pub socket: SocketSpec,
    pub service: ServiceSpec,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub expect: Expectation,
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_unit() -> String {
    "echo".into()
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
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_image() -> String {
    ECHO_IMAGE.into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// `systemctl --user start UNIT`.
    Start { unit: String },
    /// `echo-probe ADDRESS --send SEND --expect EXPECT` in the guest.
    Probe {
        address: String,
        #[serde(default = "default_text")]
        send: String,
        #[serde(default = "default_text")]
        expect: String,
        #[serde(default = "default_probe_timeout")]
        timeout: f64,
    },
    /// A real reboot of the guest (`systemctl reboot`), waiting for the new boot's ssh.
    Reboot,
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
        if s.steps.is_empty() {
            bail!("{}: key `steps` is empty", path.display());
        }
        if s.expect.outcome == ExpectedOutcome::Fail && s.expect.pattern.is_none() {
            bail!(
                "{}: `expect.outcome = \"fail\"` needs `expect.pattern`, the text that proves why it fails",
                path.display()
            );
        }
        // Render once so a bad unit is a load error, not a trial failure.
        s.socket_unit()
            .render()
            .map_err(|e| anyhow::anyhow!("{}: [socket]: {e}", path.display()))?;
        Ok(s)
    }

    pub fn socket_unit(&self) -> SocketUnit {
        SocketUnit {
            description: format!("socket-activation-lab {}", self.name),
            listen: self.socket.listen.clone(),
            options: self.socket.options.clone().into_iter().collect(),
        }
    }

    pub fn service_unit(&self, runtime: &str) -> ServiceUnit {
        let mut exec = vec![
            "/usr/bin/podman".to_string(),
            "run".into(),
            "--rm".into(),
            "--replace".into(),
            "--name".into(),
            self.unit.clone(),
            "--cgroups=no-conmon".into(),
            "--sdnotify=conmon".into(),
            "--runtime".into(),
            runtime.into(),
        ];
        exec.extend(self.service.podman_args.iter().cloned());
        exec.push(self.service.image.clone());
        exec.extend(self.service.args.iter().cloned());
        let mut service_options = vec![
            ("Type".to_string(), "notify".to_string()),
            ("NotifyAccess".into(), "all".into()),
        ];
        service_options.extend(self.service.options.clone());
        ServiceUnit {
            description: format!("socket-activation-lab {}", self.name),
            socket: Some(format!("{}.socket", self.unit)),
            unit_options: Vec::new(),
            service_options,
            exec_start: exec,
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl Outcome {
    pub fn is_bad(self) -> bool {
        matches!(self, Outcome::Fail)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrialResult {
    /// `scenario::target::runtime`
    pub name: String,
    pub scenario: String,
    pub target: String,
    pub runtime: String,
    pub outcome: Outcome,
    pub elapsed_s: f64,
    pub versions: BTreeMap<String, String>,
    /// Why: the failing step and the journal lines, or what the expected failure showed.
    pub detail: String,
    pub log_dir: PathBuf,
}

impl TrialResult {
    pub fn summary_line(&self) -> String {
        let runtime_version = self
            .versions
            .get(&self.runtime)
            .map(String::as_str)
            .unwrap_or("?");
        let podman = self
            .versions
            .get("podman")
            .map(String::as_str)
            .unwrap_or("?");
        let first = self.detail.lines().next().unwrap_or_default();
        let why = if self.outcome == Outcome::Pass && first.is_empty() {
            String::new()
        } else {
            format!(": {first}")
        };
        format!(
            "{:?} {} ({} {runtime_version}, podman {podman}) in {:.1} s{why}",
            self.outcome, self.name, self.runtime, self.elapsed_s
        )
        .replacen("Pass", "PASS", 1)
        .replacen("Fail", "FAIL", 1)
        .replacen("Skip", "SKIP", 1)
    }
}

/// What a run of the steps showed.
struct StepFailure {
    step: String,
    output: String,
}

/// Runs `scenario` with `runtime` on a guest already restored to the ready state.
pub fn run_trial(vm: &TrialVm, scenario: &Scenario, runtime: &str) -> Result<(Outcome, String)> {
    let g = &vm.guest;
    let home = format!("/home/{}", g.user.name);
    let unit_dir = format!("{home}/.config/systemd/user");
    let socket = scenario
        .socket_unit()
        .render()
        .map_err(anyhow::Error::msg)?;
    let service = scenario
        .service_unit(runtime)
        .render()
        .map_err(anyhow::Error::msg)?;
    let owner = Some(g.user.name.as_str());
    g.write_file(
        &format!("{unit_dir}/{}.socket", scenario.unit),
        socket.as_bytes(),
        owner,
        0o644,
    )?;
    g.write_file(
        &format!("{unit_dir}/{}.service", scenario.unit),
        service.as_bytes(),
        owner,
        0o644,
    )?;
    std::fs::write(vm.dir.join(format!("{}.socket", scenario.unit)), &socket)?;
    std::fs::write(vm.dir.join(format!("{}.service", scenario.unit)), &service)?;
    g.user_ok("systemctl --user daemon-reload", Duration::from_secs(60))?;

    let failure = run_steps(vm, scenario)?;
    let units = [
        format!("{}.socket", scenario.unit),
        format!("{}.service", scenario.unit),
    ];
    let unit_refs: Vec<&str> = units.iter().map(String::as_str).collect();
    let journal = g.user_unit_journal(&unit_refs, 200);
    std::fs::write(vm.dir.join("journal.txt"), &journal)?;
    let interesting = |text: &str| -> String {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    Ok(match (scenario.expect.outcome, failure) {
        (ExpectedOutcome::Pass, None) => (Outcome::Pass, String::new()),
        (ExpectedOutcome::Pass, Some(f)) => (
            Outcome::Fail,
            format!(
                "step `{}` failed: {}\njournal:\n{}",
                f.step,
                f.output.trim(),
                interesting(&journal)
            ),
        ),
        (ExpectedOutcome::Fail, None) => (
            Outcome::Fail,
            "expected a failure, but every step passed".into(),
        ),
        (ExpectedOutcome::Fail, Some(f)) => {
            let pattern = scenario.expect.pattern.as_deref().unwrap_or_default();
            let evidence = format!("{}\n{journal}", f.output);
            match evidence.lines().find(|l| l.contains(pattern)) {
                Some(line) => (
                    Outcome::Pass,
                    format!("failed as expected at `{}`: {}", f.step, line.trim()),
                ),
                None => (
                    Outcome::Fail,
                    format!(
                        "failed at `{}` but without {pattern:?}: {}\njournal:\n{}",
                        f.step,
                        f.output.trim(),
                        interesting(&journal)
                    ),
                ),
            }
        }
    })
}

fn run_steps(vm: &TrialVm, scenario: &Scenario) -> Result<Option<StepFailure>> {
    let g = &vm.guest;
    for step in &scenario.steps {
        match step {
            Step::Start { unit } => {
                let out = g.user(
                    &format!("systemctl --user start {}", shlex::try_quote(unit)?),
                    Duration::from_secs(120),
                )?;
                if !out.success() {
                    return Ok(Some(StepFailure {
                        step: format!("start {unit}"),
                        output: out.combined(),
                    }));
                }
            }
            Step::Reboot => {
                let timeout = crate::vm::boot_timeout(crate::qemu::detect_accel());
                if let Err(e) = g.reboot(timeout, &vm.console_log()) {
                    return Ok(Some(StepFailure {
                        step: "reboot".into(),
                        output: format!("{e:#}"),
                    }));
                }
            }
            Step::Probe {
                address,
                send,
                expect,
                timeout,
            } => {
                let cmd = format!(
                    "echo-probe {} --send {} --expect {} --timeout {timeout}",
                    shlex::try_quote(address)?,
                    shlex::try_quote(send)?,
                    shlex::try_quote(expect)?
                );
                let out = g.root(&cmd, Duration::from_secs_f64(timeout + 30.0))?;
                if !out.success() {
                    return Ok(Some(StepFailure {
                        step: format!("probe {address}"),
                        output: out.combined(),
                    }));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_load_and_render() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
        let all = load_all(&dir).unwrap();
        assert!(all.iter().any(|s| s.name == "echo-tcp4"));
        for s in &all {
            s.socket_unit().render().unwrap();
            s.service_unit("crun").render().unwrap();
        }
    }

    #[test]
    fn echo_tcp4_service_golden() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
        let s = Scenario::load(&dir.join("echo-tcp4.toml")).unwrap();
        assert_eq!(
            s.service_unit("runc").render().unwrap(),
            "[Unit]\nDescription=socket-activation-lab echo-tcp4\nRequires=echo.socket\nAfter=echo.socket\n\n[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/bin/podman run --rm --replace --name echo --cgroups=no-conmon --sdnotify=conmon --runtime runc --network=none --pull=never localhost/socket-activate-echo:latest\n"
        );
    }

    #[test]
    fn bad_scenario_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        std::fs::write(
            &p,
            "description = \"x\"\n[socket]\nlisten = []\n[service]\n[[steps]]\ndo = \"jump\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Scenario::load(&p).unwrap_err());
        assert!(
            e.contains("x.toml") && e.contains("unknown variant `jump`"),
            "{e}"
        );
    }
}
