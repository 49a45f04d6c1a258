//! The trial matrix as a libtest harness: one trial per (scenario, target, runtime), named
//! `scenario::target::runtime`, so libtest's filters, `--list`, `--exact`, `--ignored`
//! and nextest all select trials.
//!
//! Trials boot guests, so they only run when `cargo xtask test` has built the static
//! binaries and says where they are (`SAL_ECHO_BIN`, `SAL_PROBE_BIN`); otherwise they are
//! listed as ignored. `SAL_TARGETS` and `SAL_RUNTIMES` (comma-separated) choose the axes,
//! `SAL_RUN_DIR` where logs and reports go, `SAL_FILTERS` name filters (one per line; with
//! `SAL_EXACT=1`, whole names), since libtest takes one filter; `SAL_MUTANTS=1` runs the
//! mutants against their scenarios instead of the catalogue, `SAL_SCENARIO_PATHS` (one per
//! line) scenario files or directories from anywhere (`cargo xtask repro`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use lab::events::Events;
use lab::run::{self, Selection};
use lab::trial::Outcome;
use libtest_mimic::{Arguments, Failed, Trial};
use vm::ready::{Binaries, Ready};

fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Arguments::from_args();
    lab::host_env::init();
    // The guests at once, for the guests' vCPUs under TCG (libtest-mimic's default: one per
    // core).
    vm::qemu::set_guests_at_once(args.test_threads.unwrap_or_else(vm::qemu::host_cores));
    let workspace = lab::workspace::current()?;
    // libtest-mimic takes one FILTER; `cargo xtask test` passes any number through
    // SAL_FILTERS (one per line) and SAL_EXACT, with libtest's rules for each.
    let filters: Vec<String> = std::env::var("SAL_FILTERS")
        .map(|v| {
            v.lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let selection = Selection {
        filters,
        exact: std::env::var("SAL_EXACT").is_ok_and(|v| v == "1"),
        targets: list("SAL_TARGETS"),
        runtimes: list("SAL_RUNTIMES"),
        mutants: std::env::var("SAL_MUTANTS").is_ok_and(|v| v == "1"),
        scenario_paths: std::env::var("SAL_SCENARIO_PATHS")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect(),
        conmon: std::env::var("SAL_CONMON").ok().filter(|c| !c.is_empty()),
    };
    // The last measured durations where there are some (`cargo xtask test` runs here),
    // else the estimate from the steps.
    let measured = run::measured_seconds(&workspace.join("target/lab"), 20);
    let planned = run::longest_first(run::plan(&workspace, &selection)?, &measured);
    let bins = lab::host_env::binaries();
    if bins.is_none() && !args.list {
        eprintln!("lab trials need guests and are ignored here; run them with `cargo xtask test`");
    }
    let run_dir: PathBuf = match std::env::var_os("SAL_RUN_DIR") {
        Some(d) => d.into(),
        None if bins.is_some() && !args.list => run::new_run_dir(&workspace)?,
        None => PathBuf::new(),
    };
    if bins.is_some() && !args.list {
        std::fs::create_dir_all(&run_dir)?;
    }
    let events = Events::console();
    // One ready state per target per process, made at the first trial that needs it. A
    // failure is remembered too: the target's other trials fail at once with it instead
    // of building the image again. Each target has its own cell, so with --jobs N a
    // trial of one target does not wait on another target's build, and a panic while
    // building one leaves the others (and a later retry of it) free.
    let readies: Arc<Mutex<HashMap<String, ReadyCell>>> = Arc::default();

    let trials: Vec<Trial> = planned
        .into_iter()
        .map(|trial| {
            let name = trial.name();
            let ignored = bins.is_none();
            let (bins, run_dir, events, readies) = (
                bins.clone(),
                run_dir.clone(),
                events.clone(),
                readies.clone(),
            );
            Trial::test(name, move || {
                // A panic anywhere in a trial (the engine's bug, a bad scenario value) is a
                // FAIL with its message in result.json, so every report counts it.
                let body = std::panic::AssertUnwindSafe(|| {
                    trial_body(&trial, bins.as_ref(), &run_dir, &events, &readies)
                });
                std::panic::catch_unwind(body).unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "(no message)".into());
                    let why = format!("the trial panicked: {message}");
                    let result = run::not_started(&trial, &run_dir, &why);
                    lab::report::write_trial(&result)
                        .map_err(|e| Failed::from(format!("{e:#}")))?;
                    Err(Failed::from(why))
                })
            })
            .with_ignored_flag(ignored)
        })
        .collect();

    let conclusion = libtest_mimic::run(&args, trials);
    if bins.is_some() && !args.list {
        let results = lab::report::collect(&run_dir)?;
        if !results.is_empty() {
            lab::report::write_all(&run_dir, &results)?;
            eprintln!(
                "\nreports: {}/{{results.json,junit.xml,summary.md}}",
                run_dir.display()
            );
        }
    }
    conclusion.exit()
}

type ReadyCell = Arc<OnceLock<Result<Arc<Ready>, String>>>;

/// One trial: the target's ready state (made by the first trial that needs it), then
/// the trial, its result.json, and libtest's verdict.
fn trial_body(
    trial: &run::Trial,
    bins: Option<&Binaries>,
    run_dir: &Path,
    events: &Events,
    readies: &Mutex<HashMap<String, ReadyCell>>,
) -> Result<(), Failed> {
    let bins = bins.ok_or_else(|| Failed::from("no binaries: run through cargo xtask test"))?;
    let name = &trial.target.name;
    let cell = readies
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(name.clone())
        .or_default()
        .clone();
    let mut made_here = false;
    let ready = match cell.get_or_init(|| {
        made_here = true;
        vm::ready::ensure_ready(&trial.target, bins, events.machine())
            .map(Arc::new)
            .map_err(|e| format!("preparing {name}: {e:#}"))
    }) {
        Ok(r) => r.clone(),
        Err(e) => {
            // The first trial gets the whole error; the rest refer to it.
            let why = if made_here {
                e.clone()
            } else {
                let mut lines = e.lines().filter(|l| !l.trim().is_empty());
                let first = lines.next().unwrap_or_default();
                let last = lines.next_back().unwrap_or_default();
                format!(
                    "{first} ... {last} (failed earlier in this run; the first trial of {name} has the whole error)"
                )
            };
            let result = run::not_started(trial, run_dir, &why);
            lab::report::write_trial(&result).map_err(|e| Failed::from(format!("{e:#}")))?;
            return Err(Failed::from(why));
        }
    };
    let result = run::run_trial(trial, &ready, run_dir, events);
    lab::report::write_trial(&result).map_err(|e| Failed::from(format!("{e:#}")))?;
    match result.outcome {
        Outcome::Pass | Outcome::Xfail | Outcome::Skip => Ok(()),
        Outcome::Fail | Outcome::Xpass => {
            Err(Failed::from(result.summary_line() + "\n" + &result.detail))
        }
    }
}
