//! The host as xtask sees it: the tools every task makes sure of (through
//! [`hostprep`], with this run's configuration), the accelerator, and `cargo xtask
//! doctor`.

use std::path::PathBuf;

use anyhow::{Result, bail};
pub use hostprep::tools::{CHROMIUM, LAB, SOCAT, SOCKET_ACTIVATE, Tool, all_tools, is_root};
use xshell::{Shell, cmd};

fn allow_expired() -> bool {
    vm::config::get().allow_expired_release
}

/// Makes sure every tool is there ([`hostprep::tools::ensure`]).
pub fn ensure(sh: &Shell, tools: &[Tool]) -> Result<()> {
    hostprep::tools::ensure(sh, tools, allow_expired())
}

/// The workflow linters, in a venv under the lab's cache; their `bin` directory.
pub fn ensure_linters(sh: &Shell) -> Result<PathBuf> {
    hostprep::tools::ensure_linters(sh, &vm::cache::root().join("tools/venv"), allow_expired())
}

/// `cargo xtask host`: installs what the lab needs (with `linters`, the workflow linters
/// too), or with `dry_run` prints the plan only.
pub fn host(sh: &Shell, dry_run: bool, linters: bool) -> Result<()> {
    let tools = all_tools();
    if dry_run {
        hostprep::tools::print_plan(sh, &tools, allow_expired());
        return Ok(());
    }
    ensure(sh, &tools)?;
    println!("host tools: all {} present", tools.len());
    if linters {
        let bin = ensure_linters(sh)?;
        println!("linters: {}", bin.display());
    }
    Ok(())
}

/// The accelerator guests will get: decided with the kernel of a cached base image when
/// there is one (the probe's answer is kept, so this is instant after the first run), else
/// what `/dev/kvm` allows before any kernel ran.
pub fn accelerator() -> vm::qemu::Accel {
    let kernel = vm::cache::entry_dirs()
        .into_iter()
        .map(|dir| dir.join("vmlinuz"))
        .find(|k| k.is_file());
    match &kernel {
        Some(k) => vm::qemu::decide_accel(k),
        None => vm::qemu::detect_accel(),
    }
}

/// `cargo xtask doctor`: reports, never installs. Fails when something the lab cannot
/// work without is missing and `cargo xtask test` would not fix it by itself.
pub fn doctor(sh: &Shell, root_dir: &std::path::Path) -> Result<()> {
    let mut blocking = Vec::new();
    let root = is_root();
    println!(
        "root:          {}",
        if root {
            "yes (missing host packages are installed with apt-get when needed)"
        } else {
            "no (mmdebstrap and apt-get need root: run the lab with sudo)"
        }
    );
    if !root {
        blocking.push("not root");
    }
    let accel = accelerator();
    println!(
        "accelerator:   {} ({})",
        accel.name(),
        vm::qemu::accel_reason(accel)
    );
    let tools = all_tools();
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| !t.present())
        .map(|t| format!("{} (package {})", t.command, t.package))
        .collect();
    if missing.is_empty() {
        println!("host tools:    all {} present", tools.len());
    } else {
        println!("host tools:    missing {}", missing.join(", "));
        hostprep::tools::print_plan(sh, &tools, allow_expired());
        if !root {
            blocking.push("host tools missing");
        }
    }
    let targets = cmd!(sh, "rustup target list --installed")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    println!(
        "static build:  {}",
        if targets
            .lines()
            .any(|l| l.trim() == "x86_64-unknown-linux-musl")
        {
            "x86_64-unknown-linux-musl installed"
        } else {
            "x86_64-unknown-linux-musl missing (added with rustup when needed; else glibc +crt-static)"
        }
    );
    let cache = vm::cache::root();
    let entries = vm::cache::entries().unwrap_or_default();
    let size: u64 = entries.iter().map(|(_, s, _)| s).sum();
    let incomplete = entries.iter().filter(|(_, _, ok)| !ok).count();
    println!(
        "cache:         {} ({:.1} GiB in {} entries{})",
        cache.display(),
        size as f64 / (1u64 << 30) as f64,
        entries.len(),
        if incomplete > 0 {
            format!(", {incomplete} incomplete: rebuilt on use")
        } else {
            String::new()
        }
    );
    let plan = vm::prune::plan(&cache.join("images")).unwrap_or_default();
    if !plan.superseded.is_empty() {
        println!(
            "               {} superseded by newer ones ({:.1} GiB): cargo xtask vm prune",
            plan.superseded.len(),
            plan.superseded_bytes() as f64 / (1u64 << 30) as f64
        );
    }
    let existing = cache
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("/"))
        .to_path_buf();
    let avail = cmd!(sh, "df -B1 --output=avail {existing}")
        .quiet()
        .read()
        .ok()
        .and_then(|out| {
            out.lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
        });
    match avail {
        Some(bytes) => {
            let gib = bytes as f64 / (1u64 << 30) as f64;
            // An image and its ready state take about 1.5 GiB; every trial adds an overlay.
            let note = if gib < 5.0 {
                " (low: a target needs ~1.5 GiB, a run a few more)"
            } else {
                ""
            };
            println!(
                "free disk:     {gib:.1} GiB at {}{note}",
                existing.display()
            );
        }
        None => println!(
            "free disk:     unknown (df failed on {})",
            existing.display()
        ),
    }
    // Per target: the archive its guests come from, and what its ready state has.
    match vm::target::load_all(&root_dir.join("vm")) {
        Err(e) => println!("targets:       {e:#}"),
        Ok(targets) => {
            for t in targets {
                let archive = match &t.source {
                    vm::target::ImageSource::Debian {
                        suite,
                        mirror,
                        mirror_origin,
                        ..
                    } => format!("{suite} from {mirror} ({mirror_origin})"),
                    vm::target::ImageSource::Fedora { release, .. } => {
                        format!("Fedora {release} cloud image")
                    }
                };
                println!("{:<15}{archive}", format!("{}:", t.name));
                let versions = vm::ready::cached_versions(&t.name);
                println!(
                    "{:<15}{}",
                    "",
                    match versions {
                        Some(v) => vm::ready::GUEST_COMPONENTS
                            .iter()
                            .map(|k| format!("{k} {}", v.get(*k).map_or("?", String::as_str)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        None => "no ready state yet (cargo xtask vm build NAME)".into(),
                    }
                );
            }
        }
    }
    let tmp = std::env::temp_dir();
    println!(
        "socket dir:    {} (QEMU's QMP socket path: {} of 107 bytes)",
        tmp.display(),
        tmp.join("sal-qemu-XXXXXX/qmp.sock").as_os_str().len()
    );
    // What an earlier run may have left (none should outlive its process).
    let stray: Vec<String> = vm::cleanup::processes()
        .into_iter()
        .filter(|(_, c)| {
            (c.starts_with("qemu-system") && c.contains("socket-activation-lab"))
                || (c.starts_with("ssh ") && c.contains("/sal-ssh-"))
        })
        .map(|(pid, c)| format!("{pid} {}", c.chars().take(60).collect::<String>()))
        .collect();
    let dirs = vm::cleanup::lab_tmp_dirs();
    if stray.is_empty() && dirs.is_empty() {
        println!(
            "leftovers:     none (no lab QEMU or ssh running, no sal-* in {})",
            tmp.display()
        );
    } else {
        println!(
            "leftovers:     {} lab processes, {} sal-* directories in {} (from a run still going, or a bug)",
            stray.len(),
            dirs.len(),
            tmp.display()
        );
        for p in &stray {
            println!("               {p}");
        }
    }
    if blocking.is_empty() {
        println!("\nthe lab can run here");
        Ok(())
    } else {
        bail!("the lab cannot run here: {}", blocking.join("; "))
    }
}
