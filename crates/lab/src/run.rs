//! A run: trials selected from scenarios × targets × runtimes, each on its own guest
//! restored from the target's ready state, with logs under `target/lab/<run>/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use vm::ready::{ECHO_IMAGE, Ready};
use vm::target::{self, ImageSource, Target};
use vm::trial_vm::TrialVm;

use crate::events::{Event, Events};
use crate::mutant::{self, Mutant};
use crate::runtimes::install::Unusable;
use crate::runtimes::{self, Origin, RuntimeSpec, archive, dnf};
use crate::scenario::{self, Scenario, Verdict};
use crate::trial::{Outcome, RuntimeUse, TrialResult};

#[derive(Debug, Clone)]
pub struct Trial {
    pub scenario: Scenario,
    pub target: Target,
    /// `runc`, `crun`, or `NAME@SUITE`.
    pub runtime: String,
    /// Something broken on purpose that the scenario must catch.
    pub mutant: Option<Mutant>,
    /// A conmon from the host or built from a checkout (`path:FILE`, `git:DIR#REV`) that
    /// replaces the guest's for this trial.
    pub conmon: Option<String>,
}

impl Trial {
    /// `scenario::target::runtime`, or `mutants::NAME::scenario::target::runtime`.
    pub fn name(&self) -> String {
        let name = format!(
            "{}::{}::{}",
            self.scenario.name, self.target.name, self.runtime
        );
        match &self.mutant {
            Some(m) => format!("mutants::{}::{name}", m.name),
            None => name,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// A trial is selected when its name contains any filter, or with `exact` equals one
    /// (libtest's rules, for any number of filters); all when empty.
    pub filters: Vec<String>,
    pub exact: bool,
    /// Target names; the default target (debian-13) when empty.
    pub targets: Vec<String>,
    /// Runtimes (`runc`, `crun@bookworm`, ...); every runtime of the target when empty.
    pub runtimes: Vec<String>,
    /// Instead of the catalogue, every mutant (`tests/mutants/`) against the scenarios it
    /// names.
    pub mutants: bool,
    /// Instead of the catalogue, these scenario files or directories, wherever they are
    /// (`cargo xtask repro DIR`).
    pub scenario_paths: Vec<PathBuf>,
    /// A conmon that replaces the guest's in every trial (`path:FILE`, `git:DIR#REV`).
    pub conmon: Option<String>,
}

impl Selection {
    pub fn matches(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| self.matches_one(f, name))
    }

    fn matches_one(&self, filter: &str, name: &str) -> bool {
        if self.exact {
            name == filter
        } else {
            name.contains(filter)
        }
    }

    /// The filters that select none of `names`.
    pub fn unmatched<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        self.filters
            .iter()
            .filter(|f| !names.iter().any(|n| self.matches_one(f, n)))
            .map(String::as_str)
            .collect()
    }
}

pub const DEFAULT_TARGET: &str = "debian-13";

/// The trials `selection` picks, in a stable order (target, scenario, runtime).
pub fn plan(workspace: &Path, selection: &Selection) -> Result<Vec<Trial>> {
    let scenarios = if selection.scenario_paths.is_empty() {
        scenario::load_all(&workspace.join("tests/scenarios"))?
    } else {
        selection
            .scenario_paths
            .iter()
            .map(|p| scenario::load_path(p))
            .collect::<Result<Vec<_>>>()?
    };
    // (mutant, scenario) pairs: the catalogue with no mutant, or every mutant's scenarios.
    let pairs: Vec<(Option<Mutant>, Scenario)> = if selection.mutants {
        mutant::load_all(&mutant::dir(workspace), &scenarios)?
            .into_iter()
            .flat_map(|m| {
                let named: Vec<Scenario> = scenarios
                    .iter()
                    .filter(|s| m.catches.contains(&s.name))
                    .cloned()
                    .collect();
                named.into_iter().map(move |s| (Some(m.clone()), s))
            })
            .collect()
    } else {
        scenarios.into_iter().map(|s| (None, s)).collect()
    };
    let vm_dir = workspace.join("vm");
    let target_names = if selection.targets.is_empty() {
        vec![DEFAULT_TARGET.to_string()]
    } else {
        selection.targets.clone()
    };
    let mut trials = Vec::new();
    for name in &target_names {
        let target = target::find(&vm_dir, name)?;
        let runtimes = if selection.runtimes.is_empty() {
            target.runtimes.clone()
        } else {
            selection.runtimes.clone()
        };
        for r in &runtimes {
            let spec: RuntimeSpec = r.parse()?;
            if let Some(why) = spec.refusal(&target) {
                bail!("{why}");
            }
        }
        if let Some(c) = &selection.conmon {
            let spec = RuntimeSpec::conmon(c)?;
            if matches!(spec.origin, Origin::Git { .. }) && !target.is_debian() {
                bail!(
                    "conmon {c}: a source tree is built in a Debian build root of the target's suite; {} is not a Debian target",
                    target.name
                );
            }
        }
        for (m, s) in &pairs {
            for r in &runtimes {
                let t = Trial {
                    scenario: s.clone(),
                    target: target.clone(),
                    runtime: r.clone(),
                    mutant: m.clone(),
                    conmon: selection.conmon.clone(),
                };
                if selection.matches(&t.name()) {
                    trials.push(t);
                }
            }
        }
    }
    Ok(trials)
}

/// Like [`plan`], and every filter must select at least one trial: a run that executes
/// nothing, or a mistyped filter beside good ones, is an error naming the filter.
pub fn plan_selected(workspace: &Path, selection: &Selection) -> Result<Vec<Trial>> {
    let all = plan(
        workspace,
        &Selection {
            filters: Vec::new(),
            ..selection.clone()
        },
    )?;
    let names: Vec<String> = all.iter().map(Trial::name).collect();
    let unmatched = selection.unmatched(&names);
    if !unmatched.is_empty() {
        let quoted: Vec<String> = unmatched.iter().map(|f| format!("{f:?}")).collect();
        bail!(
            "no trial matches {} {}{} (trial names are scenario::target::runtime; see cargo xtask test --list)",
            if unmatched.len() == 1 {
                "the filter"
            } else {
                "the filters"
            },
            quoted.join(", "),
            if selection.exact { " exactly" } else { "" }
        );
    }
    let selected: Vec<Trial> = all
        .into_iter()
        .filter(|t| selection.matches(&t.name()))
        .collect();
    if selected.is_empty() {
        bail!("the selection has no trials");
    }
    Ok(selected)
}

/// A trial's expected length under TCG, for ordering only: a reboot costs about 35 s, a
/// sleep its seconds, and a probe allowed more than the default 30 s waits for something
/// slow (a container's own systemd, a network that comes late) or, when the trial fails,
/// waits out its timeout.
pub fn expected_seconds(scenario: &Scenario) -> f64 {
    use crate::scenario::schema::Step;
    let mut seconds = 10.0;
    let mut longest_probe: f64 = 30.0;
    for step in &scenario.steps {
        match step {
            Step::Reboot {} => seconds += 35.0,
            Step::Sleep { seconds: s } => seconds += s,
            Step::Probe { timeout, .. } => longest_probe = longest_probe.max(*timeout),
            _ => {}
        }
    }
    seconds + (longest_probe - 30.0)
}

/// `trials` longest first, the others in their order: by how long each took when it last
/// ran here (`measured`, from [`measured_seconds`]), else by [`expected_seconds`].
/// libtest-mimic starts trials in the order given, and under TCG a reboot trial or one
/// with a long probe takes 40-150 s against a median of about 10 s: with `--jobs N`, one
/// started last keeps the run going while the other jobs sit idle.
pub fn longest_first(mut trials: Vec<Trial>, measured: &HashMap<String, f64>) -> Vec<Trial> {
    let seconds = |t: &Trial| {
        measured
            .get(&t.name())
            .copied()
            .unwrap_or_else(|| expected_seconds(&t.scenario))
    };
    trials.sort_by(|a, b| seconds(b).total_cmp(&seconds(a)));
    trials
}

/// How long each trial took the last time it ran here, from the `results.json` of the
/// newest `runs` run directories under `lab_dir`: trial name → seconds. A SKIP, or a
/// trial that ended before its steps, says nothing about its length.
pub fn measured_seconds(lab_dir: &Path, runs: usize) -> HashMap<String, f64> {
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(lab_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let results = e.path().join("results.json");
            let modified = std::fs::metadata(&results)
                .and_then(|m| m.modified())
                .ok()?;
            Some((modified, results))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut seconds = HashMap::new();
    for (_, file) in dirs.into_iter().take(runs) {
        let Ok(results) = std::fs::read_to_string(&file)
            .map_err(anyhow::Error::from)
            .and_then(|t| Ok(serde_json::from_str::<Vec<TrialResult>>(&t)?))
        else {
            continue;
        };
        for r in results {
            if r.outcome != Outcome::Skip && r.steps_ran {
                seconds.entry(r.name).or_insert(r.elapsed_s);
            }
        }
    }
    seconds
}

/// A new run directory `target/lab/run-<time>-<pid>/`, after removing what earlier runs
/// that were killed outright left behind ([`vm::cleanup::sweep_killed_runs`]).
pub fn new_run_dir(workspace: &Path) -> Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let lab_dir = workspace.join("target/lab");
    let swept = vm::cleanup::sweep_killed_runs(&std::env::temp_dir(), &lab_dir);
    if !swept.is_empty() {
        let names: Vec<String> = swept
            .tmp_dirs
            .iter()
            .chain(&swept.overlays)
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "removed what a killed run left behind (its sockets had no listener, its overlays no user): {}",
            names.join(", ")
        );
    }
    let dir = lab_dir.join(format!("run-{now}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The runtime as this trial uses it: fetched from its suite if it names one, copied
/// from the host or built from a checkout, installed in the guest and checked;
/// `Err(reason)` when it cannot run here (a SKIP). What a reader needs besides the
/// verdict (a build's log, the uncommitted changes built with it) goes to `dir`.
fn runtime_for(
    trial: &Trial,
    ready: &Ready,
    vm: &TrialVm,
    dir: &Path,
    events: &Events,
) -> Result<std::result::Result<RuntimeUse, Unusable>> {
    let spec: RuntimeSpec = trial.runtime.parse()?;
    let use_of = |i: runtimes::install::Installed, source, commit| RuntimeUse {
        name: spec.name.clone(),
        podman_arg: i.podman_arg,
        version: i.version,
        source,
        commit,
    };
    let installed = match (&spec.origin, &trial.target.source) {
        (Origin::Target, _) => {
            let version = ready.versions.get(&spec.name).cloned().unwrap_or_default();
            return Ok(Ok(RuntimeUse {
                name: spec.name.clone(),
                podman_arg: spec.name,
                version,
                source: None,
                commit: None,
            }));
        }
        (Origin::Path(_) | Origin::Git { .. }, _) => {
            let host = host_binary(&spec, &trial.target, dir, events)?;
            let podman_arg = runtimes::local::put_into_guest(&vm.guest, &spec, &host.binary)?;
            let installed = runtimes::install::usable(&vm.guest, &spec, podman_arg, ECHO_IMAGE)?;
            return Ok(installed.map(|i| use_of(i, Some(host.line), host.commit)));
        }
        (Origin::Suite(_), ImageSource::Debian { mirror, .. }) => {
            let fetched = archive::fetch_package(&spec, mirror, events)
                .with_context(|| format!("fetching {spec}"))?;
            runtimes::install::install(&vm.guest, &spec, Some(&fetched), ECHO_IMAGE)?
        }
        (Origin::Version(_), ImageSource::Fedora { .. }) => {
            let key = trial
                .target
                .package_key()
                .with_context(|| format!("{}: dnf packages need the release key (`checksum_key`) to check their signatures", trial.target.name))?;
            let fetched = dnf::download(&vm.guest, &trial.target.name, &spec, &key, events)
                .with_context(|| format!("fetching {spec} with dnf"))?;
            dnf::install(&vm.guest, &fetched, ECHO_IMAGE)?
        }
        _ => bail!(
            "{}",
            spec.refusal(&trial.target).unwrap_or_else(|| format!(
                "runtime {spec} cannot be used on {}",
                trial.target.name
            ))
        ),
    };
    Ok(installed.map(|i| use_of(i, None, None)))
}

/// A binary given as a host path, or built from a checkout for the target's suite.
struct HostBinary {
    binary: PathBuf,
    /// Where it came from, for the reports.
    line: String,
    commit: Option<String>,
}

/// The binary `spec` names on the host: checked (`path:`) or built (`git:`), with its
/// build log and any uncommitted changes it was built with kept in `dir`.
fn host_binary(
    spec: &RuntimeSpec,
    target: &Target,
    dir: &Path,
    events: &Events,
) -> Result<HostBinary> {
    match (&spec.origin, &target.source) {
        (Origin::Path(path), _) => {
            let b = runtimes::local::inspect(path).with_context(|| format!("{spec}"))?;
            if let Some(diff) = &b.diff {
                std::fs::write(dir.join(format!("source-{}.diff", spec.name)), diff)?;
            }
            Ok(HostBinary {
                binary: b.path,
                line: b.provenance,
                commit: None,
            })
        }
        (Origin::Git { .. }, ImageSource::Debian { suite, mirror, .. }) => {
            let built = runtimes::build::ensure_for(spec, suite, mirror, events.machine())?;
            let source = &built.source;
            std::fs::copy(&built.log, dir.join(format!("build-{}.log", spec.name)))?;
            if let Some(diff) = &source.diff {
                std::fs::write(dir.join(format!("source-{}.diff", spec.name)), diff)?;
            }
            let mut line = format!(
                "{} in the {suite} build root (build-{}.log)",
                source.describe_line(),
                spec.name
            );
            for n in &built.notes {
                line += &format!("; {n}");
            }
            Ok(HostBinary {
                commit: Some(source.commit.clone()),
                binary: built.binary,
                line,
            })
        }
        _ => bail!(
            "{spec}: a source tree is built only for Debian targets, not {}",
            target.name
        ),
    }
}

/// Puts the trial's own conmon into the guest in place of the guest's (the guest is
/// thrown away after the trial): its version and where it came from.
fn conmon_for(
    trial: &Trial,
    vm: &TrialVm,
    dir: &Path,
    events: &Events,
) -> Result<Option<(String, String)>> {
    let Some(c) = &trial.conmon else {
        return Ok(None);
    };
    let spec = RuntimeSpec::conmon(c)?;
    let host = host_binary(&spec, &trial.target, dir, events)?;
    let path = runtimes::local::put_into_guest(&vm.guest, &spec, &host.binary)?;
    let t = std::time::Duration::from_secs(60);
    let out = vm.guest.root_ok(
        &format!(
            "for p in $(command -v conmon) /usr/libexec/podman/conmon /usr/bin/conmon; do if [ -e \"$p\" ]; then cp {path} \"$p\"; fi; done; conmon --version"
        ),
        t,
    )?;
    let version = runtimes::install::parse_version(&out.stdout)
        .with_context(|| format!("conmon --version printed {:?}", out.combined()))?;
    Ok(Some((version, format!("conmon {}", host.line))))
}

/// The trial's scenario with the mutant's change, on a guest with the mutant's change.
fn run_mutant(
    vm: &TrialVm,
    trial: &Trial,
    m: &Mutant,
    rt: RuntimeUse,
    versions: &std::collections::BTreeMap<String, String>,
) -> Result<Verdict> {
    let mutated = mutant::apply(&trial.scenario, &m.mutation)?;
    let echo = std::env::var_os("SAL_MUTANT_ECHO_BIN").map(PathBuf::from);
    let podman_arg = mutant::prepare_guest(vm, &m.mutation, &rt.podman_arg, echo.as_deref())
        .with_context(|| format!("putting mutant {} into the guest", m.name))?;
    let rt = RuntimeUse { podman_arg, ..rt };
    scenario::run_on_guest(vm, &mutated, &rt, versions)
}

/// A trial's log directory in the run directory: one path component, whatever the
/// runtime's spelling (`crun@path:/x/crun`, `crun@git:DIR#REV`).
fn trial_dir(run_dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .replace("::", "--")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    run_dir.join(safe)
}

/// The FAIL of a trial whose guest could not be prepared (the image did not build), so
/// that the reports count it.
pub fn not_started(trial: &Trial, run_dir: &Path, why: &str) -> TrialResult {
    let name = trial.name();
    let log_dir = trial_dir(run_dir, &name);
    TrialResult {
        name,
        scenario: trial.scenario.name.clone(),
        target: trial.target.name.clone(),
        runtime: trial.runtime.clone(),
        outcome: Outcome::Fail,
        elapsed_s: 0.0,
        versions: Default::default(),
        issue: None,
        detail: why.to_string(),
        log_dir,
        mutant: trial.mutant.as_ref().map(|m| m.name.clone()),
        claim: trial.scenario.claim.clone(),
        failed_step: None,
        evidence: None,
        measurements: Vec::new(),
        runtime_source: None,
        runtime_commit: None,
        steps_ran: false,
        claim_steps: trial.scenario.claim_steps(),
    }
}

/// Runs one trial. Anything that goes wrong (the guest did not come up, ssh broke) is a
/// FAIL with the error, never a crash of the run.
pub fn run_trial(trial: &Trial, ready: &Ready, run_dir: &Path, events: &Events) -> TrialResult {
    let name = trial.name();
    events.emit(Event::TrialStart { name: name.clone() });
    let started = Instant::now();
    let dir = trial_dir(run_dir, &name);
    // Interrupted (Ctrl-C), the trial is a FAIL that says so, with its logs.
    {
        let mut interrupted = not_started(
            trial,
            run_dir,
            &format!(
                "interrupted (Ctrl-C or SIGTERM) during the trial (logs: {})",
                dir.display()
            ),
        );
        interrupted.versions = ready.versions.clone();
        vm::cleanup::install_handler();
        vm::cleanup::on_interrupt(&dir, move || {
            let mut result = interrupted.clone();
            result.elapsed_s = started.elapsed().as_secs_f64();
            let _ = crate::report::write_trial(&result);
        });
    }
    let mut versions = ready.versions.clone();
    let mut source = (None, None);
    let verdict = match scenario::requirements_verdict(&trial.scenario, &ready.versions) {
        Some(verdict) => verdict,
        None => {
            let attempt = TrialVm::start(ready, &dir, events.machine()).and_then(|mut vm| {
                let attempt = match runtime_for(trial, ready, &vm, &dir, events) {
                    Err(e) => Err(e),
                    Ok(Err(Unusable(why, version))) => {
                        if let Some(v) = version {
                            versions.insert(trial.runtime.clone(), v);
                        }
                        Ok(Verdict::new(Outcome::Skip, why, None))
                    }
                    Ok(Ok(rt)) => {
                        versions.insert(trial.runtime.clone(), rt.version.clone());
                        source = (rt.source.clone(), rt.commit.clone());
                        if let Some((version, line)) = conmon_for(trial, &vm, &dir, events)? {
                            versions.insert("conmon".into(), version);
                            source.0 = Some(match source.0.take() {
                                Some(runtime) => format!("{runtime}; {line}"),
                                None => line,
                            });
                        }
                        match &trial.mutant {
                            None => scenario::run_on_guest(&vm, &trial.scenario, &rt, &versions),
                            Some(m) => run_mutant(&vm, trial, m, rt, &versions),
                        }
                    }
                };
                // An error outside the guest's doing (ssh broke, a deadline passed) says
                // what became of QEMU, when something did.
                attempt.map_err(|e| match vm.diagnose() {
                    Some(what) => e.context(what),
                    None => e,
                })
            });
            attempt.unwrap_or_else(|e| {
                Verdict::new(
                    Outcome::Fail,
                    format!("{e:#}\n(logs: {})", dir.display()),
                    None,
                )
            })
        }
    };
    let measurements = crate::scenario::evidence::measurements(&dir);
    let result = TrialResult {
        name,
        scenario: trial.scenario.name.clone(),
        target: trial.target.name.clone(),
        runtime: trial.runtime.clone(),
        outcome: verdict.outcome,
        elapsed_s: started.elapsed().as_secs_f64(),
        versions,
        issue: verdict.issue,
        detail: verdict.detail,
        log_dir: dir,
        mutant: trial.mutant.as_ref().map(|m| m.name.clone()),
        claim: trial.scenario.claim.clone(),
        failed_step: verdict.step,
        evidence: verdict.evidence,
        measurements,
        runtime_source: source.0,
        runtime_commit: source.1,
        steps_ran: verdict.steps_ran,
        claim_steps: trial.scenario.claim_steps(),
    };
    vm::cleanup::forget(&result.log_dir);
    events.emit(Event::TrialEnd(Box::new(result.clone())));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "restrict::debian-13::crun",
            "restrict::debian-13::runc",
            "restrict-pull-always::debian-13::crun",
        ]
        .map(String::from)
        .to_vec()
    }

    fn selection(filters: &[&str], exact: bool) -> Selection {
        Selection {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            exact,
            ..Default::default()
        }
    }

    fn picked(s: &Selection) -> usize {
        names().iter().filter(|n| s.matches(n)).count()
    }

    #[test]
    fn substring_filters_select_any_match() {
        let s = selection(&["restrict::"], false);
        assert_eq!(picked(&s), 2);
        assert!(s.unmatched(&names()).is_empty());
    }

    #[test]
    fn exact_with_a_partial_name_selects_nothing_and_says_which() {
        let s = selection(&["restrict"], true);
        assert_eq!(picked(&s), 0);
        assert_eq!(s.unmatched(&names()), ["restrict"]);
    }

    #[test]
    fn exact_applies_to_every_filter() {
        let s = selection(&["restrict::debian-13::crun", "restrict::debian-13"], true);
        assert_eq!(picked(&s), 1);
        assert_eq!(s.unmatched(&names()), ["restrict::debian-13"]);
    }

    #[test]
    fn a_mistyped_filter_beside_a_good_one_is_named() {
        let s = selection(&["restrict::", "restirct"], false);
        assert_eq!(picked(&s), 2);
        assert_eq!(s.unmatched(&names()), ["restirct"]);
    }

    #[test]
    fn no_filter_selects_all() {
        assert_eq!(picked(&selection(&[], true)), 3);
    }

    /// The newest run that measured a trial decides; a SKIP and a trial that never reached
    /// its steps do not; a measured trial goes before an estimated one that took less.
    #[test]
    fn measured_durations_order_the_trials() {
        vm::config::use_test_defaults();
        let lab = tempfile::tempdir().unwrap();
        let result = |name: &str, outcome: Outcome, seconds: f64, steps_ran: bool| {
            serde_json::json!({
                "name": name, "scenario": "s", "target": "t", "runtime": "r",
                "outcome": outcome, "elapsed_s": seconds, "versions": {},
                "detail": "", "log_dir": "/nonexistent", "steps_ran": steps_ran,
            })
        };
        let write = |run: &str, results: serde_json::Value| {
            let dir = lab.path().join(run);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("results.json"), results.to_string()).unwrap();
            // Distinct modification times, older first.
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        write(
            "run-1",
            serde_json::json!([
                result("echo-tcp4::debian-13::crun", Outcome::Pass, 99.0, true),
                result("echo-tcp6::debian-13::crun", Outcome::Pass, 500.0, true),
            ]),
        );
        write(
            "run-2",
            serde_json::json!([
                result("echo-tcp4::debian-13::crun", Outcome::Pass, 7.0, true),
                result("echo-tcp6::debian-13::crun", Outcome::Skip, 0.0, false),
                result("echo-udp4::debian-13::crun", Outcome::Fail, 0.5, false),
            ]),
        );
        let measured = measured_seconds(lab.path(), 20);
        assert_eq!(
            measured,
            HashMap::from([
                ("echo-tcp4::debian-13::crun".to_string(), 7.0),
                ("echo-tcp6::debian-13::crun".to_string(), 500.0),
            ])
        );
        assert!(!measured_seconds(lab.path(), 1).contains_key("echo-tcp6::debian-13::crun"));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let planned = plan(
            &workspace,
            &Selection {
                filters: vec![
                    "echo-tcp4::".into(),
                    "echo-tcp6::".into(),
                    "quadlet-reboot::".into(),
                ],
                targets: vec!["debian-13".into()],
                runtimes: vec!["crun".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let order: Vec<String> = longest_first(planned, &measured)
            .iter()
            .map(Trial::name)
            .collect();
        // echo-tcp6 measured 500 s, the reboot estimated, echo-tcp4 measured 7 s.
        assert_eq!(
            order,
            [
                "echo-tcp6::debian-13::crun",
                "quadlet-reboot::debian-13::crun",
                "echo-tcp4::debian-13::crun"
            ]
        );
    }

    #[test]
    fn long_trials_start_first_and_the_others_keep_their_order() {
        vm::config::use_test_defaults();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let planned = plan(
            &workspace,
            &Selection {
                targets: vec!["debian-13".into()],
                runtimes: vec!["crun".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let short: Vec<String> = planned
            .iter()
            .filter(|t| expected_seconds(&t.scenario) == 10.0)
            .map(Trial::name)
            .collect();
        let ordered = longest_first(planned, &HashMap::new());
        let seconds: Vec<f64> = ordered
            .iter()
            .map(|t| expected_seconds(&t.scenario))
            .collect();
        assert!(seconds.windows(2).all(|w| w[0] >= w[1]), "{seconds:?}");
        // The reboot with the network 60 s late first; a probe allowed 60 s (a restart
        // on failure) before the plain trials.
        assert!(ordered[0].name().starts_with("quadlet-reboot-slow-network"));
        let pos = |n: &str| {
            ordered
                .iter()
                .position(|t| t.name().starts_with(n))
                .unwrap()
        };
        assert!(pos("restart-on-failure::") < pos("echo-tcp4::"));
        let after: Vec<String> = ordered
            .iter()
            .filter(|t| expected_seconds(&t.scenario) == 10.0)
            .map(Trial::name)
            .collect();
        assert_eq!(after, short);
    }
}
