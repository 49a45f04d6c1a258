//! `cargo xtask bisect SCENARIO --runtime NAME --git DIR --old REV --new REV`: `git
//! bisect` over a runtime's commits in a clone of its own (the user's checkout is only
//! read), each tested commit built in the target suite's build root and judged by one
//! trial, as `git bisect run` would with the verdict as the oracle. The ends are tested
//! first and must show the outcomes the user named.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lab::bisect::{Claim, Mark, Step, Tested};
use lab::runtimes::RuntimeSpec;
use lab::runtimes::build;
use lab::trial::TrialResult;
use xshell::{Shell, cmd};

use crate::host;
use crate::lab::{TestOptions, events, run_matrix, scenario_selection};

pub struct Commits {
    pub scenario: String,
    pub runtime: String,
    pub git: PathBuf,
    pub old: String,
    pub new: String,
    pub old_outcome: Claim,
    pub target: String,
}

/// One commit tested: its row, and its trial's result if it built, else the build's
/// error (which ends with the log's last lines and names the log).
struct Tried {
    row: Tested,
    result: std::result::Result<TrialResult, String>,
}

struct Bisector<'a> {
    sh: &'a Shell,
    root: &'a Path,
    args: &'a Commits,
    suite: String,
    mirror: String,
    run_dir: PathBuf,
    tried: Vec<Tried>,
}

impl Bisector<'_> {
    /// Builds and tests `commit` (once: a commit tried before is not tried again).
    fn test(&mut self, commit: &str) -> Result<usize> {
        if let Some(i) = self.tried.iter().position(|t| t.row.commit == commit) {
            return Ok(i);
        }
        if vm::cleanup::interrupted() {
            bail!("interrupted (Ctrl-C or SIGTERM)");
        }
        let source = build::resolve(&self.args.git, Some(commit))?;
        let spec = RuntimeSpec {
            name: self.args.runtime.clone(),
            origin: lab::runtimes::Origin::Git {
                dir: self.args.git.clone(),
                rev: Some(source.commit.clone()),
            },
        };
        let row = |mark: Mark, verdict: &str, line: String| Tested {
            commit: source.commit.clone(),
            describe: source.describe.clone(),
            subject: source.subject.clone(),
            date: source.date.clone(),
            mark,
            verdict: verdict.to_string(),
            line,
        };
        let tried = match build::ensure_for(&spec, &self.suite, &self.mirror, events().machine()) {
            Err(e) => {
                if vm::cleanup::interrupted() {
                    return Err(e);
                }
                let text = format!("{e:#}");
                let first = text.lines().next().unwrap_or_default().trim().to_string();
                Tried {
                    row: row(Mark::Skip("does not build".into()), "no build", first),
                    result: Err(text),
                }
            }
            Ok(_) => {
                let (selection, name) = scenario_selection(
                    &self.args.scenario,
                    &self.args.target,
                    vec![spec.to_string()],
                )?;
                // The default count, though it is one trial: under TCG the guests at
                // once size the ready state, and another count would build another.
                let options = TestOptions {
                    jobs: crate::lab::default_jobs(),
                    run_dir: Some(self.run_dir.clone()),
                    ..Default::default()
                };
                let (results, status) = run_matrix(self.sh, self.root, selection, &options)?
                    .context("the harness listed instead of running")?;
                if vm::cleanup::interrupted() {
                    return Err(status
                        .err()
                        .unwrap_or_else(|| anyhow::anyhow!("interrupted")));
                }
                let result = results
                    .into_iter()
                    .find(|r| r.scenario == name && r.runtime == spec.to_string())
                    .with_context(|| {
                        format!("the trial of {name} with {spec} recorded no result")
                    })?;
                let mark = lab::bisect::mark(&result, self.args.old_outcome);
                Tried {
                    row: row(
                        mark,
                        result.outcome.label(),
                        lab::bisect::deciding_line(&result),
                    ),
                    result: Ok(result),
                }
            }
        };
        eprintln!(
            "bisect: {} {} ({}): {} -> {}",
            build::short(&tried.row.commit),
            tried.row.describe,
            tried.row.subject,
            tried.row.verdict,
            tried.row.mark.label()
        );
        self.tried.push(tried);
        Ok(self.tried.len() - 1)
    }

    /// Refuses an end that does not show the outcome it must, with its evidence.
    fn check_end(&self, i: usize, which: &str, rev: &str, want: Mark) -> Result<()> {
        let t = &self.tried[i];
        if t.row.mark == want {
            return Ok(());
        }
        let expected = match want {
            Mark::Old => self.args.old_outcome,
            _ => other(self.args.old_outcome),
        };
        let (detail, logs) = match &t.result {
            Ok(r) => (r.detail.clone(), format!("\nlogs: {}", r.log_dir.display())),
            Err(build_error) => (build_error.clone(), String::new()),
        };
        bail!(
            "the {which} end {rev} ({} {}) does not give the {which} outcome ({expected}): it was {}{}\n{}{logs}\nnothing was bisected",
            build::short(&t.row.commit),
            t.row.describe,
            t.row.verdict,
            match &t.row.mark {
                Mark::Skip(why) => format!(", which says nothing of the claim ({why})"),
                _ => String::new(),
            },
            detail.trim()
        );
    }
}

fn other(c: Claim) -> Claim {
    match c {
        Claim::Holds => Claim::Fails,
        Claim::Fails => Claim::Holds,
    }
}

pub fn commits(sh: &Shell, root: &Path, args: &Commits) -> Result<()> {
    let target = vm::target::find(&root.join("vm"), &args.target)?;
    let vm::target::ImageSource::Debian { suite, mirror, .. } = &target.source else {
        bail!(
            "bisecting commits builds them in a Debian build root of the target's suite; {} is not a Debian target",
            target.name
        );
    };
    if !lab::runtimes::RUNTIMES.contains(&args.runtime.as_str()) {
        bail!(
            "--runtime {:?}: bisect by commit takes runc or crun (a conmon revision can be tried with `cargo xtask test --conmon git:DIR#REV`)",
            args.runtime
        );
    }
    let (old, new) = ends(sh, args)?;
    host::ensure(sh, host::LAB)?;
    let run_dir = lab::run::new_run_dir(root)?;
    let mut b = Bisector {
        sh,
        root,
        args,
        suite: suite.clone(),
        mirror: mirror.clone(),
        run_dir: run_dir.clone(),
        tried: Vec::new(),
    };
    let started = std::time::Instant::now();
    eprintln!(
        "bisect: {} on {} with {} from {}: the old end {} ({}) must {}, the new end {} ({}) must {}",
        args.scenario,
        args.target,
        args.runtime,
        old.dir.display(),
        args.old,
        build::short(&old.commit),
        args.old_outcome,
        args.new,
        build::short(&new.commit),
        other(args.old_outcome)
    );
    let i = b.test(&old.commit)?;
    b.check_end(i, "old", &args.old, Mark::Old)?;
    let i = b.test(&new.commit)?;
    b.check_end(i, "new", &args.new, Mark::New)?;
    let outcome = git_bisect(&mut b, &old, &new)?;
    report(&mut b, &old, &new, outcome, started)
}

/// The two ends, resolved in the checkout: different commits, the old an ancestor of the
/// new.
fn ends(sh: &Shell, args: &Commits) -> Result<(build::Source, build::Source)> {
    let old = build::resolve(&args.git, Some(&args.old)).context("--old")?;
    let new = build::resolve(&args.git, Some(&args.new)).context("--new")?;
    if old.commit == new.commit {
        bail!(
            "--old {} and --new {} are the same commit {}",
            args.old,
            args.new,
            old.commit
        );
    }
    let git = &old.dir;
    let (old_commit, new_commit) = (&old.commit, &new.commit);
    let ancestor = cmd!(
        sh,
        "git -c safe.directory=* -C {git} merge-base --is-ancestor {old_commit} {new_commit}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if !ancestor.status.success() {
        bail!(
            "--old {} ({}) is not an ancestor of --new {} ({}): git bisect needs the old end before the new one",
            args.old,
            build::short(&old.commit),
            args.new,
            build::short(&new.commit)
        );
    }
    Ok((old, new))
}

/// `git bisect` between the ends, in a clone of its own (the user's checkout is only
/// read), a build and a trial per commit it asks for: where it ended.
fn git_bisect(b: &mut Bisector, old: &build::Source, new: &build::Source) -> Result<Step> {
    let (sh, git) = (b.sh, &old.dir);
    let work = tempfile::Builder::new()
        .prefix("bisect-")
        .tempdir_in(&b.run_dir)?;
    vm::cleanup::register(work.path());
    let clone = work.path().join("repo");
    cmd!(
        sh,
        "git -c safe.directory=* clone --quiet --no-checkout {git} {clone}"
    )
    .quiet()
    .run()?;
    let g = |args: &[&str]| -> Result<String> {
        let out = cmd!(sh, "git -C {clone} {args...}")
            .quiet()
            .ignore_status()
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("git {}: {}", args.join(" "), text.trim());
        }
        Ok(text)
    };
    g(&[
        "bisect",
        "start",
        "--term-new=new",
        "--term-old=old",
        "--no-checkout",
        &new.commit,
        &old.commit,
    ])?;
    let outcome = loop {
        let head = g(&["rev-parse", "BISECT_HEAD"])?.trim().to_string();
        let i = b.test(&head)?;
        let word = b.tried[i].row.mark.git_word();
        match lab::bisect::parse_step(&g(&["bisect", word, &head])?) {
            Step::Next => continue,
            done => break done,
        }
    };
    vm::cleanup::unregister(work.path());
    Ok(outcome)
}

/// Prints and writes (`bisect.md`, the run's reports) the table of tried commits and the
/// first new commit; an error when the bisect could not name one.
fn report(
    b: &mut Bisector,
    old: &build::Source,
    new: &build::Source,
    outcome: Step,
    started: std::time::Instant,
) -> Result<()> {
    let (args, git, run_dir) = (b.args, &old.dir, b.run_dir.clone());
    let table = lab::bisect::table(&b.tried.iter().map(|t| t.row.clone()).collect::<Vec<_>>());
    println!(
        "\n{} on {} with {}, commits of {}:\n\n{table}",
        args.scenario,
        args.target,
        args.runtime,
        git.display()
    );
    let mut md = format!(
        "# Bisect: {} on {} with {}\n\nold end {} ({}), new end {} ({}); the old outcome: {}\n\n{table}\n",
        args.scenario,
        args.target,
        args.runtime,
        args.old,
        build::short(&old.commit),
        args.new,
        build::short(&new.commit),
        args.old_outcome
    );
    let found = match outcome {
        Step::Found(commit) => {
            let first = build::resolve(git, Some(&commit))?;
            let parent = build::resolve(git, Some(&format!("{commit}^")))?;
            let pi = b.test(&parent.commit)?;
            let fi = b.test(&first.commit)?;
            let text = format!(
                "the first commit with the new outcome: {} {}\n  date: {}\n  describe: {}\n  its trial: {} {}\n  its parent {} ({}): {} {}\n",
                first.commit,
                first.subject,
                first.date,
                first.describe,
                b.tried[fi].row.verdict,
                b.tried[fi].row.line,
                build::short(&parent.commit),
                parent.describe,
                b.tried[pi].row.verdict,
                b.tried[pi].row.line,
            );
            Some(text)
        }
        Step::OnlySkipped(candidates) => {
            let text = format!(
                "only commits that could not be tested are left; the first new commit is one of: {}\n",
                candidates.join(", ")
            );
            println!("{text}");
            md += &text;
            None
        }
        Step::Next => unreachable!("the loop ends on Found or OnlySkipped"),
    };
    if let Some(text) = &found {
        println!("{text}");
        md += &format!("\n{text}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{} commits tested in {elapsed:.0} s", b.tried.len());
    md += &format!("\n{} commits tested in {elapsed:.0} s\n", b.tried.len());
    std::fs::write(run_dir.join("bisect.md"), md)?;
    let results = lab::report::collect(&run_dir)?;
    lab::report::write_all(&run_dir, &results)?;
    println!(
        "reports: {}/{{bisect.md,report.html,results.json}}",
        run_dir.display()
    );
    if found.is_none() {
        bail!("the bisect could not name one commit (untestable commits in the way)");
    }
    Ok(())
}
