//! A run: trials selected from scenarios × targets × runtimes, each on its own guest
//! restored from the target's ready state, with logs under `target/lab/<run>/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::events::{Event, Events};
use crate::scenario::{self, Outcome, Scenario, TrialResult};
use crate::target::{self, Target};
use crate::vm::{self, Binaries, Ready, TrialVm};

#[derive(Debug, Clone)]
pub struct Trial {
    pub scenario: Scenario,
    pub target: Target,
    pub runtime: String,
}

impl Trial {
    pub fn name(&self) -> String {
        format!(
            "{}::{}::{}",
            self.scenario.name, self.target.name, self.runtime
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// A trial is selected when its name contains any filter (all when empty).
    pub filters: Vec<String>,
    /// Target names; the default target (debian-13) when empty.
    pub targets: Vec<String>,
    /// Runtime names; every runtime of the target when empty.
    pub runtimes: Vec<String>,
}

pub const DEFAULT_TARGET: &str = "debian-13";

/// The trials `selection` picks, in a stable order (target, scenario, runtime).
pub fn plan(workspace: &Path, selection: &Selection) -> Result<Vec<Trial>> {
    let scenarios = scenario::load_all(&workspace.join("tests/scenarios"))?;
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
            if !target.runtimes.contains(r) {
                bail!(
                    "target {} has no runtime {r:?}; it has {}",
                    target.name,
                    target.runtimes.join(", ")
                );
            }
        }
        for s in &scenarios {
            for r in &runtimes {
                let t = Trial {
                    scenario: s.clone(),
                    target: target.clone(),
                    runtime: r.clone(),
                };
                let n = t.name();
                if selection.filters.is_empty()
                    || selection.filters.iter().any(|f| n.contains(f.as_str()))
                {
                    trials.push(t);
                }
            }
        }
    }
    Ok(trials)
}

/// A new run directory `target/lab/<timestamp>/`.
pub fn new_run_dir(workspace: &Path) -> Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = workspace
        .join("target/lab")
        .join(format!("run-{now}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs every trial; a trial that errors (the guest did not come up, ssh broke) is a FAIL
/// with the error, never a crash of the run.
pub fn run_all(
    trials: &[Trial],
    bins: &Binaries,
    run_dir: &Path,
    events: &Events,
) -> Result<Vec<TrialResult>> {
    crate::cleanup::install_handler();
    let mut results = Vec::new();
    let mut ready: Option<Ready> = None;
    for trial in trials {
        if ready
            .as_ref()
            .is_none_or(|r| r.target.name != trial.target.name)
        {
            ready = Some(
                vm::ensure_ready(&trial.target, bins, events)
                    .with_context(|| format!("preparing {}", trial.target.name))?,
            );
        }
        let ready = ready.as_ref().expect("set above");
        results.push(run_one(trial, ready, run_dir, events));
    }
    write_results(run_dir, &results)?;
    Ok(results)
}

pub fn run_one(trial: &Trial, ready: &Ready, run_dir: &Path, events: &Events) -> TrialResult {
    let name = trial.name();
    events.emit(Event::TrialStart { name: name.clone() });
    let started = Instant::now();
    let dir = run_dir.join(name.replace("::", "--"));
    let (outcome, detail, issue) = match scenario::skip_reason(&trial.scenario, &ready.versions) {
        Some(reason) => (Outcome::Skip, reason, None),
        None => match TrialVm::start(ready, &dir, events).and_then(|vm| {
            scenario::run_trial(&vm, &trial.scenario, &trial.runtime, &ready.versions)
        }) {
            Ok(result) => result,
            Err(e) => (
                Outcome::Fail,
                format!("{e:#}\n(logs: {})", dir.display()),
                None,
            ),
        },
    };
    let result = TrialResult {
        name,
        scenario: trial.scenario.name.clone(),
        target: trial.target.name.clone(),
        runtime: trial.runtime.clone(),
        outcome,
        elapsed_s: started.elapsed().as_secs_f64(),
        versions: ready.versions.clone(),
        issue,
        detail,
        log_dir: dir,
    };
    events.emit(Event::TrialEnd(result.clone()));
    result
}

pub fn write_results(run_dir: &Path, results: &[TrialResult]) -> Result<()> {
    std::fs::write(
        run_dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    Ok(())
}
