//! `cargo xtask test` and `cargo xtask vm ...`: the lab engine driven from the CLI.

use std::path::Path;

use anyhow::{Result, bail};
use lab::events::{ConsoleReporter, Events};
use lab::run::{self, Selection};
use lab::scenario::Outcome;
use lab::vm::{self, Binaries, TrialVm};
use xshell::{Shell, cmd};

use crate::{host, statics};

fn events() -> Events {
    Events::new(vec![Box::new(ConsoleReporter::new())])
}

fn binaries(sh: &Shell, root: &Path) -> Result<Binaries> {
    let b = statics::build(sh, root)?;
    Ok(Binaries {
        echo: b.echo,
        probe: b.probe,
    })
}

pub fn test(sh: &Shell, root: &Path, selection: Selection, list: bool) -> Result<()> {
    let trials = run::plan(root, &selection)?;
    if list {
        for t in &trials {
            println!("{}: test", t.name());
        }
        return Ok(());
    }
    if trials.is_empty() {
        bail!("no trial matches the filters {:?}", selection.filters);
    }
    host::ensure(sh, host::LAB)?;
    let bins = binaries(sh, root)?;
    let run_dir = run::new_run_dir(root)?;
    let started = std::time::Instant::now();
    let results = run::run_all(&trials, &bins, &run_dir, &events())?;
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    let (pass, fail, skip) = (
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Skip),
    );
    println!();
    for r in &results {
        println!("{}", r.summary_line());
        if r.outcome.is_bad() {
            for line in r.detail.lines().skip(1) {
                println!("    {line}");
            }
            println!("    logs: {}", r.log_dir.display());
        }
    }
    println!(
        "\n{pass} passed, {fail} failed, {skip} skipped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("reports and logs: {}", run_dir.display());
    if fail > 0 {
        bail!("{fail} trial(s) failed");
    }
    Ok(())
}

pub fn build(sh: &Shell, root: &Path, target: &str) -> Result<()> {
    host::ensure(sh, host::LAB)?;
    let target = lab::target::find(&root.join("vm"), target)?;
    let bins = binaries(sh, root)?;
    let ready = vm::ensure_ready(&target, &bins, &events())?;
    println!("{} ready in {}", target.name, ready.dir.display());
    for (k, v) in &ready.versions {
        println!("  {k}: {v}");
    }
    Ok(())
}

pub fn ls() -> Result<()> {
    let entries = lab::cache::entries()?;
    if entries.is_empty() {
        println!("nothing cached in {}", lab::cache::root().display());
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
    let root = lab::cache::root();
    if root.exists() {
        let size = lab::cache::dir_size(&root);
        std::fs::remove_dir_all(&root)?;
        println!(
            "removed {} ({:.1} MiB)",
            root.display(),
            size as f64 / 1048576.0
        );
    }
    Ok(())
}

/// A shell in a fresh guest restored from the ready state; the guest is gone afterwards.
pub fn ssh(sh: &Shell, root: &Path, target: &str, command: &[String]) -> Result<()> {
    host::ensure(sh, host::LAB)?;
    let target = lab::target::find(&root.join("vm"), target)?;
    let bins = binaries(sh, root)?;
    let ready = vm::ensure_ready(&target, &bins, &events())?;
    let dir = tempfile::Builder::new()
        .prefix("vm-ssh-")
        .tempdir_in(root.join("target"))?;
    let vm = TrialVm::start(&ready, dir.path(), &events())?;
    let args = vm.guest.ssh_args();
    if command.is_empty() {
        eprintln!(
            "guest {} on 127.0.0.1:{}; exit the shell to stop it",
            target.name,
            vm.guest.port()
        );
        cmd!(sh, "ssh -t {args...} root@127.0.0.1")
            .ignore_status()
            .run()?;
        return Ok(());
    }
    let script = command.join(" ");
    cmd!(sh, "ssh {args...} root@127.0.0.1 -- {script}")
        .quiet()
        .ignore_status()
        .run()?;
    Ok(())
}
