//! cargo xtask: the project's automation, as ordinary Rust. Every shell-out goes through
//! xshell.

mod apt;
mod bench;
mod bisect;
mod host;
mod image;
mod lab;
mod layout;
mod process;
mod statics;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use xshell::{Shell, cmd};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "socket-activation-lab automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run lab trials (scenario x target x runtime) on real guests.
    Test {
        /// Only trials whose name (scenario::target::runtime) contains one of these.
        filters: Vec<String>,
        /// Targets (vm/NAME.toml); default debian-13.
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Runtimes; default every runtime of the target. NAME is runc or crun: the
        /// target's own; NAME@SUITE a Debian suite's package; NAME@VERSION a Fedora
        /// version; NAME@path:FILE a binary on this host; NAME@git:DIR#REV a revision of a
        /// git checkout, built in a build root of the target's suite (without #REV: HEAD
        /// with the uncommitted changes).
        #[arg(long = "runtime", value_name = "NAME")]
        runtimes: Vec<String>,
        /// List the trials instead of running them.
        #[arg(long)]
        list: bool,
        /// Filters match whole trial names.
        #[arg(long)]
        exact: bool,
        /// Trials at once, each a guest (default: one per core; measured on 2 cores under
        /// TCG, 24 trials: 118 s with 1, 72-91 s with 2, 85-94 s with 3). Under TCG a guest
        /// gets its share of the cores as vCPUs (at most the target's), and a count with
        /// another share makes a ready state of its own.
        #[arg(long)]
        jobs: Option<usize>,
        /// Run the mutants (tests/mutants/) against the scenarios each names and print
        /// the mutation score: which scenario caught which mutant.
        #[arg(long)]
        mutants: bool,
        /// A conmon in place of the guest's in every trial: path:FILE (a binary on this
        /// host) or git:DIR#REV (a revision of a checkout, built in the target suite's
        /// build root).
        #[arg(long, value_name = "path:FILE|git:DIR#REV")]
        conmon: Option<String>,
    },
    /// Run a scenario directory (a bug report's own unit files and a scenario.toml) or
    /// file from anywhere, with the same reports as `test`.
    Repro {
        /// Scenario directories (or files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Targets (vm/NAME.toml); default debian-13.
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Runtimes, also NAME@SUITE, NAME@VERSION, NAME@path:FILE and NAME@git:DIR#REV;
        /// default every runtime of the target.
        #[arg(long = "runtime", value_name = "NAME")]
        runtimes: Vec<String>,
        /// Trials at once (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// A conmon in place of the guest's: path:FILE or git:DIR#REV (as for `test`).
        #[arg(long, value_name = "path:FILE|git:DIR#REV")]
        conmon: Option<String>,
    },
    /// Write a run directory's reports again (results.json, junit.xml, summary.md,
    /// report.html) from its trials' result.json files.
    Report {
        /// The run directory (target/lab/run-...).
        run_dir: PathBuf,
    },
    /// Guest images: build, list, remove, or open a shell in a fresh guest.
    Vm {
        #[command(subcommand)]
        what: VmWhat,
    },
    /// What CI runs: fmt check, clippy -D warnings, the tests, the static build, a VM
    /// smoke run.
    Ci {
        /// Skip the VM trials (for the lint-and-unit job).
        #[arg(long)]
        no_vm: bool,
    },
    /// Install the host packages the lab needs, as one set that removes and downgrades
    /// nothing (planned and simulated with apt first).
    Host {
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Also the workflow linters (actionlint, zizmor) in a venv under the cache.
        #[arg(long)]
        linters: bool,
    },
    /// Check that no crate has an import cycle between its modules.
    Layout,
    /// What this host can do for the lab: root, accelerator, host tools, static target,
    /// cache and free disk. Changes nothing.
    Doctor,
    /// The GitHub Actions job matrix as JSON: one job per (target, runtime).
    Matrix {
        /// Only these targets (default: every file in vm/).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Only these runtimes (default: each target's own).
        #[arg(long = "runtime", value_name = "NAME")]
        runtimes: Vec<String>,
    },
    /// One scenario across a runtime's versions (--suites), or across the commits of
    /// its git checkout (--git, --old, --new): where does the outcome change?
    Bisect {
        /// A scenario of the catalogue, or a scenario file or directory anywhere.
        scenario: String,
        /// runc or crun.
        #[arg(long)]
        runtime: String,
        /// Debian suites (Debian targets) or package versions (Fedora targets, installed
        /// with dnf), comma-separated: each is tried as RUNTIME@VALUE.
        #[arg(
            long,
            alias = "versions",
            value_delimiter = ',',
            default_value = "bullseye,bookworm,trixie,sid"
        )]
        suites: Vec<String>,
        #[arg(long, default_value = "debian-13")]
        target: String,
        /// Bisect the commits of this git checkout of the runtime instead of versions:
        /// each tested commit is built in the target suite's build root and its trial's
        /// verdict is the oracle (a commit that does not build is skipped).
        #[arg(long, value_name = "DIR", requires_all = ["old", "new"])]
        git: Option<PathBuf>,
        /// The old end (a revision that shows the old outcome).
        #[arg(long, value_name = "REV", requires = "git")]
        old: Option<String>,
        /// The new end (a revision that shows the other outcome).
        #[arg(long, value_name = "REV", requires = "git")]
        new: Option<String>,
        /// The old end's outcome: pass (hunting the commit that broke the scenario) or
        /// fail (hunting the commit that fixed it).
        #[arg(long, value_name = "pass|fail", default_value = "pass")]
        old_outcome: ::lab::bisect::Claim,
    },
    /// Benchmarks, side by side with references, reported as ratios.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// The echo image as an OCI archive (FROM scratch, static binaries, USER 65534:65534).
    Image {
        /// The reference name recorded in the archive.
        #[arg(long, default_value = "socket-activate-echo:latest")]
        tag: String,
    },
    /// Build socket-activate-echo and echo-probe statically linked and print their paths.
    BuildStatic,
}

#[derive(Subcommand)]
enum VmWhat {
    /// Build (or reuse) the target's image and ready state.
    Build { target: String },
    /// Download, verify and provision a Fedora target (needs internet), then its ready state.
    Fetch { target: String },
    /// Show what is cached, with sizes.
    Ls,
    /// Remove every cached image.
    Clean,
    /// Open a shell in a fresh guest of the target (for debugging), or run COMMAND in it.
    Ssh {
        target: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// socket-activate-echo against a blocking std echo and socat, over TCP loopback.
    Echo {
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 16384)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        connections: Vec<usize>,
    },
    /// Article 003's performance column: echo round trips from a client namespace to the
    /// echo server behind each rootless inbound method (socket activation, host, pasta,
    /// slirp4netns with each port handler), as ratios to the server run directly on the
    /// guest.
    Methods {
        #[arg(long, default_value = "debian-13")]
        target: String,
        /// The target's own runc or crun.
        #[arg(long, default_value = "crun")]
        runtime: String,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 16384)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

/// The checkout `cargo xtask` runs in, found from the current directory (cargo leaves
/// it where the user typed the command): a path compiled in would be the checkout the
/// binary was built in.
fn project_root() -> Result<PathBuf> {
    ::lab::workspace::find_root(&std::env::current_dir()?)
}

/// `cargo xtask` is `cargo run`, which sets xtask's own package variables. Handed on to
/// the cargo commands xtask runs, `CARGO_MANIFEST_DIR` made ring's build script (which
/// reruns when it changes) run again, and with it a rebuild of ring, rustls, ureq, vm and
/// lab: about 20 s on every `cargo xtask test`, and again on the next `cargo xtask`.
/// Removed from the process environment (xshell can set a variable for its commands but
/// not unset one), so it must run before any thread starts.
fn forget_cargo_run_env() {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if is_cargo_run_variable(name) {
            // SAFETY: called first thing in `main`, while xtask has one thread.
            unsafe { std::env::remove_var(name) };
        }
    }
}

fn is_cargo_run_variable(name: &str) -> bool {
    matches!(
        name,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
    ) || name.starts_with("CARGO_PKG_")
}

fn main() -> std::process::ExitCode {
    forget_cargo_run_env();
    ::lab::host_env::init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of contexts says what failed; a backtrace of xtask would not.
            eprintln!("error: {e:#}");
            if ::vm::cleanup::interrupted() {
                std::process::ExitCode::from(130)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let sh = Shell::new()?;
    // Paths on the command line are the user's, relative to where they started it.
    let cwd = std::env::current_dir()?;
    // `host` installs host packages and needs no checkout (it runs in a bare root in
    // host_install.rs); everything else reads the checkout.
    let root = match (&cli.command, project_root()) {
        (Command::Host { .. }, Err(_)) => cwd.clone(),
        (_, root) => root?,
    };
    sh.change_dir(&root);
    match cli.command {
        Command::Test {
            filters,
            targets,
            runtimes,
            list,
            exact,
            jobs,
            mutants,
            conmon,
        } => lab::test(
            &sh,
            &root,
            ::lab::run::Selection {
                filters,
                exact,
                targets,
                runtimes: lab::absolute_runtimes(&runtimes, &cwd)?,
                mutants,
                scenario_paths: Vec::new(),
                conmon: lab::absolute_conmon(conmon, &cwd)?,
            },
            &lab::TestOptions {
                list,
                jobs: jobs.unwrap_or_else(lab::default_jobs),
                run_dir: None,
            },
        ),
        Command::Repro {
            paths,
            targets,
            runtimes,
            jobs,
            conmon,
        } => {
            let paths = paths
                .iter()
                .map(|p| {
                    std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            lab::test(
                &sh,
                &root,
                ::lab::run::Selection {
                    targets,
                    runtimes: lab::absolute_runtimes(&runtimes, &cwd)?,
                    scenario_paths: paths,
                    conmon: lab::absolute_conmon(conmon, &cwd)?,
                    ..Default::default()
                },
                &lab::TestOptions {
                    jobs: jobs.unwrap_or_else(lab::default_jobs),
                    ..Default::default()
                },
            )
        }
        Command::Report { run_dir } => {
            let results = ::lab::report::collect(&run_dir)?;
            if results.is_empty() {
                anyhow::bail!("{}: no trial result.json in it", run_dir.display());
            }
            ::lab::report::write_all(&run_dir, &results)?;
            println!("{}", run_dir.join("report.html").display());
            Ok(())
        }
        Command::Matrix { targets, runtimes } => {
            println!("{}", lab::matrix(&root, &targets, &runtimes)?);
            Ok(())
        }
        Command::Bisect {
            scenario,
            runtime,
            git: Some(git),
            old: Some(old),
            new: Some(new),
            old_outcome,
            target,
            ..
        } => bisect::commits(
            &sh,
            &root,
            &bisect::Commits {
                scenario,
                runtime,
                git: cwd.join(git),
                old,
                new,
                old_outcome,
                target,
            },
        ),
        Command::Bisect {
            scenario,
            runtime,
            suites,
            target,
            ..
        } => lab::bisect(&sh, &root, &scenario, &runtime, &suites, &target),
        Command::Vm { what } => match what {
            VmWhat::Build { target } | VmWhat::Fetch { target } => lab::build(&sh, &root, &target),
            VmWhat::Ls => lab::ls(),
            VmWhat::Clean => lab::clean(),
            VmWhat::Ssh { target, command } => lab::ssh(&sh, &root, &target, &command),
        },
        Command::Ci { no_vm } => ci(&sh, &root, no_vm),
        Command::Doctor => host::doctor(&sh, &root),
        Command::Layout => layout::check(&root),
        Command::Host { dry_run, linters } => host::host(&sh, dry_run, linters),
        Command::Bench {
            what:
                BenchWhat::Echo {
                    seconds,
                    size,
                    rounds,
                    connections,
                },
        } => bench::echo(
            &sh,
            &root,
            &bench::EchoBenchOptions {
                seconds,
                size,
                rounds: rounds.max(1),
                connections,
            },
        ),
        Command::Bench {
            what:
                BenchWhat::Methods {
                    target,
                    runtime,
                    seconds,
                    size,
                    connections,
                    rounds,
                },
        } => bench::methods(
            &sh,
            &root,
            &target,
            &runtime,
            &::lab::netbench::Options {
                seconds,
                size,
                connections: connections.max(1),
                rounds: rounds.max(1),
            },
        ),
        Command::Image { tag } => {
            let bins = statics::build(&sh, &root)?;
            let archive = image::build(&sh, &root, &bins, &tag)?;
            println!("{}", archive.display());
            Ok(())
        }
        Command::BuildStatic => {
            let bins = statics::build(&sh, &root)?;
            println!("{}\n{}", bins.echo.display(), bins.probe.display());
            Ok(())
        }
    }
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// The run directories under `target/lab/` with reports written since `since`.
fn run_dirs_since(root: &Path, since: std::time::SystemTime) -> Result<Vec<PathBuf>> {
    let lab = root.join("target/lab");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&lab)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p.join("results.json"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .collect();
    anyhow::ensure!(
        !dirs.is_empty(),
        "no run directory with new results in {}",
        lab.display()
    );
    Ok(dirs)
}

/// Runs a CI step's trials, a guest per core as a user's run (the guests' vCPUs follow
/// the guests at once, so another count would build another ready state). A step meant
/// to run trials fails when none ran or every one was a SKIP.
fn run_ci_trials(
    sh: &Shell,
    root: &Path,
    selection: ::lab::run::Selection,
    what: &str,
) -> Result<()> {
    let options = lab::TestOptions {
        jobs: lab::default_jobs(),
        ..Default::default()
    };
    let Some((results, status)) = lab::run_matrix(sh, root, selection, &options)? else {
        anyhow::bail!("{what}: no trial ran");
    };
    status?;
    if results
        .iter()
        .all(|r| r.outcome == ::lab::trial::Outcome::Skip)
    {
        anyhow::bail!(
            "{what}: every one of the {} trials was a SKIP, so the step proved nothing",
            results.len()
        );
    }
    Ok(())
}

fn ci(sh: &Shell, root: &Path, no_vm: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let started_at = std::time::SystemTime::now();
    host::ensure(sh, &host::all_tools())?;
    step("cargo fmt --check");
    cmd!(sh, "cargo fmt --all --check").run()?;
    step("cargo clippy -D warnings");
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --locked -- -D warnings"
    )
    .run()?;
    step("no import cycle between the modules of any crate");
    layout::check(root)?;
    step("cargo test");
    cmd!(sh, "cargo test --workspace --locked").run()?;
    step("static build");
    let bins = statics::build(sh, root)?;
    step("workflow lint: actionlint and zizmor");
    let linters = host::ensure_linters(sh)?;
    let (actionlint, zizmor) = (linters.join("actionlint"), linters.join("zizmor"));
    cmd!(sh, "{actionlint}").run()?;
    cmd!(sh, "{zizmor} --offline .github/workflows").run()?;
    if no_vm {
        eprintln!(
            "\nci: all steps but the VM trials passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    step(
        "the host step on a clean Debian 12 root with backported qemu-utils (mmdebstrap + chroot)",
    );
    cmd!(
        sh,
        "cargo test --locked -p xtask --test host_install -- --ignored"
    )
    .run()?;
    step("cloud-init provisioning (the Fedora path) against a Debian guest");
    cmd!(
        sh,
        "cargo test --locked -p vm --test cloud_init -- --ignored"
    )
    .run()?;
    step("NAME@VERSION runtimes with dnf (the Fedora path) against a Debian guest with dnf");
    {
        let _echo = sh.push_env("SAL_ECHO_BIN", &bins.echo);
        let _probe = sh.push_env("SAL_PROBE_BIN", &bins.probe);
        cmd!(
            sh,
            "cargo test --locked -p lab --test dnf_runtime -- --ignored"
        )
        .run()?;
    }
    step("VM trials: the scenarios marked ci = true, on debian-13 with crun and runc");
    // Whole trial names: a substring filter such as "quadlet::" would also select
    // accept-yes-quadlet.
    let ci_trials: Vec<String> = ::lab::scenario::load_all(&root.join("tests/scenarios"))?
        .into_iter()
        .filter(|s| s.ci)
        .flat_map(|s| ["crun", "runc"].map(|r| format!("{}::debian-13::{r}", s.name)))
        .collect();
    let subset = ::lab::run::Selection {
        filters: ci_trials,
        exact: true,
        targets: vec!["debian-13".into()],
        runtimes: vec!["crun".into(), "runc".into()],
        ..Default::default()
    };
    run_ci_trials(sh, root, subset, "the ci = true scenarios")?;
    step("VM trial with a runtime from another suite: sockets-3 with runc@bookworm");
    let other_suite = ::lab::run::Selection {
        filters: vec!["sockets-3::".into()],
        targets: vec!["debian-13".into()],
        runtimes: vec!["runc@bookworm".into()],
        ..Default::default()
    };
    run_ci_trials(sh, root, other_suite, "sockets-3 with runc@bookworm")?;
    step(
        "mutants: each one once, on runc, against the cheapest scenario it names; caught only at a step that judges the claim",
    );
    {
        let scenarios = ::lab::scenario::load_all(&root.join("tests/scenarios"))?;
        let mutants = ::lab::mutant::load_all(&::lab::mutant::dir(root), &scenarios)?;
        // debian-13 first; debian-12 (podman 4.3.1, systemd 252) only for the mutants of
        // claims about older versions, whose scenarios SKIP on debian-13.
        let mut targets = Vec::new();
        let mut pairs = Err(anyhow::anyhow!("no target"));
        for name in ["debian-13", "debian-12"] {
            let target = vm::target::find(&root.join("vm"), name)?;
            let ready = vm::ready::ensure_ready(&target, &bins, lab::events().machine())?;
            targets.push((name.to_string(), ready.versions.clone()));
            pairs = ::lab::mutant::ci_pairs(&mutants, &scenarios, &targets);
            if pairs.is_ok() {
                break;
            }
        }
        let pairs = pairs?;
        let mutated = ::lab::run::Selection {
            filters: pairs
                .iter()
                .map(|p| format!("mutants::{}::{}::{}::runc", p.mutant, p.scenario, p.target))
                .collect(),
            exact: true,
            targets: targets.iter().map(|(t, _)| t.clone()).collect(),
            runtimes: vec!["runc".into()],
            mutants: true,
            ..Default::default()
        };
        run_ci_trials(sh, root, mutated, "the mutants")?;
    }
    step("report.html of the trials above and of a recorded run, in headless Chromium");
    {
        host::ensure(sh, &[host::CHROMIUM])?;
        let runs = run_dirs_since(root, started_at)?;
        let runs: Vec<String> = runs.iter().map(|p| p.display().to_string()).collect();
        let _runs = sh.push_env("SAL_REPORT_RUNS", runs.join("\n"));
        cmd!(
            sh,
            "cargo test --locked -p lab --test report_page -- --include-ignored --nocapture"
        )
        .run()?;
    }
    step(
        "faults: QEMU killed and stopped mid-step, the ssh master killed, broken ready states, a full disk",
    );
    {
        let _echo = sh.push_env("SAL_ECHO_BIN", &bins.echo);
        let _probe = sh.push_env("SAL_PROBE_BIN", &bins.probe);
        cmd!(
            sh,
            "cargo test --locked -p lab --test faults -- --ignored --test-threads=1"
        )
        .run()?;
    }
    step(
        "in a guest: the echo server over vsock loopback (this host has none), the package set against what apt installs",
    );
    {
        let (tests, server) = statics::build_echo_tests(sh)?;
        let _tests = sh.push_env("SAL_ECHO_TEST_BIN", &tests);
        let _server = sh.push_env("SAL_ECHO_TEST_SERVER", &server);
        let _echo = sh.push_env("SAL_ECHO_BIN", &bins.echo);
        let _probe = sh.push_env("SAL_PROBE_BIN", &bins.probe);
        cmd!(
            sh,
            "cargo test --locked -p lab --test in_guest -- --ignored --nocapture"
        )
        .run()?;
    }
    step("units as systemd takes them: a mistyped service key and quadlet key fail the trial");
    {
        let _echo = sh.push_env("SAL_ECHO_BIN", &bins.echo);
        let _probe = sh.push_env("SAL_PROBE_BIN", &bins.probe);
        cmd!(
            sh,
            "cargo test --locked -p lab --test unit_checks -- --ignored --test-threads=1"
        )
        .run()?;
    }
    step(
        "cargo xtask repro on a scenario directory outside the repository, and a unit systemd refuses",
    );
    cmd!(
        sh,
        "cargo test --locked -p xtask --test repro -- --ignored --test-threads=1"
    )
    .run()?;
    step(
        "the user's own build: host binaries (one the guest's loader refuses), a dirty checkout, and a bisect by commit of a crun wrapper repository built in the trixie build root",
    );
    cmd!(
        sh,
        "cargo test --locked -p xtask --test own_build -- --include-ignored --test-threads=1"
    )
    .run()?;
    step("Ctrl-C during a trial, an image build and the ready state's provisioning");
    cmd!(
        sh,
        "cargo test --locked -p xtask --test interrupt -- --ignored --test-threads=1"
    )
    .run()?;
    step("bench methods, one short round (it must run; its numbers are not judged)");
    bench::methods(
        sh,
        root,
        "debian-13",
        "crun",
        &::lab::netbench::Options {
            seconds: 1.0,
            size: 16384,
            connections: 1,
            rounds: 1,
        },
    )?;
    eprintln!(
        "\nci: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
