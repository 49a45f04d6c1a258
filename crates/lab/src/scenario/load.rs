//! Reading scenarios: a TOML file, or a directory of unit files beside its
//! `scenario.toml`; each is checked ([`super::check`]) before it is returned.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::scenario::check::key_with_nul;
use crate::scenario::files::{self, Rewrite};
use crate::scenario::schema::Scenario;

impl Scenario {
    /// A scenario directory: `dir/scenario.toml` and the files beside it.
    pub fn load_dir(dir: &Path) -> Result<Scenario> {
        let manifest = files::manifest(dir);
        let mut s = Self::parse(&manifest)?;
        s.name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let p = manifest.display();
        if s.socket.is_some() || s.service.is_some() || s.quadlet.is_some() || !s.helper.is_empty()
        {
            bail!(
                "{p}: a scenario directory's units are its files; [socket], [service], [quadlet] and [[helper]] belong to TOML scenarios"
            );
        }
        s.dir_files = files::read_dir(dir, &s.files)?;
        for (name, spec) in &s.files {
            spec.mode_bits()
                .map_err(|e| anyhow::anyhow!("{p}: [files.{name:?}]: {e}"))?;
            if !spec.dest.starts_with('/') && !spec.dest.starts_with("{home}/") {
                bail!(
                    "{p}: [files.{name:?}]: dest = {:?}: expected an absolute path or {{home}}/...",
                    spec.dest
                );
            }
            if !["user", "root"].contains(&spec.owner.as_str()) {
                bail!(
                    "{p}: [files.{name:?}]: owner = {:?}: expected user or root",
                    spec.owner
                );
            }
        }
        let units = files::unit_names(&s.dir_files);
        if units.is_empty() && files::quadlet_services(&s.dir_files).is_empty() {
            bail!("{}: no unit or quadlet file to install", dir.display());
        }
        // A template needs an instance: a step that names one, or an instance drop-in.
        let instances = s.instances();
        let accepting = files::accepting_sockets(&s.dir_files);
        for t in units.iter().filter(|u| files::is_template(u)) {
            // An Accept=yes socket starts an instance of its template per connection.
            let prefix = t.split_once('@').map(|x| x.0).unwrap_or_default();
            if t.ends_with(".service") && accepting.contains(&format!("{prefix}.socket")) {
                continue;
            }
            let used = instances
                .iter()
                .any(|i| files::template_of(i).as_deref() == Some(t.as_str()))
                || units.iter().any(|u| {
                    // A template service is instantiated by its template socket.
                    files::is_template(u)
                        && u != t
                        && u.split_once('@').map(|x| x.0) == t.split_once('@').map(|x| x.0)
                        && instances
                            .iter()
                            .any(|i| files::template_of(i).as_deref() == Some(u.as_str()))
                });
            if !used {
                bail!(
                    "{}: the template {t} has no instance: start one in a step (`unit = \"{}\"`) or add an instance drop-in",
                    dir.join(t).display(),
                    t.replacen("@.", "@NAME.", 1)
                );
            }
        }
        s.validate(&manifest)?;
        Ok(s)
    }

    fn parse(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(key) = key_with_nul(&value, "") {
            bail!(
                "{}: key `{key}` holds a NUL character, which no command line or unit can carry",
                path.display()
            );
        }
        let mut s: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        s.file = path.to_path_buf();
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        let mut s = Self::parse(path)?;
        s.name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !s.files.is_empty() || s.rewrite != Rewrite::default() {
            bail!(
                "{}: [files] and [rewrite] belong to scenario directories (NAME/scenario.toml beside the files)",
                path.display()
            );
        }
        s.validate(path)?;
        Ok(s)
    }
}

/// A scenario file or directory (one with a `scenario.toml`).
pub fn load_path(path: &Path) -> Result<Scenario> {
    if path.is_dir() {
        Scenario::load_dir(path)
    } else {
        Scenario::load(path)
    }
}

/// Every scenario under `dir` (`*.toml` files and directories with a `scenario.toml`),
/// sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            all.push(Scenario::load(&p)?);
        } else if files::manifest(&p).is_file() {
            all.push(Scenario::load_dir(&p)?);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios() -> Vec<Scenario> {
        load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios")).unwrap()
    }

    /// A directory's units are loaded as the journal watches them: so they must hold no
    /// template (systemd cannot load one) and every unit file and quadlet service that
    /// is not one.
    #[test]
    fn a_directorys_watched_units_are_what_can_be_loaded() {
        let dirs: Vec<Scenario> = scenarios()
            .into_iter()
            .filter(|s| !s.dir_files.is_empty())
            .collect();
        assert!(dirs.len() >= 3, "{} scenario directories", dirs.len());
        for s in &dirs {
            let units = s.journal_units();
            assert!(
                !units.iter().any(|u| files::is_template(u)),
                "{}: {units:?}",
                s.name
            );
            for u in files::unit_names(&s.dir_files)
                .into_iter()
                .chain(files::quadlet_services(&s.dir_files))
                .filter(|u| !files::is_template(u))
            {
                assert!(units.contains(&u), "{}: {u} not in {units:?}", s.name);
            }
        }
    }

    #[test]
    fn shipped_scenarios_load_and_render() {
        let all = scenarios();
        assert!(all.iter().any(|s| s.name == "echo-tcp4"));
        for s in &all {
            if let Some(u) = s.socket_unit() {
                u.render().unwrap();
            }
            if let Some(u) = s.service_unit("crun") {
                u.render().unwrap();
            }
            for (_, u) in s.helper_units() {
                u.render().unwrap();
            }
        }
    }

    #[test]
    fn echo_tcp4_service_golden() {
        let s = scenarios()
            .into_iter()
            .find(|s| s.name == "echo-tcp4")
            .unwrap();
        assert_eq!(
            s.service_unit("runc").unwrap().render().unwrap(),
            "[Unit]\nDescription=socket-activation-lab echo-tcp4\nRequires=echo.socket\nAfter=echo.socket\n\n[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/bin/podman run --rm --replace --name echo --cgroups=no-conmon --sdnotify=conmon --runtime runc --network=none --pull=never localhost/socket-activate-echo:latest\n"
        );
    }

    #[test]
    fn bad_scenario_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        std::fs::write(&p, "description = \"x\"\n[[steps]]\ndo = \"jump\"\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p).unwrap_err());
        assert!(
            e.contains("x.toml") && e.contains("unknown variant `jump`"),
            "{e}"
        );
    }

    #[test]
    fn known_bug_needs_runtime_or_tool() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\nversions = \"<1\"\nissue = \"u\"\npattern = \"x\"\nstep = 1\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p).unwrap_err());
        assert!(
            e.contains("needs exactly one of `runtime` and `tool`"),
            "{e}"
        );
    }

    fn load_text(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        format!("{:#}", Scenario::load(&p).unwrap_err())
    }

    #[rstest::rstest]
    #[case::range("[requires]\npodman = \"=>4.4\"\n", "requires.podman = \"=>4.4\"")]
    #[case::empty_range("[requires]\nsystemd = \"\"\n", "an empty range")]
    #[case::negative_timeout(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:3000\"\ntimeout = -1.0\n",
        "step 2 (probe): timeout = -1: expected a positive number"
    )]
    #[case::nan_timeout(
        "[[steps]]\ndo = \"run\"\ncommand = \"true\"\ntimeout = nan\n",
        "step 2 (run): timeout = NaN"
    )]
    #[case::address(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1\"\n",
        "step 2 (probe): address: address \"tcp4:127.0.0.1\""
    )]
    #[case::placeholder(
        "[[steps]]\ndo = \"run\"\ncommand = \"podman run {imag}\"\n",
        "unknown placeholder {imag}"
    )]
    #[case::nul(
        "[[steps]]\ndo = \"run\"\ncommand = \"a\\u0000b\"\n",
        "key `steps[1].command` holds a NUL"
    )]
    #[case::must_fail_retry(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:1\"\nfail = \"refused\"\nretry = true\n",
        "a probe that must fail takes neither `retry` nor `source`"
    )]
    #[case::outbound_failure_unsaid(
        "[[steps]]\ndo = \"netinfo\"\ncontainer = \"echo\"\noutbound = \"tcp4:10.0.2.2:1\"\noutbound_ok = false\n",
        "step 2 (netinfo): outbound_ok = false needs `outbound_error`"
    )]
    #[case::outbound_error_on_success(
        "[[steps]]\ndo = \"netinfo\"\ncontainer = \"echo\"\noutbound = \"tcp4:10.0.2.2:1\"\noutbound_ok = true\noutbound_error = \"x\"\n",
        "step 2 (netinfo): `outbound_error` goes with outbound_ok = false"
    )]
    #[case::outbound_ok_without_address(
        "[[steps]]\ndo = \"netinfo\"\ncontainer = \"echo\"\noutbound_ok = true\n",
        "step 2 (netinfo): `outbound_ok` needs `outbound`"
    )]
    #[case::rewritten_without_peer(
        "[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:1\"\nsource = \"rewritten\"\n",
        "source = \"rewritten\" needs `peer`"
    )]
    #[case::bug_runtime(
        "[[known_bug]]\nruntime = \"youki\"\nversions = \"*\"\nissue = \"u\"\npattern = \"x\"\nstep = 1\n",
        "runtime = \"youki\": expected runc or crun"
    )]
    #[case::decisive_bug_at_a_reboot(
        "[[known_bug]]\nruntime = \"crun\"\nversions = \"*\"\nissue = \"u\"\npattern = \"x\"\nstep = 1\ndecisive = true\n",
        "`decisive` ends a probe's wait, and step 1 is not a probe that is to answer"
    )]
    #[case::journal_within_with_lacks(
        "[[steps]]\ndo = \"journal\"\nlacks = \"x\"\nwithin = 5\n",
        "step 2 (journal): `within` waits for a text to appear"
    )]
    #[case::journal_within_negative(
        "[[steps]]\ndo = \"journal\"\ncontains = \"x\"\nwithin = -1\n",
        "`within = -1`: give seconds between 0 and 600"
    )]
    #[case::is_failed_within_not_failing(
        "[[steps]]\ndo = \"is-failed\"\nunit = \"echo.service\"\nfailed = false\nwithin = 5\n",
        "step 2 (is-failed): `within` waits for an active unit to fail"
    )]
    #[case::is_failed_within_too_long(
        "[[steps]]\ndo = \"is-failed\"\nunit = \"echo.service\"\nwithin = 601\n",
        "`within = 601`: give seconds between 0 and 600"
    )]
    fn bad_values_are_load_errors_naming_file_key_and_value(
        #[case] extra: &str,
        #[case] message: &str,
    ) {
        let text = format!("description = \"d\"\n[[steps]]\ndo = \"reboot\"\n{extra}");
        let e = load_text(&text);
        assert!(e.contains("bad.toml") && e.contains(message), "{e}");
    }

    #[rstest::rstest]
    #[case::claim_unjudged(
        "claim = \"c\"\n",
        "a scenario with a `claim` names the steps that judge it"
    )]
    #[case::claim_judged_by_a_reboot(
        "claim = \"c\"\nclaim_steps = [1]\n",
        "step 1 (reboot) judges nothing"
    )]
    #[case::claim_step_out_of_range(
        "claim = \"c\"\nclaim_steps = [3]\n",
        "claim_step = 3: the scenario has steps 1 to 2"
    )]
    #[case::claim_steps_without_claim("claim_steps = [2]\n", "claim_steps without a `claim`")]
    fn a_claim_names_the_steps_that_judge_it(#[case] top: &str, #[case] message: &str) {
        let text = format!(
            "description = \"d\"\n{top}[[steps]]\ndo = \"reboot\"\n[[steps]]\ndo = \"start\"\nunit = \"echo.socket\"\n"
        );
        let e = load_text(&text);
        assert!(e.contains("bad.toml") && e.contains(message), "{e}");
    }

    #[test]
    fn an_unknown_key_on_a_step_without_arguments_is_an_error() {
        let e = load_text("description = \"d\"\n[[steps]]\ndo = \"reboot\"\nclaim = \"c\"\n");
        assert!(e.contains("unknown field `claim`"), "{e}");
    }

    #[test]
    fn placeholders_and_addresses_that_are_fine_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ok.toml");
        std::fs::write(
            &p,
            "description = \"d\"\n[[steps]]\ndo = \"probe\"\naddress = \"unix:{home}/s\"\n[[steps]]\ndo = \"run\"\ncommand = \"podman run --runtime {runtime} {image}; echo ${HOME} {uid} | awk {print $1}; podman ps --format {{.Names}}{{println}}\"\n",
        )
        .unwrap();
        Scenario::load(&p).unwrap();
    }
}
