//! Installing what a scenario declares on a trial's guest: sysctls, the client
//! namespace, its units or its directory's files (with their declared rewrites), and
//! loading them, which fails on what systemd or the quadlet generator said about a file
//! the lab wrote.

use std::time::Duration;

use anyhow::{Result, bail};
use vm::guest::{Guest, GuestFile};
use vm::proc::quote;
use vm::ready::ECHO_IMAGE;
use vm::trial_vm::TrialVm;

use crate::scenario::files::{self, Destination};
use crate::scenario::schema::{Scenario, Scope};

/// The unit directory of `scope` and the owner of the files written there.
fn unit_dir(guest: &Guest, scope: Scope) -> (String, Option<String>) {
    match scope {
        Scope::User => (
            format!("/home/{}/.config/systemd/user", guest.user.name),
            Some(guest.user.name.clone()),
        ),
        Scope::System => ("/etc/systemd/system".into(), None),
    }
}

/// The guest address a client in the `client` namespace reaches the guest at.
pub const CLIENT_NETNS_SERVER: &str = "192.0.2.1";

/// A network namespace `client` on a veth pair: the guest end is
/// [`CLIENT_NETNS_SERVER`]/24, the client end 192.0.2.10/24, so a client there arrives
/// from outside the guest's loopback, as a remote client would.
pub fn add_client_netns(g: &Guest) -> Result<()> {
    g.root_ok(
        &format!(
            "set -e; ip netns add client; ip link add lab0 type veth peer name lab1; ip link set lab1 netns client; \
             ip addr add {CLIENT_NETNS_SERVER}/24 dev lab0; ip link set lab0 up; ip -n client addr add 192.0.2.10/24 dev lab1; \
             ip -n client link set lab1 up; ip -n client link set lo up; ip -n client route add default via {CLIENT_NETNS_SERVER}"
        ),
        Duration::from_secs(120),
    )?;
    Ok(())
}

/// Checks that the container images the scenario's `prepare.images` names are in the
/// guest's storage: every ready state imports them ([`vm::container_image`]).
pub fn check_images(vm: &TrialVm, scenario: &Scenario) -> Result<()> {
    use vm::container_image as ci;
    for image in &scenario.prepare.images {
        let g = &vm.guest;
        g.log_heading(&format!(
            "the {image} container image, from the ready state"
        ));
        let name = ci::local_name(image);
        let out = g.user(
            &format!("podman image exists {}", quote(&name)),
            Duration::from_secs(60),
        )?;
        if !out.success() {
            bail!(
                "the ready state has no {name} (it imports every image the lab builds): {}",
                out.combined().trim()
            );
        }
    }
    Ok(())
}

/// Puts what the scenario declares into the guest (each unit also into the trial
/// directory, as written), reloads the manager, and fails when systemd or the quadlet
/// generator complained about a file it wrote (an unknown key is only a warning to
/// systemd, which then runs the unit without it).
pub fn prepare_guest(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &str,
    units: &[String],
) -> Result<()> {
    let g = &vm.guest;
    g.log_heading("preparing the guest: files, units, loading them");
    let t = Duration::from_secs(120);
    if !scenario.prepare.sysctl.is_empty() {
        let text: String = scenario
            .prepare
            .sysctl
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        g.write_file(
            "/etc/sysctl.d/90-socket-activation-lab.conf",
            text.as_bytes(),
            None,
            0o644,
        )?;
        g.root_ok(
            "sysctl -q -p /etc/sysctl.d/90-socket-activation-lab.conf",
            t,
        )?;
    }
    if scenario.prepare.client_netns {
        add_client_netns(g)?;
    }
    let (files, units) = if scenario.dir_files.is_empty() {
        lab_units(vm, scenario, runtime)?
    } else {
        dir_files(vm, scenario, runtime, units)?
    };
    let written: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    // A quadlet file only becomes a unit through podman's generator: without one (podman
    // before 4.4) the cause is that, not the "not found" unit it would have made.
    let quadlets: Vec<&String> = written
        .iter()
        .filter(|p| p.starts_with(&quadlet_dir(g, scenario.scope).0))
        .collect();
    if !quadlets.is_empty() {
        let generator = quadlet_generator(scenario.scope);
        let found = g.root(&format!("test -e {generator}"), t)?;
        if !found.success() {
            bail!(
                "this guest's podman has no quadlet generator (no {generator}; quadlet is new in podman 4.4), so these quadlet files cannot become units: {}",
                quadlets
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    // systemd parses a unit file when it loads the unit: load them all now, so a
    // complaint comes before any step. One round trip writes the files, reads the
    // journal's position, loads the units and reads what was logged meanwhile.
    let manager = scenario.scope.manager();
    let load = load_script(manager.systemctl(), &units, reload_always(scenario));
    let as_manager = g.beside_manager(manager, load);
    let out = g.write_files(&files, &load_after_files(&as_manager))?;
    if !out.success() {
        bail!(
            "daemon-reload, loading the units, or reading the journal around it failed: {}",
            out.combined()
        );
    }
    // Without the journal since the files were written there is nothing to check them
    // against: never a silent pass of the check.
    let Some((loaded, logged)) = out.stdout.split_once(&format!("{JOURNAL_MARK}\n")) else {
        bail!(
            "loading the units printed no journal (no {JOURNAL_MARK:?} line): {}",
            out.combined()
        );
    };
    let not_loaded: Vec<&str> = loaded
        .lines()
        .filter(|l| l.starts_with("LoadState=") && l.trim() != "LoadState=loaded")
        .collect();
    let said = complaints_about(logged, &written);
    let mut complaints = unexpected_complaints(&said, &scenario.load_complaints);
    for c in &said {
        if !complaints.contains(c) {
            g.log_heading(&format!(
                "systemd said on loading the units, as expected: {c}"
            ));
        }
    }
    if !not_loaded.is_empty() {
        complaints.push(format!("not every unit loaded:\n{}", loaded.trim()));
    }
    if !complaints.is_empty() {
        let what = if scenario.load_complaints.is_empty() {
            "systemd does not take the units as written (it said on loading them)"
        } else {
            "what systemd said on loading the units is not the scenario's load_complaints"
        };
        return Err(UnitsRefused(format!("{what}:\n{}", complaints.join("\n"))).into());
    }
    Ok(())
}

/// What systemd (or the quadlet generator) said on loading the units was not what the
/// scenario's `load_complaints` expects: the units' load as a step of its own (step 0),
/// which judges a claim about what systemd says of a unit.
#[derive(Debug)]
pub struct UnitsRefused(pub String);

impl std::fmt::Display for UnitsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnitsRefused {}

/// The shell, run as root once the files are written, that reads the journal's position,
/// runs `load` (the units' loading, beside their manager) and prints its output, then
/// [`JOURNAL_MARK`] and what the journal got since the position; it exits as `load` did.
fn load_after_files(load: &str) -> String {
    format!(
        "c=$(journalctl -q -n 0 --show-cursor); case $c in '-- cursor: '?*) ;; *) echo \"lab: no journal cursor in: $c\" >&2; exit 1;; esac\n\
         ( {load} ); r=$?; journalctl --sync || {{ echo 'lab: journalctl --sync failed' >&2; exit 125; }}; echo '{JOURNAL_MARK}'; journalctl --no-pager -q -o cat --after-cursor=\"${{c#-- cursor: }}\" || {{ echo 'lab: reading the journal since the files were written failed' >&2; exit 125; }}; exit $r"
    )
}

/// Where podman puts its generator for quadlet files of `scope` (podman 4.4 and later).
fn quadlet_generator(scope: Scope) -> &'static str {
    match scope {
        Scope::User => "/usr/lib/systemd/user-generators/podman-user-generator",
        Scope::System => "/usr/lib/systemd/system-generators/podman-system-generator",
    }
}

/// The line between the units' properties and the journal in [`prepare_guest`]'s output.
const JOURNAL_MARK: &str = "-- journal since the files were written --";

/// A scenario directory's files run as their report wrote them, and its users reload the
/// manager after writing them; a quadlet only becomes a unit when its generator runs,
/// which only a reload does.
fn reload_always(scenario: &Scenario) -> bool {
    !scenario.dir_files.is_empty() || scenario.quadlet.is_some()
}

/// The shell script that loads `units` in the manager `systemctl` talks to and prints their `Id`, `LoadState`, `LoadError` and `NeedDaemonReload`.
/// systemd loads a unit from its file when the unit is first named, so the lab's own
/// new units need no `daemon-reload` (under TCG 0.6-1.1 s of the guest's time per trial);
/// it runs when `always` holds or when the manager says a unit's file changed since it
/// loaded it (`NeedDaemonReload=yes`), so the units are always the files as written.
fn load_script(systemctl: &str, units: &[String], always: bool) -> String {
    let names: Vec<String> = units.iter().map(|u| quote(u)).collect();
    let show = format!(
        "{systemctl} show -p Id,LoadState,LoadError,NeedDaemonReload -- {}",
        names.join(" ")
    );
    let reload = format!("{systemctl} daemon-reload");
    if always {
        format!("{reload} && {show}")
    } else {
        format!(
            "s=$({show}) || exit; case \"$s\" in *NeedDaemonReload=yes*) {reload} && s=$({show}) || exit;; esac; printf '%s\\n' \"$s\""
        )
    }
}

/// The units the lab renders from a TOML scenario (each also written to the trial
/// directory): the files to write and the units to load.
fn lab_units(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &str,
) -> Result<(Vec<GuestFile>, Vec<String>)> {
    let g = &vm.guest;
    let (dir, owner) = unit_dir(g, scenario.scope);
    let mut files: Vec<GuestFile> = Vec::new();
    let mut write = |name: &str, text: &str, dir: &str| -> Result<()> {
        std::fs::write(vm.dir.join(name), text)?;
        files.push(GuestFile {
            path: format!("{dir}/{name}"),
            content: text.as_bytes().to_vec(),
            owner: owner.clone(),
            mode: 0o644,
        });
        Ok(())
    };
    if let Some(u) = scenario.socket_unit() {
        write(
            &format!("{}.socket", scenario.unit),
            &u.render().map_err(anyhow::Error::msg)?,
            &dir,
        )?;
    }
    if let Some(u) = scenario.service_unit(runtime) {
        write(
            &format!("{}.service", scenario.unit),
            &u.render().map_err(anyhow::Error::msg)?,
            &dir,
        )?;
    }
    for (name, u) in scenario.helper_units() {
        write(&name, &u.render().map_err(anyhow::Error::msg)?, &dir)?;
    }
    if let Some(text) = scenario.quadlet_file(runtime) {
        write(
            &format!("{}.container", scenario.unit),
            &text,
            &quadlet_dir(g, scenario.scope).0,
        )?;
    }
    let mut units: Vec<String> = files
        .iter()
        .filter_map(|f| f.path.rsplit('/').next())
        .filter(|name| !name.ends_with(".container"))
        .map(String::from)
        .collect();
    if scenario.quadlet.is_some() {
        units.push(format!("{}.service", scenario.unit));
    }
    Ok((files, units))
}

/// Where quadlet files of `scope` go (podman-systemd.unit(5)) and who owns them.
fn quadlet_dir(g: &Guest, scope: Scope) -> (String, Option<String>) {
    match scope {
        Scope::User => (
            format!("/home/{}/.config/containers/systemd", g.user.name),
            Some(g.user.name.clone()),
        ),
        Scope::System => ("/etc/containers/systemd".into(), None),
    }
}

/// A scenario directory's files as they are, with only the declared rewrites (each
/// written to the trial directory as `rewrites/NAME.diff`, every file to install as
/// `files/NAME`); where no file names a runtime, the trial's goes into the test user's
/// containers.conf. The files to write and the units to load.
fn dir_files(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &str,
    units: &[String],
) -> Result<(Vec<GuestFile>, Vec<String>)> {
    let g = &vm.guest;
    let home = format!("/home/{}", g.user.name);
    let (unit_dir, unit_owner) = unit_dir(g, scenario.scope);
    let mut written = Vec::new();
    let mut installed: Vec<(String, String)> = Vec::new();
    let keep = |sub: &str, name: &str, text: &str| -> Result<()> {
        let path = vm.dir.join(sub).join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&vm.dir))?;
        std::fs::write(path, text)?;
        Ok(())
    };
    for f in &scenario.dir_files {
        let (text, diff) = files::rewritten(f, &scenario.rewrite, runtime, ECHO_IMAGE)?;
        let (path, owner, mode) = match &f.dest {
            Destination::Unit(rel) => (format!("{unit_dir}/{rel}"), unit_owner.clone(), 0o644),
            Destination::Quadlet(rel) => {
                let (dir, owner) = quadlet_dir(g, scenario.scope);
                (format!("{dir}/{rel}"), owner, 0o644)
            }
            Destination::Declared(spec) => (
                spec.dest.replace("{home}", &home),
                (spec.owner == "user").then(|| g.user.name.clone()),
                spec.mode_bits().map_err(anyhow::Error::msg)?,
            ),
        };
        keep("files", &f.name, &text)?;
        if !diff.is_empty() {
            keep("rewrites", &format!("{}.diff", f.name), &diff)?;
        }
        written.push(GuestFile {
            path,
            content: text.as_bytes().to_vec(),
            owner,
            mode,
        });
        installed.push((f.name.clone(), text));
    }
    // Trials reach no registry: an image no rewrite maps must already be in the guest,
    // in the storage of the scope's podman (root's for a system scenario).
    for (file, line, image) in files::quadlet_images(&installed) {
        let exists = g.beside(
            scenario.scope.manager(),
            &format!("podman image exists {}", quote(image)),
            Duration::from_secs(60),
        )?;
        if !exists.success() {
            bail!(
                "{file}:{line}: the image {image:?} is not in the guest and [rewrite] images does not map it to one that is (trials have no registry)"
            );
        }
    }
    if !files::names_a_runtime(&scenario.dir_files) {
        let conf = files::containers_conf(runtime);
        written.push(GuestFile {
            path: format!("{home}/.config/containers/containers.conf"),
            content: conf.as_bytes().to_vec(),
            owner: Some(g.user.name.clone()),
            mode: 0o644,
        });
        if scenario.scope == Scope::System {
            written.push(GuestFile {
                path: "/etc/containers/containers.conf.d/90-socket-activation-lab.conf".into(),
                content: conf.as_bytes().to_vec(),
                owner: None,
                mode: 0o644,
            });
        }
        keep("files", "containers.conf", &conf)?;
    }
    // The units the journal watches: the directory's units and quadlet services but its
    // templates, which cannot be loaded, and the instances of templates it uses.
    Ok((written, units.to_vec()))
}

/// The lines of `journal` that name one of the files in `paths`: systemd's parser and the
/// quadlet generator name the file (and line) of every key or section they ignore.
pub fn complaints_about(journal: &str, paths: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in journal.lines().map(str::trim) {
        // systemd logs each complaint twice (to the journal and through stderr).
        if paths.iter().any(|p| line.contains(p.as_str())) && !lines.iter().any(|l| l == line) {
            lines.push(line.to_string());
        }
    }
    lines
}

/// The complaints in `said` that no text of `expected` accounts for, and for each
/// expected text that none of them contains, a line saying it was not said.
pub fn unexpected_complaints(said: &[String], expected: &[String]) -> Vec<String> {
    let mut out: Vec<String> = said
        .iter()
        .filter(|l| !expected.iter().any(|e| l.contains(e.as_str())))
        .cloned()
        .collect();
    for e in expected {
        if !said.iter().any(|l| l.contains(e.as_str())) {
            out.push(format!(
                "(the scenario's load_complaints expects {e:?}; systemd did not say it)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complaints_name_the_written_files() {
        // As systemd 257 and podman 5.4.2's quadlet generator log them on debian-13
        // (crates/lab/tests/unit_checks.rs), around lines about other things.
        let journal = "Reloading requested from client PID 812 ('systemctl') (unit session-1.scope)...\n\
/home/test/.config/systemd/user/echo.service:10: Unknown key 'RestrictAddressFamilie' in section [Service], ignoring.\n\
/home/test/.config/systemd/user/echo.service:10: Unknown key 'RestrictAddressFamilie' in section [Service], ignoring.\n\
quadlet-generator[572]: converting \"echo.container\": unsupported key 'Netwrk' in group 'Container' in /home/test/.config/containers/systemd/echo.container\n\
Reloading finished in 212 ms.\n";
        let written = vec![
            "/home/test/.config/systemd/user/echo.service".to_string(),
            "/home/test/.config/containers/systemd/echo.container".to_string(),
        ];
        let c = complaints_about(journal, &written);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("RestrictAddressFamilie"));
        assert!(complaints_about(journal, &["/etc/systemd/system/echo.socket".into()]).is_empty());
    }

    #[test]
    fn expected_load_complaints_are_taken_and_only_they() {
        // As systemd 252 says it on debian-12 about openfile-unknown-key's unit.
        let of = |line: u32| {
            format!(
                "/home/test/.config/systemd/user/openfile.service:{line}: Unknown key 'OpenFile' in section [Service], ignoring."
            )
        };
        let typo = "/home/test/.config/systemd/user/openfile.service:9: Unknown key 'NoNewPrivilege' in section [Service], ignoring.".to_string();
        let expected = vec!["Unknown key 'OpenFile' in section [Service]".to_string()];
        assert!(unexpected_complaints(&[of(15), of(16)], &expected).is_empty());
        // Any other complaint still counts.
        assert_eq!(
            unexpected_complaints(&[of(15), typo.clone()], &expected),
            vec![typo.clone()]
        );
        // An expected complaint that systemd did not make is one too.
        let missing = unexpected_complaints(&[], &expected);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("did not say it"), "{missing:?}");
        // Without expectations every complaint counts.
        assert_eq!(
            unexpected_complaints(std::slice::from_ref(&typo), &[]),
            vec![typo]
        );
    }

    /// Runs `load_script`'s script in sh with a `systemctl` that logs its arguments and
    /// answers `show` with `NeedDaemonReload=` `$NEED` until a `daemon-reload`.
    fn load_with_fake_systemctl(always: bool, need: &str) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("systemctl");
        let calls = dir.path().join("calls");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$*\" >> {calls}\n\
                 case \"$*\" in *daemon-reload*) touch {reloaded}; exit 0;; esac\n\
                 [ -e {reloaded} ] && NEED=no\n\
                 printf 'Id=echo.socket\\nLoadState=loaded\\nLoadError=\\nNeedDaemonReload=%s\\n' \"$NEED\"\n",
                calls = calls.display(),
                reloaded = dir.path().join("reloaded").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = load_script("systemctl --user", &["echo.socket".into()], always);
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("NEED", need)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (std::fs::read_to_string(&calls).unwrap(), stdout)
    }

    /// [`load_after_files`] run by sh with `load` and a stand-in `journalctl` whose
    /// `--show-cursor` prints `cursor` and whose read after a cursor prints the cursor.
    fn after_files(load: &str, cursor: &str) -> std::process::Output {
        let fake = format!(
            "journalctl() {{ case \"$*\" in *--show-cursor*) printf '%s\\n' {};; *--after-cursor=*) echo \"logged after ${{*##*--after-cursor=}}\";; esac; }}\n",
            vm::proc::quote(cursor)
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(fake + &load_after_files(load))
            .output()
            .unwrap()
    }

    #[test]
    fn the_load_after_the_files_gives_its_output_the_journal_since_and_its_status() {
        let out = after_files("echo LoadState=loaded; exit 3", "-- cursor: s=1;i=2");
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("LoadState=loaded\n{JOURNAL_MARK}\nlogged after s=1;i=2\n")
        );
        // No position, no load: the journal read would have nothing to start from.
        let out = after_files("echo loaded", "No entries");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no journal cursor in: No entries"),
            "{out:?}"
        );
        // A journal read that fails is a failure of the load, never an empty journal.
        let fake = "journalctl() { case \"$*\" in *--show-cursor*) echo '-- cursor: s=1';; *--after-cursor=*) return 1;; esac; }\n";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(fake.to_string() + &load_after_files("echo LoadState=loaded"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("reading the journal since the files were written failed"),
            "{out:?}"
        );
    }

    #[test]
    fn units_load_without_a_reload_unless_the_manager_or_the_scenario_needs_one() {
        let show = "--user show -p Id,LoadState,LoadError,NeedDaemonReload -- echo.socket";
        // New unit files: systemd loads them when named.
        let (calls, out) = load_with_fake_systemctl(false, "no");
        assert_eq!(calls, format!("{show}\n"));
        assert!(
            out.contains("LoadState=loaded\nLoadError=\nNeedDaemonReload=no"),
            "{out}"
        );
        // A unit the manager had loaded from an older file: reload, then show again.
        let (calls, out) = load_with_fake_systemctl(false, "yes");
        assert_eq!(calls, format!("{show}\n--user daemon-reload\n{show}\n"));
        assert!(out.contains("NeedDaemonReload=no"), "{out}");
        // A quadlet or a scenario directory's files: always.
        let (calls, _) = load_with_fake_systemctl(true, "no");
        assert_eq!(calls, format!("--user daemon-reload\n{show}\n"));
    }
}
