//! `cargo xtask test` and `cargo xtask vm ...`: the lab engine driven from the CLI.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lab::events::Events;
use lab::run::{self, Selection};
use lab::runtimes::{Origin, RuntimeSpec};
use lab::trial::Outcome;
use vm::trial_vm::TrialVm;
use xshell::{Shell, cmd};

use crate::{host, statics};

pub(crate) fn events() -> Events {
    Events::console()
}

/// Guests at once when `--jobs` is not given: one per core. Measured here (2 cores, TCG,
/// the 24 CI trials, trials restored from memory mapped copy-on-write, harness time):
/// 1 job 118 s, 2 jobs 72-91 s (seven runs), 3 jobs 85-94 s (two runs); with KVM a guest
/// costs less CPU, so one per core is, if anything, cautious. Under TCG the
/// guests' vCPUs follow this count (`vm::qemu::MachineSpec::sized_for`).
pub fn default_jobs() -> usize {
    ::vm::qemu::host_cores()
}

/// Runs the trial matrix through its libtest harness (`tests/matrix.rs`), so filters,
/// `--list` and `--exact` behave as in any `cargo test` (for any number of filters), and a
/// filter that selects no trial is an error.
pub fn test(sh: &Shell, root: &Path, selection: Selection, options: &TestOptions) -> Result<()> {
    match run_matrix(sh, root, selection, options)? {
        None => Ok(()),
        Some((_, status)) => status,
    }
}

/// Builds the trial harness (`tests/matrix.rs`) and returns its executable, as cargo
/// reports it (under whatever target directory cargo uses).
fn harness_executable(sh: &Shell) -> Result<std::path::PathBuf> {
    let fail = || {
        anyhow::anyhow!(
            "building the trial harness (tests/matrix.rs) failed, see above; no trial ran"
        )
    };
    let messages = cmd!(
        sh,
        "cargo test --no-run --quiet --locked -p lab-matrix --test matrix --message-format=json-render-diagnostics"
    )
    .read()
    .map_err(|_| fail())?;
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "matrix")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .ok_or_else(|| anyhow::anyhow!("cargo built the trial harness but named no executable"))
}

pub(crate) type MatrixOutcome = (Vec<lab::trial::TrialResult>, Result<()>);

/// Runs the harness; `None` for `--list`, else the results and whether any trial failed.
pub(crate) fn run_matrix(
    sh: &Shell,
    root: &Path,
    selection: Selection,
    options: &TestOptions,
) -> Result<Option<MatrixOutcome>> {
    let mut libtest: Vec<String> = Vec::new();
    if options.list {
        libtest.push("--list".into());
    }
    libtest.push(format!("--test-threads={}", options.jobs.max(1)));
    let _env = selection_env(sh, root, &selection);
    // A filter that selects nothing is an error before anything is built or run.
    let plan = run::plan_selected(root, &selection)?;
    let planned = plan.len();
    // Built apart from the run, so a compile error is reported as one, not as failed
    // trials.
    let harness = harness_executable(sh)?;
    if options.list {
        cmd!(sh, "{harness} {libtest...}").run()?;
        return Ok(None);
    }
    host::ensure(sh, host::LAB)?;
    prepare_host_runtimes(&plan)?;
    let bins = statics::build(sh, root)?;
    let mutant_echo = if selection.mutants {
        Some(statics::build_mutant_echo(sh, root)?)
    } else {
        None
    };
    let run_dir = match &options.run_dir {
        Some(d) => d.clone(),
        None => run::new_run_dir(root)?,
    };
    let accel = host::accelerator();
    eprintln!(
        "xtask: {} guest{} at once ({}), accelerator {} ({})",
        options.jobs.max(1),
        if options.jobs > 1 { "s" } else { "" },
        if options.jobs == default_jobs() {
            "one per core"
        } else {
            "--jobs"
        },
        accel.name(),
        vm::qemu::accel_reason(accel)
    );
    let _bins_env = (
        sh.push_env(lab::host_env::ECHO_BIN_VAR, &bins.echo),
        sh.push_env(lab::host_env::PROBE_BIN_VAR, &bins.probe),
        sh.push_env("SAL_RUN_DIR", &run_dir),
        mutant_echo.map(|p| sh.push_env("SAL_MUTANT_ECHO_BIN", p)),
    );
    let (exit, harness_interrupted) = run_harness(sh, &harness, &libtest)?;
    let harness_status = if exit.success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("the trial harness exited with {exit}"))
    };
    let results = lab::report::collect(&run_dir)?;
    if !results.is_empty() {
        // The harness writes them too; again here so a run the harness did not finish
        // (Ctrl-C, a crash) has them.
        lab::report::write_all(&run_dir, &results)?;
    }
    print_results(&results);
    let problems = if selection.mutants {
        mutation_score(root, &run_dir, &results)?
    } else {
        Vec::new()
    };
    println!(
        "reports: {}/{{results.json,junit.xml,summary.md,report.html}}",
        run_dir.display()
    );
    let status = if vm::cleanup::interrupted() || harness_interrupted {
        vm::cleanup::mark_interrupted();
        Err(anyhow::anyhow!("interrupted (Ctrl-C or SIGTERM)"))
    } else if results.len() != planned {
        Err(anyhow::anyhow!(
            "the harness recorded {} results for {planned} planned trials ({})",
            results.len(),
            if harness_status.is_err() {
                "it failed"
            } else {
                "it exited 0"
            }
        ))
    } else if selection.mutants {
        // A FAIL is a mutant caught only at a step that judges the claim; the score
        // decides.
        match problems.len() {
            0 => Ok(()),
            n => Err(anyhow::anyhow!(
                "{n} problems with the mutation score (above)"
            )),
        }
    } else {
        trials_status(harness_status, &results)
    };
    Ok(Some((results, status)))
}

/// The selection, handed to the harness in its environment: it selects with the same
/// rules (SAL_FILTERS, one per line, and SAL_EXACT), not with libtest's single
/// positional filter.
fn selection_env<'a>(
    sh: &'a Shell,
    root: &Path,
    selection: &Selection,
) -> Vec<xshell::PushEnv<'a>> {
    let paths: Vec<String> = selection
        .scenario_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    vec![
        sh.push_env("SAL_TARGETS", selection.targets.join(",")),
        sh.push_env("SAL_RUNTIMES", selection.runtimes.join(",")),
        sh.push_env("SAL_FILTERS", selection.filters.join("\n")),
        sh.push_env("SAL_EXACT", if selection.exact { "1" } else { "" }),
        sh.push_env("SAL_MUTANTS", if selection.mutants { "1" } else { "" }),
        sh.push_env(lab::workspace::WORKSPACE_VAR, root),
        sh.push_env("SAL_CONMON", selection.conmon.clone().unwrap_or_default()),
        sh.push_env("SAL_SCENARIO_PATHS", paths.join("\n")),
    ]
}

/// Runs the harness as this process's child and waits for it: its exit, and whether
/// Ctrl-C reached it.
fn run_harness(
    sh: &Shell,
    harness: &Path,
    libtest: &[String],
) -> Result<(std::process::ExitStatus, bool)> {
    // Ctrl-C reaches the harness too: it records the running trials as interrupted
    // FAILs and exits; this process stays to report what was recorded.
    vm::cleanup::defer_exit();
    // The harness runs as this process's child, not under `cargo test`: cargo dies at
    // once on Ctrl-C, and the harness it orphaned would record its interrupted trials
    // after this process had already collected the results.
    let mut child =
        std::process::Command::from(cmd!(sh, "{harness} --include-ignored {libtest...}"))
            .spawn()
            .map_err(|e| anyhow::anyhow!("running the trial harness {}: {e}", harness.display()))?;
    // `kill PID` of this process (not the group) reaches the harness through this.
    vm::cleanup::hand_interrupts_to(Some(child.id()));
    let exit = child.wait();
    vm::cleanup::hand_interrupts_to(None);
    let exit = exit
        .map_err(|e| anyhow::anyhow!("waiting for the trial harness {}: {e}", harness.display()))?;
    // The harness is gone: a Ctrl-C from here on (reports, a bisect's next build) is
    // this process's to handle.
    vm::cleanup::exit_on_interrupt();
    // Its 130 says Ctrl-C reached it even if this process's own handler thread has not
    // run yet.
    let interrupted = exit.code() == Some(130)
        || std::os::unix::process::ExitStatusExt::signal(&exit)
            .is_some_and(|s| s == nix::sys::signal::Signal::SIGINT as i32);
    Ok((exit, interrupted))
}

/// A line per trial, the detail and logs of each bad one, and the counts.
fn print_results(results: &[lab::trial::TrialResult]) {
    println!();
    for r in results {
        println!("{}", r.summary_line());
        if r.outcome.is_bad() {
            for line in r.detail.lines().skip(1) {
                println!("    {line}");
            }
            println!("    logs: {}", r.log_dir.display());
        }
    }
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    println!(
        "\n{} PASS, {} FAIL, {} XFAIL, {} XPASS, {} SKIP",
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Xfail),
        count(Outcome::Xpass),
        count(Outcome::Skip)
    );
}

/// Scores a mutant run, prints the table and writes `mutants.md`: the problems found.
fn mutation_score(
    root: &Path,
    run_dir: &Path,
    results: &[lab::trial::TrialResult],
) -> Result<Vec<String>> {
    let scenarios = lab::scenario::load_all(&root.join("tests/scenarios"))?;
    let mutants = lab::mutant::load_all(&lab::mutant::dir(root), &scenarios)?;
    let (table, problems) = lab::mutant::score_report(results, &scenarios, &mutants);
    let mut text = format!("# Mutation score\n\n{table}");
    if !problems.is_empty() {
        text += "\n";
        for p in &problems {
            text += &format!("- {p}\n");
        }
    }
    std::fs::write(run_dir.join("mutants.md"), &text)?;
    println!("\n{table}");
    for p in &problems {
        println!("mutants: {p}");
    }
    println!("mutation score: {}", run_dir.join("mutants.md").display());
    Ok(problems)
}

/// A run of trials is good when the harness exited 0 and no trial is bad; each other
/// combination is an error that says which.
fn trials_status(harness: Result<()>, results: &[lab::trial::TrialResult]) -> Result<()> {
    let bad = results.iter().filter(|r| r.outcome.is_bad()).count();
    match (harness, bad) {
        (Ok(()), 0) => Ok(()),
        (Err(_), n) if n > 0 => Err(anyhow::anyhow!("{n} trials failed (FAIL or XPASS)")),
        (Err(e), _) => Err(anyhow::anyhow!(
            "the harness failed although every trial's result is good: {e}"
        )),
        (Ok(()), n) => Err(anyhow::anyhow!(
            "the harness exited 0 although {n} trials failed (FAIL or XPASS)"
        )),
    }
}

/// The selection of one scenario (a catalogue name, or a scenario file or directory
/// anywhere) on one target with `runtimes`, and the scenario's name.
pub(crate) fn scenario_selection(
    scenario: &str,
    target: &str,
    runtimes: Vec<String>,
) -> Result<(Selection, String)> {
    let path = Path::new(scenario);
    if path.exists() {
        let path = std::fs::canonicalize(path)?;
        let loaded = lab::scenario::load_path(&path)?;
        let selection = Selection {
            targets: vec![target.to_string()],
            runtimes,
            scenario_paths: vec![path],
            ..Default::default()
        };
        Ok((selection, loaded.name))
    } else {
        let selection = Selection {
            filters: vec![format!("{scenario}::")],
            targets: vec![target.to_string()],
            runtimes,
            ..Default::default()
        };
        Ok((selection, scenario.to_string()))
    }
}

/// Runs one scenario across a runtime's versions from several Debian suites and reports
/// where its outcome changes.
pub fn bisect(
    sh: &Shell,
    root: &Path,
    scenario: &str,
    runtime: &str,
    suites: &[String],
    target: &str,
) -> Result<()> {
    let runtimes: Vec<String> = suites.iter().map(|s| format!("{runtime}@{s}")).collect();
    let (selection, scenario) = scenario_selection(scenario, target, runtimes)?;
    let scenario = scenario.as_str();
    let options = TestOptions {
        jobs: default_jobs(),
        ..Default::default()
    };
    let Some((mut results, _status)) = run_matrix(sh, root, selection, &options)? else {
        return Ok(());
    };
    results.retain(|r| r.scenario == scenario);
    results.sort_by(|a, b| {
        let v = |r: &lab::trial::TrialResult| lab::version::Version::parse(r.runtime_version());
        v(a).cmp(&v(b))
    });
    println!("\n{scenario} on {target} with {runtime}:\n");
    println!("| runtime | version | outcome | detail |\n|---|---|---|---|");
    for r in &results {
        let detail = r.detail.lines().next().unwrap_or_default();
        println!(
            "| {} | {} | {} | {detail} |",
            r.runtime,
            r.runtime_version(),
            r.outcome.label()
        );
    }
    let changes: Vec<String> = results
        .windows(2)
        .filter(|w| w[0].outcome != w[1].outcome)
        .map(|w| {
            format!(
                "{runtime} {} ({}) -> {runtime} {} ({})",
                w[0].runtime_version(),
                w[0].outcome.label(),
                w[1].runtime_version(),
                w[1].outcome.label()
            )
        })
        .collect();
    if changes.is_empty() {
        println!("\nthe outcome is the same for every version tried");
    } else {
        println!("\nthe outcome changes between:");
        for c in changes {
            println!("  {c}");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    pub list: bool,
    pub jobs: usize,
    /// The run directory to write into (a bisect's steps share one); a new one if `None`.
    pub run_dir: Option<std::path::PathBuf>,
}

/// The runtimes with their host paths (`path:FILE`, `git:DIR`) made absolute against
/// the directory the command was started in: the harness runs elsewhere.
pub fn absolute_runtimes(runtimes: &[String], cwd: &Path) -> Result<Vec<String>> {
    runtimes
        .iter()
        .map(|r| Ok(r.parse::<RuntimeSpec>()?.absolute(cwd).to_string()))
        .collect()
}

/// `--conmon SPEC` with its host path made absolute, as given (without `conmon@`).
pub fn absolute_conmon(conmon: Option<String>, cwd: &Path) -> Result<Option<String>> {
    conmon
        .map(|c| {
            let spec = RuntimeSpec::conmon(&c)?.absolute(cwd).to_string();
            Ok(spec.trim_start_matches("conmon@").to_string())
        })
        .transpose()
}

/// Runtimes given as host binaries are checked, and those given as checkouts built for
/// the suite of each Debian target the plan takes them to, before any trial: a bad path
/// or a failed build is one error that names it, not a FAIL per trial. The trials then
/// find the build cached.
fn prepare_host_runtimes(plan: &[run::Trial]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for t in plan {
        let conmon = t.conmon.as_deref().map(RuntimeSpec::conmon).transpose()?;
        for spec in std::iter::once(t.runtime.parse::<RuntimeSpec>()?).chain(conmon) {
            match (&spec.origin, &t.target.source) {
                (Origin::Path(p), _) if seen.insert((spec.clone(), None)) => {
                    let b = lab::runtimes::local::inspect(p)
                        .with_context(|| format!("runtime {spec}"))?;
                    eprintln!("xtask: runtime {spec}: {}", b.provenance);
                }
                (Origin::Git { .. }, vm::target::ImageSource::Debian { suite, mirror, .. })
                    if seen.insert((spec.clone(), Some(suite.clone()))) =>
                {
                    let built =
                        lab::runtimes::build::ensure_for(&spec, suite, mirror, events().machine())?;
                    report_build(&spec, &built, suite);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// What a build from a checkout made, and with what: one line, and the uncommitted
/// changes it was built with.
fn report_build(spec: &RuntimeSpec, built: &lab::runtimes::build::Built, suite: &str) {
    let source = &built.source;
    if source.diff.is_some() {
        eprintln!(
            "xtask: {spec}: {} is dirty: built HEAD with its uncommitted changes (the trials keep them as source-{}.diff){}",
            source.dir.display(),
            spec.name,
            if source.untracked.is_empty() {
                String::new()
            } else {
                format!(
                    "; untracked files are not included: {}",
                    source.untracked.join(", ")
                )
            }
        );
    }
    eprintln!(
        "xtask: {spec}: {} for {suite}: {}{}",
        source.describe_line(),
        built.binary.display(),
        if built.cached { " (cached)" } else { "" }
    );
}

pub fn build(sh: &Shell, root: &Path, target: &str) -> Result<()> {
    host::ensure(sh, host::LAB)?;
    let target = vm::target::find(&root.join("vm"), target)?;
    let bins = statics::build(sh, root)?;
    let ready = vm::ready::ensure_ready(&target, &bins, events().machine())?;
    println!("{} ready in {}", target.name, ready.dir.display());
    for (k, v) in &ready.versions {
        println!("  {k}: {v}");
    }
    Ok(())
}

pub fn ls() -> Result<()> {
    let entries = vm::cache::entries()?;
    if entries.is_empty() {
        println!("nothing cached in {}", vm::cache::root().display());
    }
    for (path, size, ok) in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{:>9.1} MiB  {name}{}",
            size as f64 / 1048576.0,
            if ok {
                ""
            } else {
                "  (incomplete: will be rebuilt)"
            }
        );
    }
    Ok(())
}

pub fn clean() -> Result<()> {
    let root = vm::cache::root();
    if root.exists() {
        let size = vm::cache::dir_size(&root);
        std::fs::remove_dir_all(&root)?;
        println!(
            "removed {} ({:.1} MiB)",
            root.display(),
            size as f64 / 1048576.0
        );
    }
    Ok(())
}

pub fn prune(dry_run: bool) -> Result<()> {
    let images = vm::cache::root().join("images");
    let plan = vm::prune::plan(&images)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let newest = plan
        .kept
        .iter()
        .filter(|(_, why)| *why == vm::prune::Kept::Newest)
        .count();
    println!("keep    {newest} entries, each the one used last in its family");
    for (path, why) in &plan.kept {
        let why = match why {
            vm::prune::Kept::Newest => continue,
            vm::prune::Kept::BackingOf(by) => format!("{by}'s disk is an overlay on it"),
            vm::prune::Kept::InUse => "a run is checking or building it".to_string(),
        };
        println!("keep    {}  ({why})", name_of(path));
    }
    for s in &plan.superseded {
        println!(
            "{}  {}  {:.2} GiB  (superseded by {})",
            if dry_run { "would remove" } else { "remove" },
            name_of(&s.path),
            gib(s.bytes),
            s.by
        );
    }
    for path in &plan.leftovers {
        println!(
            "{}  {}  (a lock without its entry, or a build that did not finish)",
            if dry_run { "would remove" } else { "remove" },
            name_of(path)
        );
    }
    if dry_run {
        println!(
            "{} superseded entries, {:.1} GiB; nothing removed (--dry-run)",
            plan.superseded.len(),
            gib(plan.superseded_bytes())
        );
        return Ok(());
    }
    let (freed, skipped) = vm::prune::apply(&plan)?;
    for path in &skipped {
        println!("kept    {}  (a run took it meanwhile)", name_of(path));
    }
    println!("freed {:.1} GiB in {}", gib(freed), images.display());
    Ok(())
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A shell in a fresh guest restored from the ready state; the guest is gone afterwards.
pub fn ssh(sh: &Shell, root: &Path, target: &str, command: &[String]) -> Result<()> {
    host::ensure(sh, host::LAB)?;
    let target = vm::target::find(&root.join("vm"), target)?;
    let bins = statics::build(sh, root)?;
    let ready = vm::ready::ensure_ready(&target, &bins, events().machine())?;
    let dir = tempfile::Builder::new()
        .prefix("vm-ssh-")
        .tempdir_in(statics::target_dir(sh, root)?)?;
    let vm = TrialVm::start(&ready, dir.path(), events().machine())?;
    let args = vm.guest.ssh_args();
    // xshell runs commands with a null stdin; an interactive shell (or a piped file)
    // needs ours, so the xshell command is spawned with inherited stdio.
    let status = if command.is_empty() {
        eprintln!(
            "guest {} on 127.0.0.1:{}; exit the shell to stop it",
            target.name,
            vm.guest.port()
        );
        std::process::Command::from(cmd!(sh, "ssh -t {args...} root@127.0.0.1")).status()?
    } else {
        let script = command.join(" ");
        std::process::Command::from(cmd!(sh, "ssh {args...} root@127.0.0.1 -- {script}"))
            .status()?
    };
    if !status.success() {
        eprintln!("ssh exited with {status}");
    }
    Ok(())
}

/// `{"include":[{"target":..,"runtime":..},..]}` for a GitHub Actions `strategy.matrix`,
/// from `vm/*.toml` and the runtime axis.
pub fn matrix(root: &Path, targets: &[String], runtimes: &[String]) -> Result<String> {
    let all = vm::target::load_all(&root.join("vm"))?;
    for t in targets {
        if !all.iter().any(|a| &a.name == t) {
            bail!("no target {t:?} in vm/");
        }
    }
    let mut include = Vec::new();
    for target in all
        .iter()
        .filter(|t| targets.is_empty() || targets.contains(&t.name))
    {
        let axis = if runtimes.is_empty() {
            target.runtimes.clone()
        } else {
            runtimes.to_vec()
        };
        for r in axis {
            let spec: lab::runtimes::RuntimeSpec = r.parse()?;
            if spec.refusal(target).is_some() {
                continue;
            }
            include.push(serde_json::json!({ "target": target.name, "runtime": r }));
        }
    }
    if include.is_empty() {
        bail!(
            "no target in vm/ can run {} (a Debian suite needs a Debian target, a version a Fedora one)",
            runtimes.join(", ")
        );
    }
    Ok(serde_json::json!({ "include": include }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    fn jobs(targets: &[&str], runtimes: &[&str]) -> Result<Vec<(String, String)>> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let json: serde_json::Value =
            serde_json::from_str(&matrix(root(), &s(targets), &s(runtimes))?)?;
        Ok(json["include"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["target"].as_str().unwrap().to_string(),
                    j["runtime"].as_str().unwrap().to_string(),
                )
            })
            .collect())
    }

    #[test]
    fn suites_go_to_debian_targets_and_versions_to_fedora_ones() {
        vm::config::use_test_defaults();
        let j = jobs(&[], &["runc@bookworm", "crun@1.24"]).unwrap();
        assert!(
            j.contains(&("debian-13".into(), "runc@bookworm".into())),
            "{j:?}"
        );
        assert!(
            j.contains(&("fedora-43".into(), "crun@1.24".into())),
            "{j:?}"
        );
        assert!(
            !j.iter()
                .any(|(t, r)| t.starts_with("fedora") && r == "runc@bookworm"),
            "{j:?}"
        );
        assert!(
            !j.iter()
                .any(|(t, r)| t.starts_with("debian") && r == "crun@1.24"),
            "{j:?}"
        );
    }

    #[test]
    fn an_empty_matrix_is_an_error() {
        vm::config::use_test_defaults();
        let e = jobs(&["debian-13"], &["crun@1.24"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no target in vm/ can run crun@1.24"), "{e}");
        let e = jobs(&["nope"], &[]).unwrap_err().to_string();
        assert!(e.contains("no target \"nope\""), "{e}");
    }
}
