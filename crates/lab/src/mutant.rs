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

/// The faults the echo server built with its `mutants` feature knows (`SAL_ECHO_MUTANT`).
pub const ECHO_FAULTS: [&str; 2] = ["flip-byte", "forge-peer"];

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
    /// byte of every reply changed; `forge-peer`: `--reply-peer` names another address),
    /// built with the echo crate's `mutants` feature.
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
            && !ECHO_FAULTS.contains(&fault.as_str())
        {
            bail!(
                "{}: mutation.fault = {fault:?}: the mutant echo server knows {}",
                path.display(),
                ECHO_FAULTS.join(", ")
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
    /// The trial failed at a step that judges the scenario's claim (counted from 1; for
    /// an expected failure that did not come, its step).
    Caught(usize),
    /// It passed (or a listed bug did not reproduce): the mutant survived it.
    Survived,
    /// A known bug reproduced first (XFAIL): this trial cannot tell.
    Masked,
    /// SKIP: the scenario did not run here.
    NotRun,
    /// The steps ran and failed, but at a step that does not judge the claim: the
    /// mutant broke something else, and the claim was never put to the test.
    OffClaim(usize),
    /// A FAIL before the steps were judged: the lab, the guest or the mutant's own
    /// set-up failed. It says nothing of the claim.
    Broken,
}

impl Score {
    pub fn of(r: &TrialResult) -> Score {
        match r.outcome {
            Outcome::Pass | Outcome::Xpass => Score::Survived,
            Outcome::Xfail => Score::Masked,
            Outcome::Skip => Score::NotRun,
            Outcome::Fail if !r.steps_ran => Score::Broken,
            // No failed step with the steps judged: an expected failure that did not come.
            Outcome::Fail => match (r.failed_step, r.claim_steps.last()) {
                (None, Some(&step)) => Score::Caught(step),
                (Some(step), _) if r.claim_steps.contains(&step) => Score::Caught(step),
                (Some(step), _) => Score::OffClaim(step),
                (None, None) => Score::Broken,
            },
        }
    }

    pub fn label(self) -> String {
        match self {
            Score::Caught(step) => format!("caught at step {step}"),
            Score::Survived => "SURVIVED".into(),
            Score::Masked => "masked (XFAIL)".into(),
            Score::NotRun => "not run (SKIP)".into(),
            Score::OffClaim(step) => format!("FAILED OFF THE CLAIM (step {step})"),
            Score::Broken => "NOT RUN (the set-up failed)".into(),
        }
    }
}

/// The mutation score of a `--mutants` run: a markdown table (mutant, scenario, one
/// column per runtime), the claims with the mutant and the evidence that caught each,
/// and the problems, each of which fails the run: a pair that survived, a FAIL off the
/// claim or before the steps, a mutant no scenario caught (but one no trial here could
/// judge: each SKIPped or masked by a known bug), a claim no mutant names, and
/// a claim in the run that none of its mutants was caught at.
pub fn score_report(
    results: &[TrialResult],
    scenarios: &[Scenario],
    mutants: &[Mutant],
) -> (String, Vec<String>) {
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
            .insert(r.runtime.as_str(), Score::of(r));
    }
    let mut text = format!(
        "| mutant | scenario | {} |\n|---|---|",
        runtimes.join(" | ")
    );
    text += &"---|".repeat(runtimes.len());
    text.push('\n');
    let mut problems = Vec::new();
    let mut caught_by: BTreeMap<&str, usize> = BTreeMap::new();
    let mut judged_by: BTreeMap<&str, usize> = BTreeMap::new();
    for ((m, scenario), scores) in &rows {
        let cells: Vec<String> = runtimes
            .iter()
            .map(|rt| scores.get(rt).map(|s| s.label()).unwrap_or_default())
            .collect();
        text += &format!("| {m} | {scenario} | {} |\n", cells.join(" | "));
        let caught = scores
            .values()
            .filter(|s| matches!(s, Score::Caught(_)))
            .count();
        *caught_by.entry(m).or_default() += caught;
        let judged = scores
            .values()
            .filter(|s| !matches!(s, Score::Masked | Score::NotRun))
            .count();
        *judged_by.entry(m).or_default() += judged;
        for (rt, score) in scores {
            match score {
                Score::Survived => {
                    problems.push(format!("{m} survived {scenario} on {rt}: a weak scenario"))
                }
                Score::OffClaim(step) => problems.push(format!(
                    "{m} made {scenario} fail on {rt} at step {step}, which does not judge its claim: the mutant breaks something else"
                )),
                Score::Broken => problems.push(format!(
                    "{m} on {scenario} on {rt} did not run (the lab, the guest or the mutant's set-up failed): see its trial"
                )),
                _ => {}
            }
        }
    }
    let mut unjudged = Vec::new();
    for (m, caught) in &caught_by {
        if *caught > 0 {
            continue;
        }
        // Every trial of it SKIPped on this target or hit a known bug first: nothing
        // here could catch it or let it survive. Said, not counted against the run.
        if judged_by.get(m) == Some(&0) {
            unjudged.push(*m);
        } else {
            problems.push(format!("{m} was caught by no scenario"));
        }
    }
    if !unjudged.is_empty() {
        text += "\nNot judged in this run (each of their trials was SKIPped or masked by a known bug): ";
        text += &unjudged.join(", ");
        text += "\n";
    }
    for s in unchallenged_claims(scenarios, mutants) {
        problems.push(format!("{s} claims a behaviour but no mutant names it"));
    }
    // Per claim: the mutant and the evidence that caught it.
    text += "\n## Claims and the mutants that break them\n\n| scenario | claim | mutant | runtime | caught at | evidence |\n|---|---|---|---|---|---|\n";
    let mut in_run: Vec<&str> = results.iter().map(|r| r.scenario.as_str()).collect();
    in_run.sort();
    in_run.dedup();
    for name in in_run {
        let Some(s) = scenarios.iter().find(|s| s.name == name) else {
            continue;
        };
        let Some(claim) = &s.claim else { continue };
        let catching: Vec<&TrialResult> = results
            .iter()
            .filter(|r| r.scenario == name && matches!(Score::of(r), Score::Caught(_)))
            .collect();
        if catching.is_empty() {
            // A known bug that reproduces first (XFAIL), or a SKIP, leaves nothing to
            // catch here: said, not counted against the claim.
            let untestable = results
                .iter()
                .filter(|r| r.scenario == name && r.mutant.is_some())
                .all(|r| matches!(Score::of(r), Score::Masked | Score::NotRun));
            if untestable {
                text += &format!(
                    "| {name} | {} | | | masked by a known bug or not run here | |\n",
                    cell(claim)
                );
            } else {
                problems.push(format!(
                    "{name}'s claim was judged false under none of its mutants"
                ));
                text += &format!("| {name} | {} | | | not caught | |\n", cell(claim));
            }
        }
        for r in catching {
            let Score::Caught(step) = Score::of(r) else {
                continue;
            };
            let what = match step.checked_sub(1).and_then(|i| s.steps.get(i)) {
                Some(st) => format!("{} {}", st.kind(), st.summary()),
                None => "loading the units".into(),
            };
            let evidence = r
                .evidence
                .clone()
                .unwrap_or_else(|| r.detail.lines().next().unwrap_or_default().to_string());
            text += &format!(
                "| {name} | {} | {} | {} | step {step} `{}` | {} |\n",
                cell(claim),
                r.mutant.as_deref().unwrap_or_default(),
                r.runtime,
                cell(&what),
                cell(&evidence)
            );
        }
    }
    (text, problems)
}

/// `text` fit for one markdown table cell.
fn cell(text: &str) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let one = one.replace('|', "\\|").replace('`', "'");
    if one.chars().count() > 160 {
        format!("{}...", one.chars().take(160).collect::<String>())
    } else {
        one
    }
}

/// One trial of `cargo xtask ci`'s mutant subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiPair {
    pub mutant: String,
    pub scenario: String,
    pub target: String,
}

/// The trials `cargo xtask ci` runs of the mutants: every mutant once, on the first of
/// `targets` (name, the ready state's versions) where a scenario it names can run (its
/// `requires` holds), against the one of those that costs the least (fewest reboots,
/// then the least time slept and the fewest steps). An error names the mutants that can
/// run on none of the targets.
pub fn ci_pairs(
    mutants: &[Mutant],
    scenarios: &[Scenario],
    targets: &[(String, BTreeMap<String, String>)],
) -> Result<Vec<CiPair>> {
    let cost = |s: &Scenario| {
        let reboots = s
            .steps
            .iter()
            .filter(|st| matches!(st, Step::Reboot {}))
            .count();
        let slept: f64 = s
            .steps
            .iter()
            .map(|st| match st {
                Step::Sleep { seconds } => *seconds,
                _ => 0.0,
            })
            .sum();
        (reboots, slept as u64, s.steps.len(), s.name.clone())
    };
    let mut pairs = Vec::new();
    let mut nowhere = Vec::new();
    for m in mutants {
        let found = targets.iter().find_map(|(target, versions)| {
            let cheapest = scenarios
                .iter()
                .filter(|s| m.catches.contains(&s.name))
                .filter(|s| crate::scenario::requirements_verdict(s, versions).is_none())
                .min_by_key(|s| cost(s))?;
            Some(CiPair {
                mutant: m.name.clone(),
                scenario: cheapest.name.clone(),
                target: target.clone(),
            })
        });
        match found {
            Some(p) => pairs.push(p),
            None => nowhere.push(m.name.clone()),
        }
    }
    if !nowhere.is_empty() {
        let names: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
        bail!(
            "no scenario these mutants name can run on {}: {}",
            names.join(" or "),
            nowhere.join(", ")
        );
    }
    Ok(pairs)
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
    fn ci_runs_every_mutant_once_on_its_cheapest_scenario_where_it_can_run() {
        let all = scenarios();
        let mutants = load_all(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mutants"),
            &all,
        )
        .unwrap();
        let versions = |podman: &str, systemd: &str| {
            BTreeMap::from([
                ("podman".to_string(), podman.to_string()),
                ("systemd".to_string(), systemd.to_string()),
            ])
        };
        let trixie = ("debian-13".to_string(), versions("5.4.2", "257"));
        let bookworm = ("debian-12".to_string(), versions("4.3.1", "252"));
        // Some mutants only break claims of older podmans and systemds.
        let e = format!(
            "{:#}",
            ci_pairs(&mutants, &all, std::slice::from_ref(&trixie)).unwrap_err()
        );
        assert!(
            e.contains("can run on debian-13: ") && e.contains("sdnotify-conmon-instead"),
            "{e}"
        );
        let pairs = ci_pairs(&mutants, &all, &[trixie, bookworm]).unwrap();
        let named: Vec<&str> = pairs.iter().map(|p| p.mutant.as_str()).collect();
        let every: Vec<&str> = mutants.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(named, every);
        let of = |m: &str| pairs.iter().find(|p| p.mutant == m).unwrap();
        // No reboot where a mutant names a scenario without one; the first target first.
        assert_eq!(of("echo-flip-byte").scenario, "echo-tcp4");
        assert_eq!(of("echo-flip-byte").target, "debian-13");
        // A scenario named only with reboots is still run.
        assert_eq!(of("usernamespace-noop").scenario, "reboot-usernamespace");
        // podman 4.3.1's refusal of --sdnotify=healthy runs on debian-12.
        assert_eq!(of("sdnotify-conmon-instead").target, "debian-12");
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

    fn result(m: &str, s: &str, rt: &str, outcome: Outcome) -> TrialResult {
        TrialResult {
            name: format!("mutants::{m}::{s}::debian-13::{rt}"),
            scenario: s.into(),
            target: "debian-13".into(),
            runtime: rt.into(),
            outcome,
            elapsed_s: 1.0,
            versions: Default::default(),
            issue: None,
            detail: "step 2 `probe tcp4:127.0.0.1:3000` failed: mismatch".into(),
            log_dir: "/tmp/x".into(),
            mutant: Some(m.into()),
            claim: None,
            failed_step: (outcome == Outcome::Fail).then_some(2),
            evidence: None,
            measurements: Vec::new(),
            runtime_source: None,
            runtime_commit: None,
            steps_ran: true,
            claim_steps: vec![2],
        }
    }

    #[test]
    fn caught_means_failed_at_a_step_that_judges_the_claim() {
        let r = result("flip", "echo-tcp4", "crun", Outcome::Fail);
        assert_eq!(Score::of(&r), Score::Caught(2));
        // Failed at another step: the claim was never tested.
        let off = TrialResult {
            failed_step: Some(1),
            ..r.clone()
        };
        assert_eq!(Score::of(&off), Score::OffClaim(1));
        // The guest did not come up, the mutant could not be applied, the lab failed.
        let broken = TrialResult {
            steps_ran: false,
            failed_step: None,
            ..r.clone()
        };
        assert_eq!(Score::of(&broken), Score::Broken);
        // An expected failure that did not come (every step passed) is caught at its step.
        let came_not = TrialResult {
            failed_step: None,
            claim_steps: vec![3],
            ..r.clone()
        };
        assert_eq!(Score::of(&came_not), Score::Caught(3));
        // A claim about what systemd says of a unit is judged at the units' load, step 0
        // (a scenario with load_complaints), and at its expected failure's step.
        let said = TrialResult {
            failed_step: Some(0),
            claim_steps: vec![0, 2],
            ..r.clone()
        };
        assert_eq!(Score::of(&said), Score::Caught(0));
        let unsaid = TrialResult {
            failed_step: None,
            ..said.clone()
        };
        assert_eq!(Score::of(&unsaid), Score::Caught(2));
        // Elsewhere a refused unit is no part of the claim.
        let refused = TrialResult {
            failed_step: Some(0),
            ..r.clone()
        };
        assert_eq!(Score::of(&refused), Score::OffClaim(0));
        for (o, score) in [
            (Outcome::Pass, Score::Survived),
            (Outcome::Xpass, Score::Survived),
            (Outcome::Xfail, Score::Masked),
            (Outcome::Skip, Score::NotRun),
        ] {
            assert_eq!(Score::of(&result("m", "s", "crun", o)), score);
        }
    }

    #[test]
    fn the_report_shows_each_pair_and_fails_on_all_but_a_catch_at_the_claim() {
        let all = scenarios();
        let mutants = load_all(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mutants"),
            &all,
        )
        .unwrap();
        let mut off = result("strip-listen-fds", "echo-udp4", "runc", Outcome::Fail);
        off.failed_step = Some(1);
        let mut broken = result("strip-listen-fds", "echo-unix", "runc", Outcome::Fail);
        broken.steps_ran = false;
        broken.failed_step = None;
        let results = vec![
            result("echo-flip-byte", "kube-play", "crun", Outcome::Xfail),
            result("echo-flip-byte", "echo-tcp6", "crun", Outcome::Fail),
            result("echo-flip-byte", "echo-tcp6", "runc", Outcome::Fail),
            result("restrict-dropped", "restrict", "crun", Outcome::Xfail),
            result("restrict-dropped", "restrict", "runc", Outcome::Pass),
            off,
            broken,
            // Its one scenario SKIPs on this target: not judged, not a problem.
            result(
                "openfile-lines-commented-out",
                "openfile-unknown-key",
                "crun",
                Outcome::Skip,
            ),
            result(
                "openfile-lines-commented-out",
                "openfile-unknown-key",
                "runc",
                Outcome::Skip,
            ),
        ];
        let (table, problems) = score_report(&results, &all, &mutants);
        assert!(
            table.contains("Not judged in this run (each of their trials was SKIPped or masked by a known bug): openfile-lines-commented-out\n"),
            "{table}"
        );
        assert!(
            !problems
                .iter()
                .any(|p| p.contains("openfile-lines-commented-out")),
            "{problems:#?}"
        );
        assert!(table.starts_with("| mutant | scenario | crun | runc |\n|---|---|---|---|\n"));
        assert!(
            table.contains("| echo-flip-byte | echo-tcp6 | caught at step 2 | caught at step 2 |"),
            "{table}"
        );
        assert!(
            table.contains("| restrict-dropped | restrict | masked (XFAIL) | SURVIVED |"),
            "{table}"
        );
        // The claim, the mutant and the evidence.
        assert!(
            table.contains("| echo-tcp6 | articles 002/004: ") && table.contains("| echo-flip-byte | crun | step 2 `probe tcp6:[::1]:3000` | step 2 'probe tcp4:127.0.0.1:3000' failed: mismatch |"),
            "{table}"
        );
        let expected = [
            "restrict-dropped survived restrict on runc: a weak scenario",
            "strip-listen-fds made echo-udp4 fail on runc at step 1, which does not judge its claim: the mutant breaks something else",
            "strip-listen-fds on echo-unix on runc did not run (the lab, the guest or the mutant's set-up failed): see its trial",
            "restrict-dropped was caught by no scenario",
            "strip-listen-fds was caught by no scenario",
            "restrict's claim was judged false under none of its mutants",
        ];
        for e in expected {
            assert!(
                problems.iter().any(|p| p == e),
                "{e:?} not in {problems:#?}"
            );
        }
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
