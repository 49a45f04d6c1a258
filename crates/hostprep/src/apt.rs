//! Installing host packages with apt as one agreeing set.
//!
//! A plain `apt-get install` of what is missing can remove or downgrade what is already
//! there: on a Debian 12 machine with `qemu-utils` from bookworm-backports, installing
//! `qemu-system-x86` picks bookworm's 7.2 and removes the backported `qemu-utils`. So the
//! install is planned and simulated first (`apt-get -s`). When the simulation removes or
//! downgrades an installed package, that package's source is pinned (an apt preferences
//! entry `Package: src:NAME`) to the installed version, found in the configured suites
//! or, for a `~bpoNN` version, in the release's backports suite, and the whole set is
//! simulated again as one transaction (two transactions do not work: `-t backports` for
//! qemu alone pulls libelf1 from backports, and bookworm's libdw1 then cannot install).
//! Pins and added suites live in a private apt state (a copy of the source list parts and
//! package lists in a temporary directory), so the machine's own apt configuration and
//! lists are never changed. A plan that still removes or downgrades anything is refused
//! with the plan and the exact command.
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

/// The dependencies apt could not satisfy with its candidates, from its refusal:
/// ` qemu-system-x86 : Depends: seabios (> 1.16.3-1~) but 1.16.2-1 is to be installed`
/// gives `seabios`. (apt does not backtrack to a non-candidate version by itself.)
pub fn parse_unmet(text: &str) -> Vec<String> {
    let mut deps = Vec::new();
    for line in text.lines() {
        let Some((_, rest)) = line
            .split_once(" : Depends: ")
            .or_else(|| line.trim_start().strip_prefix("Depends: ").map(|r| ("", r)))
        else {
            continue;
        };
        if !rest.contains(" is to be installed") {
            continue;
        }
        if let Some(dep) = rest.split_whitespace().next()
            && !deps.iter().any(|d| d == dep)
        {
            deps.push(dep.to_string());
        }
    }
    deps
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

/// The planned install: suites and pins used through a private apt state, and the
/// transaction with what its simulation said.
#[derive(Debug)]
pub struct Plan {
    pub added_suites: Vec<(String, String)>,
    /// `(package or src:NAME, pin, why)`.
    pub pins: Vec<(String, String, String)>,
    pub transaction: Transaction,
    pub simulation: Simulation,
    /// Removals and downgrades no pin could avoid: the plan is refused when not empty.
    pub refused: Vec<String>,
}

/// Runs apt, with a private state when a suite the machine lacks is added.
pub struct Apt<'a> {
    sh: &'a Shell,
    codename: String,
    allow_expired: bool,
    /// Holds `sources.list.d/`, `preferences.d/` and `lists/` of the private state.
    private: Option<tempfile::TempDir>,
    added: Vec<(String, String)>,
    pins: Vec<(String, String, String)>,
}

impl<'a> Apt<'a> {
    /// `allow_expired`: accept a suite's InRelease past its Valid-Until (a frozen mirror);
    /// its signature is still checked.
    pub fn new(sh: &'a Shell, allow_expired: bool) -> Result<Self> {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let codename = os
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Ok(Apt {
            sh,
            codename,
            allow_expired,
            private: None,
            added: Vec::new(),
            pins: Vec::new(),
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
                "-oDir::Etc::PreferencesParts={}",
                dir.path().join("preferences.d").display()
            ));
            opts.push(format!(
                "-oDir::State::Lists={}",
                dir.path().join("lists").display()
            ));
            // No binary caches, so the machine's own are never rebuilt from these lists.
            opts.push("-oDir::Cache::pkgcache=".into());
            opts.push("-oDir::Cache::srcpkgcache=".into());
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
        args.extend(t.packages.iter().cloned());
        args
    }

    /// The exact command a transaction runs as.
    pub fn command_line(&self, t: &Transaction) -> String {
        format!("apt-get {}", self.install_args(t, false).join(" "))
    }

    pub fn simulate(&self, t: &Transaction) -> Result<Simulation> {
        self.try_simulate(t)?
            .map_err(|why| anyhow::anyhow!("apt cannot install {}:\n{why}", t.packages.join(" ")))
    }

    /// The simulation, or apt's own words for why it cannot make one.
    fn try_simulate(&self, t: &Transaction) -> Result<std::result::Result<Simulation, String>> {
        let args = self.install_args(t, true);
        let out = cmd!(self.sh, "apt-get {args...}")
            .quiet()
            .ignore_status()
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Ok(Err(format!(
                "{}\n{}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Ok(parse_simulation(&stdout)))
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

    /// From now on, apt reads and writes a private state: a copy of the machine's source
    /// list parts and package lists in a temporary directory. Nothing apt does through
    /// it changes the machine's apt configuration or lists.
    pub fn go_private(&mut self) -> Result<()> {
        if self.private.is_some() {
            return Ok(());
        }
        let dir = tempfile::Builder::new().prefix("sal-apt-").tempdir()?;
        let parts = dir.path().join("sources.list.d");
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(&parts)?;
        copy_dir_files(Path::new("/etc/apt/sources.list.d"), &parts)?;
        let prefs = dir.path().join("preferences.d");
        std::fs::create_dir_all(&prefs)?;
        copy_dir_files(Path::new("/etc/apt/preferences.d"), &prefs)?;
        copy_dir_files(Path::new("/var/lib/apt/lists"), &lists)?;
        self.private = Some(dir);
        Ok(())
    }

    /// Adds `suite` from `uri` through the private state and reads its package list.
    fn add_suite(&mut self, uri: &str, suite: &str) -> Result<()> {
        self.go_private()?;
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

    /// Writes an apt preferences entry into the private state: `package` is `src:NAME`
    /// or a binary package name, `pin` a `Pin:` value.
    fn pin(&mut self, package: &str, pin: &str, why: String) -> Result<()> {
        self.go_private()?;
        let dir = self.private.as_ref().expect("made above").path();
        let file = format!("preferences.d/sal-{}.pref", package.replace(':', "-"));
        std::fs::write(
            dir.join(file),
            format!("Package: {package}\nPin: {pin}\nPin-Priority: 990\n"),
        )?;
        self.pins.push((package.into(), pin.into(), why));
        Ok(())
    }

    /// Plans installing `packages` (none of them installed) as one transaction that
    /// removes and downgrades nothing.
    pub fn plan(&mut self, packages: &[String]) -> Result<Plan> {
        let mut transaction = Transaction {
            packages: packages.to_vec(),
        };
        let sim = self.simulate(&transaction)?;
        let harm = self.harm(&sim);
        if harm.is_empty() {
            return Ok(self.plan_of(transaction, sim, Vec::new()));
        }
        // Each missing package that shares its source with a harmed installed one is
        // pinned to that one's version.
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
            let refused = harm.into_iter().map(|(_, why)| why).collect();
            return Ok(self.plan_of(transaction, sim, refused));
        }
        let mut pinned_suite = None;
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
            let source = format!("src:{}", inst.source);
            if !self.pins.iter().any(|(s, _, _)| *s == source) {
                let why = format!(
                    "{p} from {suite}, like the installed {} {}",
                    inst.package, inst.version
                );
                // binNMUs of the source version end in +bN.
                self.pin(&source, &format!("version {}*", inst.source_version), why)?;
            }
            pinned_suite = Some(suite);
            for q in transaction.packages.iter_mut().filter(|q| *q == p) {
                *q = format!("{p}={version}");
            }
        }
        // A pinned package may need newer dependencies than the candidates (qemu 10
        // needs backports' seabios): each one apt names is taken from the same suite, a
        // bounded number of times, every pin shown in the plan.
        let suite = pinned_suite.expect("at least one package was pinned");
        for _ in 0..16 {
            let why = match self.try_simulate(&transaction)? {
                Ok(sim) => {
                    let refused = self.harm(&sim).into_iter().map(|(_, why)| why).collect();
                    return Ok(self.plan_of(transaction, sim, refused));
                }
                Err(why) => why,
            };
            let new: Vec<String> = parse_unmet(&why)
                .into_iter()
                .filter(|d| !self.pins.iter().any(|(p, _, _)| p == d))
                .collect();
            if new.is_empty() {
                bail!(
                    "apt cannot install {}:\n{why}",
                    transaction.packages.join(" ")
                );
            }
            for dep in new {
                let why = format!("a dependency of the pinned packages, from {suite}");
                self.pin(&dep, &format!("release n={suite}"), why)?;
            }
        }
        bail!(
            "apt still cannot install {} after pinning 16 rounds of dependencies",
            transaction.packages.join(" ")
        )
    }

    fn plan_of(
        &self,
        transaction: Transaction,
        simulation: Simulation,
        refused: Vec<String>,
    ) -> Plan {
        Plan {
            added_suites: self.added.clone(),
            pins: self.pins.clone(),
            transaction,
            simulation,
            refused,
        }
    }

    /// The plan as a person reads it: added suites, pins, the command and what it does.
    pub fn describe(&self, plan: &Plan) -> String {
        let mut out = String::new();
        for (suite, uri) in &plan.added_suites {
            out.push_str(&format!(
                "  suite {suite} from {uri}, for this install only (a private apt state; this machine's sources stay as they are)\n"
            ));
        }
        for (source, version, why) in &plan.pins {
            out.push_str(&format!("  pin {source} to {version}: {why}\n"));
        }
        let sim = &plan.simulation;
        let new = sim.installs.iter().filter(|(_, o, _)| o.is_none()).count();
        out.push_str(&format!(
            "  {}\n  installs {new} new packages, upgrades {}, removes {}\n",
            self.command_line(&plan.transaction),
            sim.installs.len() - new,
            sim.removals.len()
        ));
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
    fn unmet_dependencies_from_apt_refusal() {
        let text = "The following packages have unmet dependencies:
 qemu-system-x86 : Depends: seabios (> 1.16.3-1~) but 1.16.2-1 is to be installed
                   Depends: ipxe-qemu (>= 1.21) but 1.0.0 is to be installed
 libdw1 : Depends: libelf1 (= 0.188-2.1) but 0.192-4~bpo12+1 is to be installed
 foo : Depends: bar but it is not installable
E: Unable to correct problems, you have held broken packages.";
        assert_eq!(parse_unmet(text), ["seabios", "ipxe-qemu", "libelf1"]);
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
