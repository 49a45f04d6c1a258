//! `cargo xtask ci`: the project's checks as a table of steps, each with what it proves.
//! The table is the one source: `cargo xtask ci` runs it, `cargo xtask ci --list` prints
//! it, and a unit test checks the README's list against it.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Result, bail};
use xshell::{Shell, cmd};

use crate::{bench, host, lab, statics};

/// One step of CI.
pub struct Step {
    /// What the step does, as printed before it runs.
    pub name: &'static str,
    /// What passing it proves.
    pub proves: &'static str,
    /// Needs guests (QEMU, images): left out by `--no-vm`.
    pub vm: bool,
    pub run: Run,
}

pub enum Run {
    /// `cargo ARGS` in the workspace; with `bins`, the static binaries' paths in
    /// `SAL_ECHO_BIN` and `SAL_PROBE_BIN`.
    Cargo { args: &'static str, bins: bool },
    /// A step written in this module.
    Code(fn(&mut Ctx) -> Result<()>),
}

/// What the steps share.
pub struct Ctx<'a> {
    pub sh: &'a Shell,
    pub root: &'a Path,
    started_at: SystemTime,
    /// Set by the static-build step.
    bins: Option<vm::ready::Binaries>,
}

impl Ctx<'_> {
    fn bins(&self) -> Result<&vm::ready::Binaries> {
        self.bins
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the static build step has not run"))
    }
}

pub const STEPS: &[Step] = &[
    Step {
        name: "cargo fmt --check",
        proves: "the code is formatted",
        vm: false,
        run: Run::Cargo {
            args: "fmt --all --check",
            bins: false,
        },
    },
    Step {
        name: "cargo clippy -D warnings",
        proves: "no lint warning in any target",
        vm: false,
        run: Run::Cargo {
            args: "clippy --workspace --all-targets --locked -- -D warnings",
            bins: false,
        },
    },
    Step {
        name: "cargo xtask layout",
        proves: "no import cycle between modules, no path compiled in, no environment read in crates/vm, and ARCHITECTURE.md names only what exists",
        vm: false,
        run: Run::Code(|c| layout_check::check(c.root)),
    },
    Step {
        name: "cargo doc",
        proves: "the API docs build and every intra-doc link resolves (`RUSTDOCFLAGS=-D warnings`)",
        vm: false,
        run: Run::Code(|c| {
            let _deny = c.sh.push_env("RUSTDOCFLAGS", "-D warnings");
            cargo(c, "doc --workspace --no-deps --locked --quiet")
        }),
    },
    Step {
        name: "cargo test",
        proves: "the echo server with real inherited sockets, the probe, the engine's unit and fixture tests",
        vm: false,
        run: Run::Cargo {
            args: "test --workspace --locked",
            bins: false,
        },
    },
    Step {
        name: "static build",
        proves: "socket-activate-echo and echo-probe link statically (musl), as guests and the echo image need them",
        vm: false,
        run: Run::Code(|c| {
            c.bins = Some(statics::build(c.sh, c.root)?);
            Ok(())
        }),
    },
    Step {
        name: "workflow lint",
        proves: "actionlint and zizmor find nothing in .github/workflows",
        vm: false,
        run: Run::Code(|c| {
            let sh = c.sh;
            let linters = host::ensure_linters(sh)?;
            let (actionlint, zizmor) = (linters.join("actionlint"), linters.join("zizmor"));
            cmd!(sh, "{actionlint}").run()?;
            cmd!(sh, "{zizmor} --offline .github/workflows").run()?;
            Ok(())
        }),
    },
    Step {
        name: "the host step on a clean Debian 12 root",
        proves: "`xtask host` installs what the lab needs on a new machine with backported qemu-utils (mmdebstrap + chroot)",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p xtask --test host_install -- --ignored",
            bins: false,
        },
    },
    Step {
        name: "cloud-init provisioning",
        proves: "the Fedora path's provisioning works, against a Debian guest",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p vm --test cloud_init -- --ignored",
            bins: false,
        },
    },
    Step {
        name: "NAME@VERSION runtimes with dnf",
        proves: "the Fedora path's runtime install and its signature check work, against a Debian guest with dnf",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p lab --test dnf_runtime -- --ignored",
            bins: true,
        },
    },
    Step {
        name: "VM trials",
        proves: "the scenarios marked ci = true pass on debian-13 with crun and runc",
        vm: true,
        run: Run::Code(ci_trials),
    },
    Step {
        name: "a runtime from another suite",
        proves: "sockets-3 passes with runc@bookworm on debian-13",
        vm: true,
        run: Run::Code(|c| {
            let selection = ::lab::run::Selection {
                filters: vec!["sockets-3::".into()],
                targets: vec!["debian-13".into()],
                runtimes: vec!["runc@bookworm".into()],
                ..Default::default()
            };
            run_trials(c, selection, "sockets-3 with runc@bookworm")
        }),
    },
    Step {
        name: "mutants",
        proves: "each mutant, once, on runc, against the cheapest scenario it names, is caught at a step that judges the claim",
        vm: true,
        run: Run::Code(mutants),
    },
    Step {
        name: "report.html in headless Chromium",
        proves: "the page of the trials above and of a recorded run shows every trial and the failing step",
        vm: true,
        run: Run::Code(|c| {
            host::ensure(c.sh, &[host::CHROMIUM])?;
            let runs = run_dirs_since(c.root, c.started_at)?;
            let runs: Vec<String> = runs.iter().map(|p| p.display().to_string()).collect();
            let _runs = c.sh.push_env("SAL_REPORT_RUNS", runs.join("\n"));
            cargo(
                c,
                "test --locked -p lab --test report_page -- --include-ignored --nocapture",
            )
        }),
    },
    Step {
        name: "faults",
        proves: "QEMU killed and stopped mid-step, the ssh master killed, broken ready states and a full disk each end in a FAIL that says so, with nothing left behind",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p lab --test faults -- --ignored --test-threads=1",
            bins: true,
        },
    },
    Step {
        name: "in a guest",
        proves: "the echo server's vsock test passes over vsock loopback (this host has none); the guest's packages are what apt installs, but for the target's listed exceptions",
        vm: true,
        run: Run::Code(|c| {
            let (tests, server) = statics::build_echo_tests(c.sh)?;
            let _tests = c.sh.push_env("SAL_ECHO_TEST_BIN", &tests);
            let _server = c.sh.push_env("SAL_ECHO_TEST_SERVER", &server);
            let _bins = push_bins(c)?;
            cargo(
                c,
                "test --locked -p lab --test in_guest -- --ignored --nocapture",
            )
        }),
    },
    Step {
        name: "units as systemd takes them",
        proves: "a mistyped service key and a mistyped quadlet key fail the trial with systemd's and the generator's words",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p lab --test unit_checks -- --ignored --test-threads=1",
            bins: true,
        },
    },
    Step {
        name: "cargo xtask repro",
        proves: "a scenario directory outside the repository runs as written, and a unit systemd refuses fails",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p xtask --test repro -- --ignored --test-threads=1",
            bins: false,
        },
    },
    Step {
        name: "the user's own build",
        proves: "host binaries (one the guest's loader refuses), a dirty checkout, and a bisect by commit of a crun wrapper built in the trixie build root, which names exactly the commit that drops LISTEN_FDS",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p xtask --test own_build -- --include-ignored --test-threads=1",
            bins: false,
        },
    },
    Step {
        name: "Ctrl-C",
        proves: "Ctrl-C or SIGTERM during a trial, an image build or the ready state's provisioning, and SIGKILL mid-trial, leave nothing behind the next run does not remove",
        vm: true,
        run: Run::Cargo {
            args: "test --locked -p xtask --test interrupt -- --ignored --test-threads=1",
            bins: false,
        },
    },
    Step {
        name: "bench methods",
        proves: "one short round runs (its numbers are not judged)",
        vm: true,
        run: Run::Code(|c| {
            bench::methods(
                c.sh,
                c.root,
                "debian-13",
                "crun",
                &::lab::netbench::Options {
                    seconds: 1.0,
                    size: 16384,
                    connections: 1,
                    rounds: 1,
                },
            )
        }),
    },
];

/// Runs every step (without the VM ones with `no_vm`), in order, stopping at the first
/// that fails.
pub fn run(sh: &Shell, root: &Path, no_vm: bool) -> Result<()> {
    let started = Instant::now();
    host::ensure(sh, &host::all_tools())?;
    let mut ctx = Ctx {
        sh,
        root,
        started_at: SystemTime::now(),
        bins: None,
    };
    for step in STEPS.iter().filter(|s| !(no_vm && s.vm)) {
        eprintln!("\n==> {}: {}", step.name, step.proves);
        match &step.run {
            Run::Cargo { args, bins } => {
                let _bins = if *bins { Some(push_bins(&ctx)?) } else { None };
                cargo(&ctx, args)?;
            }
            Run::Code(f) => f(&mut ctx)?,
        }
    }
    eprintln!(
        "\nci: all steps{} passed in {:.0} s",
        if no_vm { " but the VM ones" } else { "" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The table as the README lists it: one line per step.
pub fn listing() -> String {
    STEPS
        .iter()
        .map(|s| {
            let how = match &s.run {
                Run::Cargo { args, .. } => format!(" (`cargo {args}`)"),
                Run::Code(_) => String::new(),
            };
            let vm = if s.vm { "" } else { " [--no-vm]" };
            format!("- **{}**{vm}: {}{how}\n", s.name, s.proves)
        })
        .collect()
}

fn cargo(c: &Ctx, args: &str) -> Result<()> {
    c.sh.cmd("cargo").args(args.split_whitespace()).run()?;
    Ok(())
}

fn push_bins<'a>(c: &'a Ctx) -> Result<[xshell::PushEnv<'a>; 2]> {
    let bins = c.bins()?;
    Ok([
        c.sh.push_env(::lab::host_env::ECHO_BIN_VAR, &bins.echo),
        c.sh.push_env(::lab::host_env::PROBE_BIN_VAR, &bins.probe),
    ])
}

/// The run directories under `target/lab/` with reports written since `since`.
fn run_dirs_since(root: &Path, since: SystemTime) -> Result<Vec<PathBuf>> {
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

/// Runs a step's trials, a guest per core as a user's run (the guests' vCPUs follow the
/// guests at once, so another count would build another ready state). A step meant to
/// run trials fails when none ran or every one was a SKIP.
fn run_trials(c: &Ctx, selection: ::lab::run::Selection, what: &str) -> Result<()> {
    let options = lab::TestOptions {
        jobs: lab::default_jobs(),
        ..Default::default()
    };
    let Some((results, status)) = lab::run_matrix(c.sh, c.root, selection, &options)? else {
        bail!("{what}: no trial ran");
    };
    status?;
    if results
        .iter()
        .all(|r| r.outcome == ::lab::trial::Outcome::Skip)
    {
        bail!(
            "{what}: every one of the {} trials was a SKIP, so the step proved nothing",
            results.len()
        );
    }
    Ok(())
}

fn ci_trials(c: &mut Ctx) -> Result<()> {
    // Whole trial names: a substring filter such as "quadlet::" would also select
    // accept-yes-quadlet.
    let names: Vec<String> = ::lab::scenario::load_all(&c.root.join("tests/scenarios"))?
        .into_iter()
        .filter(|s| s.ci)
        .flat_map(|s| ["crun", "runc"].map(|r| format!("{}::debian-13::{r}", s.name)))
        .collect();
    let selection = ::lab::run::Selection {
        filters: names,
        exact: true,
        targets: vec!["debian-13".into()],
        runtimes: vec!["crun".into(), "runc".into()],
        ..Default::default()
    };
    run_trials(c, selection, "the ci = true scenarios")
}

fn mutants(c: &mut Ctx) -> Result<()> {
    let scenarios = ::lab::scenario::load_all(&c.root.join("tests/scenarios"))?;
    let mutants = ::lab::mutant::load_all(&::lab::mutant::dir(c.root), &scenarios)?;
    // debian-13 first; debian-12 (podman 4.3.1, systemd 252) only for the mutants of
    // claims about older versions, whose scenarios SKIP on debian-13.
    let mut targets = Vec::new();
    let mut pairs = Err(anyhow::anyhow!("no target"));
    for name in ["debian-13", "debian-12"] {
        let target = vm::target::find(&c.root.join("vm"), name)?;
        let ready = vm::ready::ensure_ready(&target, c.bins()?, lab::events().machine())?;
        targets.push((name.to_string(), ready.versions.clone()));
        pairs = ::lab::mutant::ci_pairs(&mutants, &scenarios, &targets);
        if pairs.is_ok() {
            break;
        }
    }
    let pairs = pairs?;
    let selection = ::lab::run::Selection {
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
    run_trials(c, selection, "the mutants")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README lists the steps between two markers, as `cargo xtask ci --list` prints
    /// them.
    #[test]
    fn the_readme_lists_the_steps_ci_runs() {
        let readme = std::fs::read_to_string(
            ::lab::workspace::current()
                .expect("the workspace")
                .join("README.md"),
        )
        .unwrap();
        let start = "<!-- ci steps: cargo xtask ci --list -->\n";
        let end = "<!-- end of ci steps -->";
        let from = readme.find(start).expect("the README's start marker") + start.len();
        let to = readme[from..].find(end).expect("the README's end marker") + from;
        assert_eq!(
            &readme[from..to],
            listing(),
            "README.md's list of CI steps differs from the table: paste `cargo xtask ci --list` between the markers"
        );
    }
}
