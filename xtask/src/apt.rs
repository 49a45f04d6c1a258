//! Installing host packages with apt as one agreeing set.
//!
//! A plain `apt-get install` of what is missing can remove or downgrade what is already
//! there: on a Debian 12 machine with `qemu-utils` from bookworm-backports, installing
//! `qemu-system-x86` picks bookworm's 7.2 and removes the backported `qemu-utils`. So the
//! install is planned and simulated first (`apt-get -s`). When the simulation removes or
//! downgrades an installed package, the missing packages built from the same source are
//! pinned to the installed package's version, found in the configured suites or, for a
//! `~bpoNN` version, in the release's backports suite. A suite the machine does not have
//! configured is used through a private apt state (a copy of the source list parts and of
//! the package lists in a temporary directory), so the machine's own apt configuration and
//! lists are never changed. A plan that still removes or downgrades anything is refused
//! with the plan and the exact commands.
//!
//! The parsers are pure functions with unit tests; `Apt` runs apt through xshell.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// One `apt-get install` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Package names, `NAME=VERSION` where the version is pinned.
    pub packages: Vec<String>,
    /// `-t RELEASE`: the suite whose versions the pinned packages' dependencies take.
    pub target_release: Option<String>,
    /// Why this transaction is separate (shown in the plan).
    pub why: Option<String>,
}

/// What `apt-get -s install` says it would do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Simulation {
    /// `(package, installed version, new version)`; `installed` is None for a new package.
    pub installs: Vec<(String, Option<String>, String)>,
    /// `(package, installed version)`.
    pub removals: Vec<(String, String)>,
}

/// Parses the `Inst`/`Remv` lines of `apt-get -s install`:
/// `Inst NAME [OLD] (NEW RELEASE [ARCH])`, `Inst NAME (NEW ...)`, `Remv NAME [OLD]`.
pub fn parse_simulation(text: &str) -> Simulation {
    let mut sim = Simulation::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let old = rest
            .first()
            .filter(|w| w.starts_with('[') && w.ends_with(']'))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string());
        match kind {
            "Inst" => {
                let Some(new) = rest
                    .iter()
                    .find(|w| w.starts_with('('))
                    .map(|w| w.trim_start_matches('(').to_string())
                else {
                    continue;
                };
                sim.installs.push((name.to_string(), old, new));
            }
            "Remv" => sim
                .removals
                .push((name.to_string(), old.unwrap_or_default())),
            _ => {}
        }
    }
    sim
}

/// One paragraph of `apt-cache show NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub package: String,
    pub version: String,
    /// The source package and its version (the binary's own version when the `Source:`
    /// field gives none, or there is no `Source:` field at all).
    pub source: String,
    pub source_version: String,
}

pub fn parse_show(text: &str) -> Vec<Record> {
    text.split("\n\n")
        .filter_map(|para| {
            let field = |name: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            };
            let package = field("Package")?;
            let version = field("Version")?;
            let (source, source_version) = match field("Source") {
                None => (package.clone(), version.clone()),
                Some(s) => match s.split_once(' ') {
                    Some((name, v)) => (
                        name.to_string(),
                        v.trim_matches(|c| c == '(' || c == ')').to_string(),
                    ),
                    None => (s, version.clone()),
                },
            };
            Some(Record {
                package,
                version,
                source,
                source_version,
            })
        })
        .collect()
}

/// One line of `apt-cache madison NAME`:
/// `qemu-utils | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub package: String,
    pub version: String,
    pub uri: String,
    pub suite: String,
}

pub fn parse_madison(text: &str) -> Vec<Offer> {
    text.lines()
        .filter_map(|l| {
            let mut cols = l.split('|').map(str::trim);
            let (package, version, origin) = (cols.next()?, cols.next()?, cols.next()?);
            let mut words = origin.split_whitespace();
            let uri = words.next()?;
            let suite = words.next()?.split('/').next()?;
            Some(Offer {
                package: package.into(),
                version: version.into(),
                uri: uri.into(),
                suite: suite.into(),
            })
        })
        .collect()
}

/// The backports suite a version was built for: `1:10.0.2+ds-2+deb13u1~bpo12+1` on
/// bookworm is `bookworm-backports`. None for a version that is not a backport.
pub fn backports_suite(version: &str, codename: &str) -> Option<String> {
    version
        .contains("~bpo")
        .then(|| format!("{codename}-backports"))
}

/// An installed package: `dpkg-query`'s view.
#[derive(Debug, Clone)]
pub struct Installed {
    pub package: String,
    pub version: String,
    pub source: String,
    pub source_version: String,
}

/// The planned install: suites used through a private apt state, and the transactions
/// with what their simulation said.
#[derive(Debug)]
pub struct Plan {
    pub added_suites: Vec<(String, String)>,
    pub steps: Vec<(Transaction, Simulation)>,
    /// Removals and downgrades no pin could avoid: the plan is refused when not empty.
    pub refused: Vec<String>,
}

/// Runs apt, with a private state when a suite the machine lacks is added.
pub struct Apt<'a> {
    sh: &'a Shell,
    codename: String,
    allow_expired: bool,
    /// Holds `sources.list.d/` and `lists/` of the private state.
    private: Option<tempfile::TempDir>,
    added: Vec<(String, String)>,
}

impl<'a> Apt<'a> {
    pub fn new(sh: &'a Shell) -> Result<Self> {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let codename = os
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Ok(Apt {
            sh,
            codename,
            allow_expired: std::env::var_os("SAL_ALLOW_EXPIRED_RELEASE").is_some_and(|v| v == "1"),
            private: None,
            added: Vec::new(),
        })
    }

    /// `-o` options every apt call gets: the private state when there is one, and the
    /// expired-InRelease opt-in the lab's other archive reads honour too.
    fn options(&self) -> Vec<String> {
        let mut opts = Vec::new();
        if let Some(dir) = &self.private {
            opts.push(format!(
                "-oDir::Etc::SourceParts={}",
                dir.path().join("sources.list.d").display()
            ));
            opts.push(format!(
                "-oDir::State::Lists={}",
                dir.path().join("lists").display()
            ));
        }
        if self.allow_expired {
            opts.push("-oAcquire::Check-Valid-Until=false".into());
        }
        opts
    }

    /// `apt-get update`. A failing source (an expired InRelease, say) is a warning: the
    /// lists that could be read are used, and the simulation says what is not found.
    pub fn update(&self) -> Result<()> {
        let opts = self.options();
        let out = cmd!(self.sh, "apt-get update -q {opts...}")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .ignore_status()
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!(
                "xtask: apt-get update reported errors; planning with the lists it could read:\n{}",
                text.trim()
            );
            if text.contains("expired") && !self.allow_expired {
                eprintln!(
                    "xtask: an InRelease past its Valid-Until (a frozen mirror) is accepted with SAL_ALLOW_EXPIRED_RELEASE=1 (the signature is still checked)"
                );
            }
        }
        Ok(())
    }

    pub fn show(&self, package: &str) -> Result<Vec<Record>> {
        let opts = self.options();
        let out = cmd!(self.sh, "apt-cache {opts...} show {package}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()?;
        Ok(parse_show(&out))
    }

    pub fn madison(&self, package: &str) -> Result<Vec<Offer>> {
        let opts = self.options();
        let out = cmd!(self.sh, "apt-cache {opts...} madison {package}")
            .quiet()
            .ignore_stderr()
            .read()?;
        Ok(parse_madison(&out))
    }

    pub fn installed(&self, package: &str) -> Result<Option<Installed>> {
        let format =
            "${db:Status-Abbrev}|${Package}|${Version}|${source:Package}|${source:Version}\\n";
        let out = cmd!(self.sh, "dpkg-query -W -f={format} {package}")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .read()?;
        Ok(out.lines().find_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 5 && f[0].starts_with("ii")).then(|| Installed {
                package: f[1].into(),
                version: f[2].into(),
                source: f[3].into(),
                source_version: f[4].into(),
            })
        }))
    }

    /// `a < b` in Debian's version order.
    fn older(&self, a: &str, b: &str) -> bool {
        cmd!(self.sh, "dpkg --compare-versions {a} lt {b}")
            .quiet()
            .run()
            .is_ok()
    }

    fn install_args(&self, t: &Transaction, simulate: bool) -> Vec<String> {
        let mut args = vec!["install".to_string()];
        args.push(if simulate { "-s" } else { "-y" }.into());
        args.extend(["-q".into(), "--no-install-recommends".into()]);
        args.extend(self.options());
        if let Some(r) = &t.target_release {
            args.extend(["-t".into(), r.clone()]);
        }
        args.extend(t.packages.iter().cloned());
        args
    }

    /// The exact command a transaction runs as.
    pub fn command_line(&self, t: &Transaction) -> String {
        format!("apt-get {}", self.install_args(t, false).join(" "))
    }

    pub fn simulate(&self, t: &Transaction) -> Result<Simulation> {
        let args = self.install_args(t, true);
        let out = cmd!(self.sh, "apt-get {args...}")
            .quiet()
            .ignore_status()
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "apt cannot install {}:\n{}{}",
                t.packages.join(" "),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(parse_simulation(&stdout))
    }

    pub fn install(&self, t: &Transaction) -> Result<()> {
        let args = self.install_args(t, false);
        cmd!(self.sh, "apt-get {args...}")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .with_context(|| format!("{} failed", self.command_line(t)))
    }

    /// The removals and downgrades of a simulation, as `name (old -> new)` texts.
    pub fn harm(&self, sim: &Simulation) -> Vec<(String, String)> {
        let mut bad: Vec<(String, String)> = sim
            .removals
            .iter()
            .map(|(p, v)| (p.clone(), format!("{p} {v} would be removed")))
            .collect();
        for (p, old, new) in &sim.installs {
            if let Some(old) = old
                && self.older(new, old)
            {
                bad.push((
                    p.clone(),
                    format!("{p} would be downgraded from {old} to {new}"),
                ));
            }
        }
        bad
    }

    /// Adds `suite` from `uri` through the private state and reads its package list.
    fn add_suite(&mut self, uri: &str, suite: &str) -> Result<()> {
        if self.private.is_none() {
            let dir = tempfile::Builder::new().prefix("sal-apt-").tempdir()?;
            let parts = dir.path().join("sources.list.d");
            let lists = dir.path().join("lists");
            std::fs::create_dir_all(lists.join("partial"))?;
            std::fs::create_dir_all(&parts)?;
            copy_dir_files(Path::new("/etc/apt/sources.list.d"), &parts)?;
            copy_dir_files(Path::new("/var/lib/apt/lists"), &lists)?;
            self.private = Some(dir);
        }
        let dir = self.private.as_ref().expect("made above").path();
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        std::fs::write(
            dir.join(format!("sources.list.d/sal-{suite}.sources")),
            format!(
                "Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: {keyring}\n"
            ),
        )?;
        eprintln!(
            "xtask: reading {suite} from {uri} into a private apt state (this machine's apt sources stay as they are)"
        );
        self.added.push((suite.into(), uri.into()));
        self.update()
    }

    /// The binary version of `package` built from `source_version`, and the suite that
    /// has it.
    fn find_built_from(
        &self,
        package: &str,
        source_version: &str,
    ) -> Result<Option<(String, String)>> {
        let Some(record) = self
            .show(package)?
            .into_iter()
            .find(|r| r.source_version == source_version)
        else {
            return Ok(None);
        };
        let suite = self
            .madison(package)?
            .into_iter()
            .find(|o| o.version == record.version)
            .map(|o| o.suite);
        Ok(suite.map(|s| (record.version, s)))
    }

    /// Plans installing `packages` (none of them installed) so that nothing installed is
    /// removed or downgraded.
    pub fn plan(&mut self, packages: &[String]) -> Result<Plan> {
        let all = Transaction {
            packages: packages.to_vec(),
            target_release: None,
            why: None,
        };
        let sim = self.simulate(&all)?;
        let harm = self.harm(&sim);
        if harm.is_empty() {
            return Ok(Plan {
                added_suites: self.added.clone(),
                steps: vec![(all, sim)],
                refused: Vec::new(),
            });
        }
        // Pin each missing package that shares its source with a harmed installed one.
        let mut pinned: Vec<(String, Installed)> = Vec::new();
        for (harmed, _) in &harm {
            let Some(inst) = self.installed(harmed)? else {
                continue;
            };
            for p in packages {
                let same_source = self
                    .show(p)?
                    .first()
                    .is_some_and(|r| r.source == inst.source);
                if same_source && !pinned.iter().any(|(q, _)| q == p) {
                    pinned.push((p.clone(), inst.clone()));
                }
            }
        }
        if pinned.is_empty() {
            return Ok(self.refusal(vec![(all, sim)], &harm));
        }
        let mut pins = Vec::new();
        let mut release = None;
        let mut why = Vec::new();
        for (p, inst) in &pinned {
            let mut found = self.find_built_from(p, &inst.source_version)?;
            if found.is_none()
                && let Some(suite) = backports_suite(&inst.version, &self.codename)
                && !self.added.iter().any(|(s, _)| *s == suite)
            {
                let uri = self
                    .madison(p)?
                    .into_iter()
                    .find(|o| o.suite.starts_with(&self.codename))
                    .map(|o| o.uri)
                    .unwrap_or_else(|| "http://deb.debian.org/debian".into());
                self.add_suite(&uri, &suite)?;
                found = self.find_built_from(p, &inst.source_version)?;
            }
            let Some((version, suite)) = found else {
                bail!(
                    "{p} must be built from {} {} to agree with the installed {} {}, and no apt source has that version.\n\
                     Install {p} from where {} came, or let apt replace it yourself: apt-get install {p} {}",
                    inst.source,
                    inst.source_version,
                    inst.package,
                    inst.version,
                    inst.package,
                    inst.package
                );
            };
            pins.push(format!("{p}={version}"));
            why.push(format!(
                "{p} like the installed {} {}",
                inst.package, inst.version
            ));
            release = Some(suite);
        }
        let mut steps = Vec::new();
        let first = Transaction {
            packages: pins,
            target_release: release,
            why: Some(format!("same source, same version: {}", why.join(", "))),
        };
        let sim = self.simulate(&first)?;
        steps.push((first, sim));
        let rest: Vec<String> = packages
            .iter()
            .filter(|p| !pinned.iter().any(|(q, _)| q == *p))
            .cloned()
            .collect();
        if !rest.is_empty() {
            let t = Transaction {
                packages: rest,
                target_release: None,
                why: None,
            };
            let sim = self.simulate(&t)?;
            steps.push((t, sim));
        }
        let harm: Vec<(String, String)> = steps.iter().flat_map(|(_, s)| self.harm(s)).collect();
        let mut plan = Plan {
            added_suites: self.added.clone(),
            steps,
            refused: Vec::new(),
        };
        plan.refused = harm.into_iter().map(|(_, why)| why).collect();
        Ok(plan)
    }

    fn refusal(&self, steps: Vec<(Transaction, Simulation)>, harm: &[(String, String)]) -> Plan {
        Plan {
            added_suites: self.added.clone(),
            steps,
            refused: harm.iter().map(|(_, why)| why.clone()).collect(),
        }
    }

    /// The plan as a person reads it: suites, then each command with what it does.
    pub fn describe(&self, plan: &Plan) -> String {
        let mut out = String::new();
        for (suite, uri) in &plan.added_suites {
            out.push_str(&format!(
                "  suite {suite} from {uri}, for this install only (a private apt state; this machine's sources stay as they are)\n"
            ));
        }
        for (i, (t, sim)) in plan.steps.iter().enumerate() {
            out.push_str(&format!("  {}. {}\n", i + 1, self.command_line(t)));
            if let Some(why) = &t.why {
                out.push_str(&format!("     ({why})\n"));
            }
            let new = sim.installs.iter().filter(|(_, o, _)| o.is_none()).count();
            let upgraded = sim.installs.len() - new;
            out.push_str(&format!(
                "     installs {new} new packages, upgrades {upgraded}, removes {}\n",
                sim.removals.len()
            ));
        }
        for r in &plan.refused {
            out.push_str(&format!("  REFUSED: {r}\n"));
        }
        out
    }
}

fn copy_dir_files(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_file() {
            let dest: PathBuf = to.join(e.file_name());
            std::fs::copy(e.path(), &dest)
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded on a Debian 12 machine with the backported qemu-utils.
    const SIM: &str = "NOTE: This is only a simulation!
Inst login [1:4.13+dfsg1-1+deb12u1] (1:4.13+dfsg1-1+deb12u2 Debian:12.15/oldstable [amd64])
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn simulation_lines() {
        let sim = parse_simulation(SIM);
        assert_eq!(
            sim.removals,
            vec![("qemu-utils".into(), "1:10.0.2+ds-2+deb13u1~bpo12+1".into())]
        );
        assert_eq!(
            sim.installs,
            vec![
                (
                    "login".into(),
                    Some("1:4.13+dfsg1-1+deb12u1".into()),
                    "1:4.13+dfsg1-1+deb12u2".into()
                ),
                (
                    "qemu-system-x86".into(),
                    None,
                    "1:7.2+dfsg-7+deb12u18+b3".into()
                ),
            ]
        );
    }

    #[test]
    fn show_records_with_and_without_source_version() {
        let text = "Package: qemu-utils\nSource: qemu\nVersion: 1:10.0.2+ds-2+deb13u1~bpo12+1\n\n\
                    Package: qemu-utils\nSource: qemu (1:7.2+dfsg-7+deb12u18)\nVersion: 1:7.2+dfsg-7+deb12u18+b3\n\n\
                    Package: mtools\nVersion: 4.0.33-1\n";
        let r = parse_show(text);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].source.as_str(), r[0].source_version.as_str()),
            ("qemu", "1:10.0.2+ds-2+deb13u1~bpo12+1")
        );
        assert_eq!(
            (
                r[1].source.as_str(),
                r[1].source_version.as_str(),
                r[1].version.as_str()
            ),
            ("qemu", "1:7.2+dfsg-7+deb12u18", "1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(
            (r[2].source.as_str(), r[2].source_version.as_str()),
            ("mtools", "4.0.33-1")
        );
    }

    #[test]
    fn madison_suite_and_uri() {
        let text = "qemu-system-x86 | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n\
                    qemu-system-x86 | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n";
        let o = parse_madison(text);
        assert_eq!(o[0].suite, "bookworm-backports");
        assert_eq!(o[0].uri, "http://deb.debian.org/debian");
        assert_eq!(o[1].suite, "bookworm-security");
    }

    #[test]
    fn backports_from_version() {
        assert_eq!(
            backports_suite("1:10.0.2+ds-2+deb13u1~bpo12+1", "bookworm").as_deref(),
            Some("bookworm-backports")
        );
        assert_eq!(
            backports_suite("1:7.2+dfsg-7+deb12u18+b3", "bookworm"),
            None
        );
    }
}
