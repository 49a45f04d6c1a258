//! Mutants (`tests/mutants/*.toml`): each breaks one thing on purpose, in the scenario as
//! the lab writes it or in the trial's guest, and names the scenarios that must catch it
//! (not PASS). `cargo xtask test --mutants` runs each against its scenarios; the table
//! of caught and surviving pairs is the catalogue's mutation score.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use vm::proc::quote;
use vm::trial_vm::TrialVm;

use crate::scenario::Scenario;
use crate::scenario::schema::{Step, Who};
use crate::trial::{Outcome, TrialResult};

/// The image the mutant echo server is imported as in a trial's guest.
pub const MUTANT_IMAGE: &str = "localhost/socket-activate-echo:mutant";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutant {
    pub description: String,
    /// The scenarios that must not PASS with this mutant.
    pub catches: Vec<String>,
    pub mutation: Mutation,
    #[serde(skip)]
    pub name: String,
}

/// One thing broken on purpose.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Mutation {
    /// The echo image is replaced by one whose server has a fault (`flip-byte`: the first
    /// byte of every reply changed), built with the echo crate's `mutants` feature.
    EchoServer { fault: String },
    /// A runtime wrapper removes `LISTEN_FDS` and `LISTEN_PID` from the container's
    /// environment (its OCI config), as if the runtime did not pass the sockets on; with
    /// `server_args` the echo server also gets these arguments (`--listen
    /// tcp:0.0.0.0:3000`: it listens on a socket of its own instead).
    StripListenFds {
        #[serde(default)]
        server_args: Vec<String>,
    },
    /// Unit options (`[Service]`, `[Unit]`, `[Socket]` or a quadlet's) left out when the
    /// lab writes the units.
    DropOptions { options: Vec<String> },
    /// `podman run` arguments of the service removed or added.
    PodmanArgs {
        #[serde(default)]
        remove: Vec<String>,
        #[serde(default)]
        add: Vec<String>,
    },
    /// A text replaced in the scenario's `run` commands.
    CommandText { from: String, to: String },
    /// A text replaced in a scenario directory's files (its units as a user wrote them).
    FileText { from: String, to: String },
    /// A helper unit whose command does nothing (`/bin/true`).
    HelperNoop { unit: String },
    /// Every inet probe goes to a port `offset` away.
    ProbePort { offset: i32 },
    /// A command run in the guest before the steps (as the test user or root).
    GuestCommand {
        command: String,
        #[serde(default, rename = "as")]
        who: Who,
    },
}

impl Mutant {
    pub fn load(path: &Path) -> Result<Mutant> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut m: Mutant =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        m.name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if m.catches.is_empty() {
            bail!(
                "{}: `catches` is empty: a mutant names the scenarios that must catch it",
                path.display()
            );
        }
        if let Mutation::EchoServer { fault } = &m.mutation
            && fault != "flip-byte"
        {
            bail!(
                "{}: mutation.fault = {fault:?}: the mutant echo server knows flip-byte",
                path.display()
            );
        }
        Ok(m)
    }

    /// Checks that every scenario it names exists and that the mutation changes each of
    /// them (a mutation that changes nothing would survive for no reason of the
    /// scenario's).
    pub fn check_against(&self, scenarios: &[Scenario]) -> Result<()> {
        for name in &self.catches {
            let s = scenarios
                .iter()
                .find(|s| &s.name == name)
                .with_context(|| format!("mutant {}: no scenario {name:?}", self.name))?;
            apply(s, &self.mutation)
                .with_context(|| format!("mutant {}: scenario {name}", self.name))?;
        }
        Ok(())
    }
}

/// Every mutant under `dir`, sorted by name, each checked against `scenarios`.
pub fn load_all(dir: &Path, scenarios: &[Scenario]) -> Result<Vec<Mutant>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let m = Mutant::load(&p)?;
            m.check_against(scenarios)?;
            all.push(m);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// The mutants directory of a workspace.
pub fn dir(workspace: &Path) -> PathBuf {
    workspace.join("tests/mutants")
}

/// `scenario` with `mutation` applied to what the lab writes and runs; an error when the
/// mutation would not change it.
pub fn apply(scenario: &Scenario, mutation: &Mutation) -> Result<Scenario> {
    let mut s = scenario.clone();
    let unchanged =
        |what: &str| -> Result<Scenario> { bail!("the mutation changes nothing here: {what}") };
    match mutation {
        Mutation::EchoServer { .. } => {
            let mut uses = false;
            if let Some(svc) = &mut s.service
                && svc.image == vm::ready::ECHO_IMAGE
            {
                svc.image = MUTANT_IMAGE.into();
                uses = true;
            }
            if let Some(q) = &mut s.quadlet
                && q.image == vm::ready::ECHO_IMAGE
            {
                q.image = MUTANT_IMAGE.into();
                uses = true;
            }
            for step in &mut s.steps {
                if let Step::Run { command, .. } = step
                    && command.contains("{image}")
                {
                    *command = command.replace("{image}", MUTANT_IMAGE);
                    uses = true;
                }
            }
            // A scenario directory's files: the image its rewrite maps to the echo image.
            for to in s.rewrite.images.values_mut() {
                if to == "echo" || to == vm::ready::ECHO_IMAGE {
                    *to = MUTANT_IMAGE.into();
                    uses = true;
                }
            }
            if !uses {
                return unchanged(
                    "no service, quadlet, run step or rewritten file uses the echo image",
                );
            }
        }
        Mutation::StripListenFds { server_args } => {
            if !server_args.is_empty() {
                match (&mut s.service, &mut s.quadlet) {
                    (Some(svc), _) => svc.args.extend(server_args.iter().cloned()),
                    (None, Some(q)) => q.args.extend(server_args.iter().cloned()),
                    _ => return unchanged("no service or quadlet takes server arguments"),
                }
            }
            // The runtime wrapper itself is put in place by `prepare_guest`.
        }
        Mutation::DropOptions { options } => {
            for option in options {
                let mut dropped = false;
                if let Some(svc) = &mut s.service {
                    dropped |= svc.options.remove(option).is_some();
                    dropped |= svc.unit_options.remove(option).is_some();
                }
                if let Some(sock) = &mut s.socket {
                    dropped |= sock.options.remove(option).is_some();
                }
                if let Some(q) = &mut s.quadlet {
                    dropped |= q.options.remove(option).is_some();
                }
                if !dropped {
                    return unchanged(&format!("no unit has {option}="));
                }
            }
        }
        Mutation::PodmanArgs { remove, add } => {
            let Some(svc) = &mut s.service else {
                return unchanged("no [service] with podman arguments");
            };
            for arg in remove {
                let before = svc.podman_args.len();
                svc.podman_args.retain(|a| a != arg);
                if svc.podman_args.len() == before {
                    return unchanged(&format!("the service has no podman argument {arg:?}"));
                }
            }
            svc.podman_args.extend(add.iter().cloned());
        }
        Mutation::CommandText { from, to } => {
            let mut replaced = false;
            for step in &mut s.steps {
                if let Step::Run { command, .. } = step
                    && command.contains(from.as_str())
                {
                    *command = command.replace(from.as_str(), to);
                    replaced = true;
                }
            }
            if !replaced {
                return unchanged(&format!("no run command contains {from:?}"));
            }
        }
        Mutation::FileText { from, to } => {
            let mut replaced = false;
            for f in &mut s.dir_files {
                if f.text.contains(from.as_str()) {
                    f.text = f.text.replace(from.as_str(), to);
                    replaced = true;
                }
            }
            if !replaced {
                return unchanged(&format!(
                    "no file of the scenario directory contains {from:?}"
                ));
            }
        }
        Mutation::HelperNoop { unit } => {
            let Some(h) = s.helper.iter_mut().find(|h| &h.name == unit) else {
                return unchanged(&format!("no helper unit {unit}"));
            };
            h.exec = vec!["/bin/true".into()];
        }
        Mutation::ProbePort { offset } => {
            let mut moved = false;
            for step in &mut s.steps {
                if let Step::Probe { address, .. } = step
                    && let Some(shifted) = shift_port(address, *offset)
                {
                    *address = shifted;
                    moved = true;
                }
            }
            if !moved {
                return unchanged("no probe of a tcp or udp address");
            }
        }
        Mutation::GuestCommand { .. } => {}
    }
    Ok(s)
}

/// `tcp4:127.0.0.1:3000` with the port moved by `offset`; `None` for other addresses.
pub fn shift_port(address: &str, offset: i32) -> Option<String> {
    let (scheme, _) = address.split_once(':')?;
    if !["tcp4", "tcp6", "udp4", "udp6"].contains(&scheme) {
        return None;
    }
    let (host, port) = address.rsplit_once(':')?;
    let port: i32 = port.parse().ok()?;
    let moved = u16::try_from(port + offset).ok()?;
    Some(format!("{host}:{moved}"))
}

/// The part of a mutation that lives in the guest: the mutant echo image, the runtime
/// wrapper, a command. Returns what podman gets as `--runtime` from now on.
pub fn prepare_guest(
    vm: &TrialVm,
    mutation: &Mutation,
    podman_arg: &str,
    mutant_echo: Option<&Path>,
) -> Result<String> {
    let g = &vm.guest;
    let t = Duration::from_secs(120);
    match mutation {
        Mutation::EchoServer { fault } => {
            let bin = mutant_echo.context(
                "the mutant echo server was not built (SAL_MUTANT_ECHO_BIN; cargo xtask test --mutants builds it)",
            )?;
            g.copy_in(bin, "/var/tmp/sal-mutant/socket-activate-echo", 0o755)?;
            g.user_ok(
                &format!(
                    "set -e; tar -C /var/tmp/sal-mutant -c socket-activate-echo | podman import --quiet \
                     --change 'ENTRYPOINT [\"/socket-activate-echo\"]' --change 'USER 65534:65534' \
                     --change 'ENV SAL_ECHO_MUTANT={fault}' - {MUTANT_IMAGE} >/dev/null"
                ),
                t,
            )?;
            Ok(podman_arg.to_string())
        }
        Mutation::StripListenFds { .. } => {
            let real = g
                .root_ok(&format!("command -v {}", quote(podman_arg)), t)?
                .stdout
                .trim()
                .to_string();
            let wrapper = "/usr/local/bin/sal-mutant-runtime";
            g.write_file(
                wrapper,
                strip_listen_fds_wrapper(&real).as_bytes(),
                None,
                0o755,
            )?;
            Ok(wrapper.to_string())
        }
        Mutation::GuestCommand { command, who } => {
            match who {
                Who::User => g.user_ok(command, t)?,
                Who::Root => g.root_ok(command, t)?,
            };
            Ok(podman_arg.to_string())
        }
        _ => Ok(podman_arg.to_string()),
    }
}

/// A runtime wrapper: on `create` and `run` it removes `LISTEN_FDS` and `LISTEN_PID` from
/// the bundle's `config.json` (podman puts them into the process environment there), then
/// runs `real` with the same arguments.
pub fn strip_listen_fds_wrapper(real: &str) -> String {
    format!(
        r#"#!/bin/sh
# socket-activation-lab mutant: the container does not get LISTEN_FDS.
bundle=""; prev=""
for a in "$@"; do
  case "$a" in --bundle=*) bundle="${{a#--bundle=}}";; esac
  if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then bundle="$a"; fi
  prev="$a"
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i -e 's/"LISTEN_\(FDS\|PID\|FDNAMES\)=[^"]*",[[:space:]]*//g' \
         -e 's/,[[:space:]]*"LISTEN_\(FDS\|PID\|FDNAMES\)=[^"]*"//g' "$bundle/config.json"
fi
exec {real} "$@"
"#
    )
}

/// What a mutant did to one scenario on one runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Score {
    /// The scenario did not PASS: it caught the mutant.
    Caught,
    /// It passed (or a listed bug did not reproduce): the mutant survived it.
    Survived,
    /// A known bug reproduced first (XFAIL): this trial cannot tell.
    Masked,
    /// SKIP: the scenario did not run here.
    NotRun,
}

impl Score {
    pub fn of(outcome: Outcome) -> Score {
        match outcome {
            Outcome::Fail => Score::Caught,
            Outcome::Pass | Outcome::Xpass => Score::Survived,
            Outcome::Xfail => Score::Masked,
            Outcome::Skip => Score::NotRun,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Score::Caught => "caught",
            Score::Survived => "SURVIVED",
            Score::Masked => "masked (XFAIL)",
            Score::NotRun => "not run (SKIP)",
        }
    }
}

/// The mutation score of a `--mutants` run as a markdown table (mutant, scenario, one
/// column per runtime), and the problems: a pair that survived on some runtime, a mutant
/// no scenario caught.
pub fn score_table(results: &[TrialResult]) -> (String, Vec<String>) {
    let mut runtimes: Vec<&str> = results.iter().map(|r| r.runtime.as_str()).collect();
    runtimes.sort();
    runtimes.dedup();
    let mut rows: BTreeMap<(&str, &str), BTreeMap<&str, Score>> = BTreeMap::new();
    for r in results {
        let Some(m) = r.mutant.as_deref() else {
            continue;
        };
        rows.entry((m, r.scenario.as_str()))
            .or_default()
            .insert(r.runtime.as_str(), Score::of(r.outcome));
    }
    let mut text = format!(
        "| mutant | scenario | {} |\n|---|---|",
        runtimes.join(" | ")
    );
    text += &"---|".repeat(runtimes.len());
    text.push('\n');
    let mut problems = Vec::new();
    let mut caught_by: BTreeMap<&str, usize> = BTreeMap::new();
    for ((m, scenario), scores) in &rows {
        let cells: Vec<&str> = runtimes
            .iter()
            .map(|rt| scores.get(rt).map_or("", |s| s.label()))
            .collect();
        text += &format!("| {m} | {scenario} | {} |\n", cells.join(" | "));
        let caught = scores.values().filter(|s| **s == Score::Caught).count();
        *caught_by.entry(m).or_default() += caught;
        for (rt, score) in scores {
            if *score == Score::Survived {
                problems.push(format!("{m} survived {scenario} on {rt}: a weak scenario"));
            }
        }
    }
    for (m, caught) in caught_by {
        if caught == 0 {
            problems.push(format!("{m} was caught by no scenario"));
        }
    }
    (text, problems)
}

/// The scenarios with a `claim` that no mutant names: claims nothing tests.
pub fn unchallenged_claims(scenarios: &[Scenario], mutants: &[Mutant]) -> Vec<String> {
    let named: BTreeSet<&str> = mutants
        .iter()
        .flat_map(|m| m.catches.iter().map(String::as_str))
        .collect();
    scenarios
        .iter()
        .filter(|s| s.claim.is_some() && !named.contains(s.name.as_str()))
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios() -> Vec<Scenario> {
        crate::scenario::load_all(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios"),
        )
        .unwrap()
    }

    fn scenario(name: &str) -> Scenario {
        scenarios().into_iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn shipped_mutants_load_and_change_every_scenario_they_name() {
        let all = scenarios();
        let mutants = load_all(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mutants"),
            &all,
        )
        .unwrap();
        assert!(!mutants.is_empty());
        assert_eq!(unchallenged_claims(&all, &mutants), Vec::<String>::new());
    }

    #[test]
    fn dropping_an_option_leaves_it_out_of_the_written_unit() {
        let s = scenario("restrict");
        let m = Mutation::DropOptions {
            options: vec!["RestrictAddressFamilies".into()],
        };
        let unit = apply(&s, &m)
            .unwrap()
            .service_unit("runc")
            .unwrap()
            .render()
            .unwrap();
        assert!(!unit.contains("RestrictAddressFamilies"), "{unit}");
        assert!(unit.contains("NoNewPrivileges=yes"), "{unit}");
        let none = Mutation::DropOptions {
            options: vec!["NoNewPrivileges".into(), "BindToDevice".into()],
        };
        let e = format!("{:#}", apply(&s, &none).unwrap_err());
        assert!(e.contains("no unit has BindToDevice="), "{e}");
    }

    #[test]
    fn the_echo_mutant_replaces_the_image_everywhere_it_is_used() {
        let m = Mutation::EchoServer {
            fault: "flip-byte".into(),
        };
        let unit = apply(&scenario("echo-tcp4"), &m)
            .unwrap()
            .service_unit("crun")
            .unwrap()
            .render()
            .unwrap();
        assert!(unit.contains(MUTANT_IMAGE), "{unit}");
        let ssa = apply(&scenario("systemd-socket-activate"), &m).unwrap();
        assert!(
            ssa.steps
                .iter()
                .any(|s| matches!(s, Step::Run { command, .. } if command.contains(MUTANT_IMAGE)))
        );
        // podman's own API socket uses no echo image.
        assert!(apply(&scenario("podman-api-socket"), &m).is_err());
    }

    #[test]
    fn ports_move_for_inet_probes_only() {
        assert_eq!(
            shift_port("tcp4:127.0.0.1:3000", 1).as_deref(),
            Some("tcp4:127.0.0.1:3001")
        );
        assert_eq!(
            shift_port("udp6:[::1]:3000", 1).as_deref(),
            Some("udp6:[::1]:3001")
        );
        assert_eq!(shift_port("unix:{home}/echo.sock", 1), None);
        assert_eq!(shift_port("tcp4:127.0.0.1:65535", 1), None);
    }

    #[test]
    fn the_table_shows_each_pair_and_names_survivors() {
        let r = |m: &str, s: &str, rt: &str, outcome| TrialResult {
            name: format!("mutants::{m}::{s}::debian-13::{rt}"),
            scenario: s.into(),
            target: "debian-13".into(),
            runtime: rt.into(),
            outcome,
            elapsed_s: 1.0,
            versions: Default::default(),
            issue: None,
            detail: String::new(),
            log_dir: "/tmp/x".into(),
            mutant: Some(m.into()),
            claim: None,
            failed_step: None,
            evidence: None,
            measurements: Vec::new(),
            runtime_source: None,
            runtime_commit: None,
        };
        let results = vec![
            r("flip", "echo-tcp4", "crun", Outcome::Fail),
            r("flip", "echo-tcp4", "runc", Outcome::Fail),
            r("drop", "restrict", "crun", Outcome::Xfail),
            r("drop", "restrict", "runc", Outcome::Pass),
        ];
        let (table, problems) = score_table(&results);
        assert!(table.starts_with("| mutant | scenario | crun | runc |\n|---|---|---|---|\n"));
        assert!(
            table.contains("| flip | echo-tcp4 | caught | caught |"),
            "{table}"
        );
        assert!(
            table.contains("| drop | restrict | masked (XFAIL) | SURVIVED |"),
            "{table}"
        );
        assert_eq!(
            problems,
            vec![
                "drop survived restrict on runc: a weak scenario".to_string(),
                "drop was caught by no scenario".to_string()
            ]
        );
    }

    #[test]
    fn scores_of_outcomes() {
        assert_eq!(Score::of(Outcome::Fail), Score::Caught);
        assert_eq!(Score::of(Outcome::Pass), Score::Survived);
        assert_eq!(Score::of(Outcome::Xpass), Score::Survived);
        assert_eq!(Score::of(Outcome::Xfail), Score::Masked);
        assert_eq!(Score::of(Outcome::Skip), Score::NotRun);
    }

    #[test]
    fn the_wrapper_strips_the_variables_from_a_real_config() {
        // The wrapper's sed on a config.json shaped as podman writes it, run by sh here.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"process":{"env":["PATH=/usr/bin","LISTEN_FDS=1","LISTEN_PID=1","container=podman"]}}"#,
        )
        .unwrap();
        let wrapper = dir.path().join("wrapper");
        std::fs::write(&wrapper, strip_listen_fds_wrapper("/bin/echo")).unwrap();
        let out = std::process::Command::new("sh")
            .arg(&wrapper)
            .args(["create", "--bundle"])
            .arg(dir.path())
            .arg("ctr")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            r#"{"process":{"env":["PATH=/usr/bin","container=podman"]}}"#
        );
        // The real runtime got the same arguments.
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("create --bundle"));
    }
}
