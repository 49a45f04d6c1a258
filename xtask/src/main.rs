//! cargo xtask: the project's automation, as ordinary Rust. Every shell-out goes through
//! xshell.

mod bench;
mod bisect;
mod ci;
mod host;
mod image;
mod lab;
mod process;
mod statics;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xshell::Shell;

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
        /// Skip the steps that need guests (for the lint-and-unit job).
        #[arg(long)]
        no_vm: bool,
        /// Print the steps and what each proves, and run nothing.
        #[arg(long)]
        list: bool,
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
    /// Remove superseded entries: keep each family's entry used last (per target and
    /// accelerator: its base, its ready state), what their disks are overlays on, and
    /// what a run is building. Run it when no run is going.
    Prune {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
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
            VmWhat::Prune { dry_run } => lab::prune(dry_run),
            VmWhat::Ssh { target, command } => lab::ssh(&sh, &root, &target, &command),
        },
        Command::Ci { list: true, .. } => {
            print!("{}", ci::listing());
            Ok(())
        }
        Command::Ci { no_vm, .. } => ci::run(&sh, &root, no_vm),
        Command::Doctor => host::doctor(&sh, &root),
        Command::Layout => layout_check::check(&root),
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
