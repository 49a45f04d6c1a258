//! A scenario's actions on a trial's guest: installing what it declares (sysctls, the
//! client namespace, units, quadlets), then its steps, one function per kind of step.
//! A step that does not hold returns a [`StepFailure`]; a step that cannot be carried
//! out at all (ssh lost, QEMU gone) is an error.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vm::guest::{Guest, GuestFile, Since};
use vm::proc::Output;
use vm::proc::quote;
use vm::ready::ECHO_IMAGE;
use vm::target::User;
use vm::trial_vm::TrialVm;

use crate::scenario::files::{self, Destination};
use crate::scenario::schema::{Scenario, Scope, SourceAddress, Step, Who};
use crate::scenario::verdict::StepFailure;

/// What a step gives: `Ok(None)` when it held.
type StepResult = Result<Option<StepFailure>>;

/// A step that did not hold; [`run_steps`] adds its place and its journal lines.
fn failed(step: String, output: String) -> StepResult {
    Ok(Some(StepFailure {
        step,
        output,
        ..Default::default()
    }))
}

/// Fills the placeholders of a `run` command or a probe address.
fn expand(text: &str, runtime: &str, user: &User) -> String {
    text.replace("{runtime}", runtime)
        .replace("{image}", ECHO_IMAGE)
        .replace("{uid}", &user.uid.to_string())
        .replace("{home}", &format!("/home/{}", user.name))
}

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

fn systemctl(vm: &TrialVm, scope: Scope, args: &str) -> Result<Output> {
    vm.guest
        .systemctl(scope.manager(), args, Duration::from_secs(120))
}

/// `systemctl VERB UNIT...` with each unit name quoted.
fn systemctl_units(vm: &TrialVm, scope: Scope, verb: &str, units: &[String]) -> Result<Output> {
    let names: Vec<String> = units.iter().map(|u| quote(u)).collect();
    systemctl(vm, scope, &format!("{verb} {}", names.join(" ")))
}

/// The scenario's socket units that are in the failed state, if any.
fn failed_sockets(vm: &TrialVm, scenario: &Scenario) -> Result<Option<String>> {
    let sockets: Vec<String> = scenario
        .journal_units()
        .into_iter()
        .filter(|u| u.ends_with(".socket"))
        .collect();
    if sockets.is_empty() {
        return Ok(None);
    }
    let out = systemctl_units(vm, scenario.scope, "is-failed", &sockets)?;
    let failed: Vec<&str> = sockets
        .iter()
        .zip(out.stdout.lines())
        .filter(|(_, state)| state.trim() == "failed")
        .map(|(u, _)| u.as_str())
        .collect();
    Ok((!failed.is_empty()).then(|| failed.join(", ")))
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
pub fn prepare_guest(vm: &TrialVm, scenario: &Scenario, runtime: &str) -> Result<()> {
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
        dir_files(vm, scenario, runtime)?
    };
    let written: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    // A quadlet file only becomes a unit through podman's generator: without one (podman
    // before 4.4) the cause is that, not the "not found" unit it would have made.
    let quadlets: Vec<&String> = written
        .iter()
        .filter(|p| p.starts_with(&quadlet_dir(g)))
        .collect();
    if !quadlets.is_empty() {
        let found = g.root(&format!("test -e {QUADLET_USER_GENERATOR}"), t)?;
        if !found.success() {
            bail!(
                "this guest's podman has no quadlet generator (no {QUADLET_USER_GENERATOR}; quadlet is new in podman 4.4), so these quadlet files cannot become units: {}",
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

/// Where podman puts its user generator for quadlet files (podman 4.4 and later).
const QUADLET_USER_GENERATOR: &str = "/usr/lib/systemd/user-generators/podman-user-generator";

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
            &quadlet_dir(g),
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

fn quadlet_dir(g: &Guest) -> String {
    format!("/home/{}/.config/containers/systemd", g.user.name)
}

/// A scenario directory's files as they are, with only the declared rewrites (each
/// written to the trial directory as `rewrites/NAME.diff`, every file to install as
/// `files/NAME`); where no file names a runtime, the trial's goes into the test user's
/// containers.conf. The files to write and the units to load.
fn dir_files(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &str,
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
            Destination::Quadlet(rel) => (
                format!("{}/{rel}", quadlet_dir(g)),
                Some(g.user.name.clone()),
                0o644,
            ),
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
    // Trials reach no registry: an image no rewrite maps must already be in the guest.
    for (file, line, image) in files::quadlet_images(&installed) {
        let exists = g.user(
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
    let mut units: Vec<String> = files::unit_names(&scenario.dir_files)
        .into_iter()
        .filter(|u| !files::is_template(u))
        .collect();
    // A template (a unit file or a quadlet's) cannot be loaded, only its instances.
    units.extend(
        files::quadlet_services(&scenario.dir_files)
            .into_iter()
            .filter(|u| !files::is_template(u)),
    );
    units.extend(
        scenario
            .journal_units()
            .into_iter()
            .filter(|u| files::template_of(u).is_some()),
    );
    units.sort();
    units.dedup();
    Ok((written, units))
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

/// The last 300 journal lines of the scenario's units (logged after `after`, when given).
pub fn journal(vm: &TrialVm, scenario: &Scenario, after: Option<Since>) -> String {
    // An Accept=yes socket starts a service instance per connection, named after the
    // connection: no name to match in advance, so the test user's whole journal (its
    // user manager, podman, conmon and the containers all log as the user).
    if scenario.scope == Scope::User && !files::accepting_sockets(&scenario.dir_files).is_empty() {
        return vm.guest.user_journal(300, after);
    }
    let units = scenario.journal_units();
    let refs: Vec<&str> = units.iter().map(String::as_str).collect();
    vm.guest
        .unit_journal(scenario.scope.manager(), &refs, 300, after)
}

/// Runs the steps in order; the first that does not hold ends the trial, with the
/// journal lines logged from when it began (the guest records the journal's position
/// with the step's first command, so evidence is never a line logged before the step
/// that failed).
pub fn run_steps(vm: &TrialVm, scenario: &Scenario, runtime: &str) -> StepResult {
    for (i, step) in scenario.steps.iter().enumerate() {
        vm.guest.log_heading(&format!(
            "step {} ({}): {}",
            i + 1,
            step.kind(),
            step.summary()
        ));
        vm.guest.mark_journal_with_next_command();
        let result = match step {
            Step::Start { unit }
            | Step::Stop { unit }
            | Step::Enable { unit }
            | Step::ResetFailed { unit } => unit_verb(vm, scenario, step, unit),
            Step::Probe { .. } => probe(vm, scenario, runtime, step),
            Step::Reboot {} => reboot(vm),
            Step::IsFailed { unit, failed } => is_failed(vm, scenario, unit, *failed),
            Step::Journal { contains, lacks } => {
                journal_holds(vm, scenario, contains.as_deref(), lacks.as_deref())
            }
            Step::Netinfo { .. } => netinfo(vm, step),
            Step::Run { .. } => run_command(vm, runtime, step),
            Step::Sleep { seconds } => {
                std::thread::sleep(Duration::from_secs_f64(*seconds));
                Ok(None)
            }
        }?;
        if let Some(mut failure) = result {
            failure.index = i + 1;
            failure.journal = journal(vm, scenario, Some(Since::Mark));
            return Ok(Some(failure));
        }
    }
    Ok(None)
}

/// `systemctl start|stop|enable|reset-failed UNIT`.
fn unit_verb(vm: &TrialVm, scenario: &Scenario, step: &Step, unit: &str) -> StepResult {
    let verb = match step {
        Step::Start { .. } => "start",
        Step::Stop { .. } => "stop",
        Step::Enable { .. } => "enable",
        _ => "reset-failed",
    };
    let out = systemctl(vm, scenario.scope, &format!("{verb} {}", quote(unit)))?;
    if !out.success() {
        return failed(format!("{verb} {unit}"), out.combined());
    }
    Ok(None)
}

/// A service that failed this often since its step began has failed for the pending
/// connection and again on its retry: nothing later will answer, and the probe stops
/// waiting for it.
const SERVICE_FAILURES_TO_GIVE_UP: usize = 2;

/// The marker a watched probe writes to stderr when it stopped waiting.
const STOPPED_WAITING: &str = "lab: stopped waiting:";

/// `probe` (a shell command) run in the background while a watcher beside it reads the
/// journal (`journal`: a `journalctl` command for the units since the step began): once
/// one of `services` has logged `Failed with result` [`SERVICE_FAILURES_TO_GIVE_UP`]
/// times, it says so on stderr and ends the probe. It looks from the fourth second on,
/// every other second, so a probe answered at once costs no journal read; the shell
/// waits on the probe itself, so its answer is returned the moment it comes (a polling
/// loop cost half a second per probe on average). The watcher's children get neither
/// the ssh session's stdout nor its stderr (only the message does, through fd 3), so a
/// watcher killed mid-sleep leaves nothing that holds the session open.
pub fn watched_probe(probe: &str, journal: &str, services: &[String]) -> String {
    if services.is_empty() {
        return probe.to_string();
    }
    let names: Vec<String> = services.iter().map(|s| quote(s)).collect();
    format!(
        "{probe} & p=$!\n\
         ( exec 3>&2 2>/dev/null >/dev/null </dev/null\n\
         \x20 sleep 4 3>&-\n\
         \x20 while kill -0 $p; do\n\
         \x20   for u in {names}; do\n\
         \x20     c=$( {{ {journal} | grep -c -F \" $u: Failed with result '\"; }} 3>&- )\n\
         \x20     if [ \"$c\" -ge {SERVICE_FAILURES_TO_GIVE_UP} ]; then echo \"{STOPPED_WAITING} $u failed $c times during the step\" >&3; kill $p; exit 0; fi\n\
         \x20   done\n\
         \x20   sleep 2 3>&-\n\
         \x20 done ) & w=$!\n\
         wait $p; r=$?; kill $w 2>/dev/null; exit $r",
        names = names.join(" ")
    )
}

/// A server that answered, with the wrong reply, is up: retrying cannot change what it
/// says, so a `retry` probe ends at once (it waited out its whole timeout before).
fn answered_wrongly(probe_stdout: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Outcome {
        failure: Option<echo_probe::Failure>,
    }
    serde_json::from_str::<Outcome>(probe_stdout.trim())
        .is_ok_and(|o| o.failure == Some(echo_probe::Failure::Mismatch))
}

/// `echo-probe` in the guest, retried while the server is starting if the step says so.
fn probe(vm: &TrialVm, scenario: &Scenario, runtime: &str, step: &Step) -> StepResult {
    let Step::Probe {
        address,
        send,
        expect,
        timeout,
        netns,
        source,
        peer,
        fail: must_fail,
        retry,
        half_close,
    } = step
    else {
        unreachable!("probe() is called with probe steps")
    };
    let g = &vm.guest;
    let address = expand(address, runtime, &g.user);
    let mut cmd = format!(
        "echo-probe {} --send {} --timeout {timeout} --json",
        quote(&address),
        quote(send)
    );
    if let Some(e) = expect {
        cmd += &format!(" --expect {}", quote(e));
    }
    if !half_close {
        cmd += " --keep-open";
    }
    if let Some(ns) = netns {
        cmd = format!("ip netns exec {} {cmd}", quote(ns));
    }
    // A probe that must fail in a given way runs as it is: its own result is the
    // evidence. Any other stops waiting once the service has failed for it twice.
    if must_fail.is_none() {
        let units = scenario.journal_units();
        let refs: Vec<&str> = units.iter().map(String::as_str).collect();
        let services: Vec<String> = units
            .iter()
            .filter(|u| u.ends_with(".service"))
            .cloned()
            .collect();
        let journal = vm::guest::unit_journal_command(
            scenario.scope.manager(),
            &refs,
            None,
            Some(Since::Mark),
        );
        cmd = watched_probe(&cmd, &journal, &services);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(*timeout);
    let mut gave_up = None;
    let out = loop {
        let out = g.root(&cmd, Duration::from_secs_f64(timeout + 30.0))?;
        if out.success()
            || !*retry
            || Instant::now() >= deadline
            || out.stderr.contains(STOPPED_WAITING)
            || answered_wrongly(&out.stdout)
        {
            break out;
        }
        // A failed socket unit (the service hit its start limit, or the socket its
        // trigger limit) stays failed: no later attempt can be answered.
        if let Some(failed) = failed_sockets(vm, scenario)? {
            gave_up = Some(failed);
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let parsed: Option<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok();
    let ok = out.success();
    let what = format!(
        "probe {address}{}",
        netns
            .as_deref()
            .map(|n| format!(" from {n}"))
            .unwrap_or_default()
    );
    if let Some(kind) = must_fail {
        let wanted = serde_json::to_value(kind).unwrap_or_default();
        let wanted = wanted.as_str().unwrap_or("?");
        if ok {
            return failed(
                format!("{what} (must fail: {wanted})"),
                format!("it answered: {}", out.stdout.trim()),
            );
        }
        // Exit 1 with a JSON result is the probe itself failing; anything else (2, a
        // usage error; 127, no binary; ip netns exec's own errors) is not evidence.
        let got = parsed
            .as_ref()
            .filter(|_| out.code() == Some(1))
            .and_then(|v| v["failure"].as_str());
        if got != Some(wanted) {
            return failed(
                format!("{what} (must fail: {wanted})"),
                format!(
                    "it failed otherwise ({}): {}",
                    got.map_or_else(
                        || format!("exit {:?}, no probe result", out.code()),
                        str::to_string
                    ),
                    out.combined().trim()
                ),
            );
        }
        return Ok(None);
    }
    if !ok {
        let mut output = out.combined();
        if let Some(failed) = gave_up {
            output += &format!("\n(stopped retrying: {failed} failed)");
        }
        return failed(what, output);
    }
    if let Some(src) = source {
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v[name].as_str())
                .map(|s| s.trim().to_string())
        };
        let (Some(reply), Some(local)) = (field("reply"), field("local_address")) else {
            return failed(
                format!("{what} (source {src:?})"),
                format!(
                    "the probe's result has no reply or local_address: {}",
                    out.stdout.trim()
                ),
            );
        };
        // Both are addresses; a reply that is not one (a plain echo) proves nothing.
        let (Ok(seen), Ok(ours)) = (
            reply.parse::<std::net::SocketAddr>(),
            local.parse::<std::net::SocketAddr>(),
        ) else {
            return failed(
                format!("{what} (source {src:?})"),
                format!("the server's reply {reply:?} or the client's {local:?} is no address"),
            );
        };
        let good = match (src, peer) {
            (SourceAddress::Preserved, _) => seen == ours,
            (SourceAddress::Rewritten, Some(ip)) => {
                seen.ip().to_string() == *ip && seen.ip() != ours.ip()
            }
            (SourceAddress::Rewritten, None) => false,
        };
        if !good {
            let wanted = peer
                .as_deref()
                .map(|ip| format!(", the forwarder's address is {ip}"))
                .unwrap_or_default();
            return failed(
                format!("{what} (source {src:?})"),
                format!("the server saw {seen}, the client is {ours}{wanted}"),
            );
        }
    }
    Ok(None)
}

/// A real reboot of the guest, waited for like a cold boot.
fn reboot(vm: &TrialVm) -> StepResult {
    let timeout = vm::ready::boot_timeout(vm.qemu.config.machine.accel);
    if let Err(e) = vm.guest.reboot(timeout, &vm.console_log()) {
        return failed("reboot".into(), format!("{e:#}"));
    }
    Ok(None)
}

/// `systemctl is-failed UNIT`, once the unit has settled.
fn is_failed(vm: &TrialVm, scenario: &Scenario, unit: &str, want_failed: bool) -> StepResult {
    // A unit between states (a failed service that its socket triggers again is
    // "activating" for a moment) is judged once it has settled: one instant's state made
    // restrict-pull-always flaky under load.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = systemctl(vm, scenario.scope, &format!("is-failed {}", quote(unit)))?;
        let state = out.stdout.trim();
        let moving = matches!(
            state,
            "activating" | "deactivating" | "reloading" | "refreshing"
        );
        if !moving || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // is-failed exits 0 when the unit is failed.
    if out.success() != want_failed {
        return failed(
            format!("is-failed {unit} (expect failed={want_failed})"),
            out.combined(),
        );
    }
    Ok(None)
}

/// The units' journal contains one text and lacks another.
fn journal_holds(
    vm: &TrialVm,
    scenario: &Scenario,
    contains: Option<&str>,
    lacks: Option<&str>,
) -> StepResult {
    let text = journal(vm, scenario, None);
    if let Some(c) = contains
        && !text.contains(c)
    {
        return failed(format!("journal contains {c:?}"), vm::proc::tail(&text, 15));
    }
    if let Some(l) = lacks
        && let Some(line) = text.lines().find(|x| x.contains(l))
    {
        return failed(format!("journal lacks {l:?}"), line.to_string());
    }
    Ok(None)
}

/// `echo-probe netinfo` in a running container: its interfaces and an outbound connect.
fn netinfo(vm: &TrialVm, step: &Step) -> StepResult {
    let Step::Netinfo {
        container,
        interfaces,
        other_interfaces,
        outbound,
        outbound_ok,
        outbound_error,
    } = step
    else {
        unreachable!("netinfo() is called with netinfo steps")
    };
    let mut cmd = format!(
        "podman exec {} /echo-probe netinfo --json --timeout 5",
        quote(container)
    );
    if let Some(o) = outbound {
        cmd += &format!(" --outbound {}", quote(o));
    }
    let out = vm.guest.user(&cmd, Duration::from_secs(60))?;
    if !out.success() {
        return failed(format!("netinfo in {container}"), out.combined());
    }
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("netinfo output: {}", out.stdout))?;
    std::fs::write(
        vm.dir.join(format!("netinfo-{container}.json")),
        out.stdout.as_bytes(),
    )?;
    let mut got: Vec<String> = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["addresses"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|i| i["name"].as_str().map(String::from))
        .collect();
    got.sort();
    if let Some(expected) = other_interfaces
        && got.iter().any(|i| i != "lo") != *expected
    {
        return failed(
            format!("netinfo in {container}: interfaces besides lo"),
            format!("expected {expected}, the container has {got:?}"),
        );
    }
    if let Some(want) = interfaces {
        let mut want = want.clone();
        want.sort();
        if got != want {
            return failed(
                format!("netinfo in {container}: interfaces"),
                format!("expected {want:?}, the container has {got:?}"),
            );
        }
    }
    if let Some(expected) = outbound_ok {
        // Reached means our own echo server answered: a connection alone can reach
        // something else (an unmapped 169.254.7.7 went out through QEMU's user network
        // to an HTTP server of the lab machine's network).
        let key = if *expected { "echoed" } else { "connected" };
        let Some(reached) = v["outbound"][key].as_bool() else {
            return failed(
                format!("netinfo in {container}: outbound"),
                format!("the result has no outbound.{key}: {}", out.stdout.trim()),
            );
        };
        if reached != *expected {
            return failed(
                format!(
                    "netinfo in {container}: outbound {}",
                    outbound.as_deref().unwrap_or("?")
                ),
                format!("expected {key}={expected}: {}", v["outbound"]),
            );
        }
    }
    if let Some(want) = outbound_error {
        let error = v["outbound"]["error"].as_str().unwrap_or_default();
        if !error.contains(want.as_str()) {
            return failed(
                format!(
                    "netinfo in {container}: outbound {}",
                    outbound.as_deref().unwrap_or("?")
                ),
                format!("expected an error containing {want:?}: {}", v["outbound"]),
            );
        }
    }
    Ok(None)
}

/// A shell command as the test user or root, with its exit code and output checked.
fn run_command(vm: &TrialVm, runtime: &str, step: &Step) -> StepResult {
    let Step::Run {
        command,
        who,
        exit,
        contains,
        output,
        timeout,
        record,
    } = step
    else {
        unreachable!("run_command() is called with run steps")
    };
    let g = &vm.guest;
    let command = expand(command, runtime, &g.user);
    let t = Duration::try_from_secs_f64(timeout.unwrap_or(300.0))
        .with_context(|| format!("run `{command}`: timeout {timeout:?}"))?;
    let out = match who {
        Who::User => g.user(&command, t)?,
        Who::Root => g.root(&command, t)?,
    };
    if out.code() != Some(*exit) {
        return failed(
            format!("run `{command}` (expect exit {exit})"),
            out.combined(),
        );
    }
    if let Some(c) = contains
        && !out.combined().contains(c.as_str())
    {
        return failed(
            format!("run `{command}` (expect output with {c:?})"),
            out.combined(),
        );
    }
    if let Some(want) = output
        && !same_output(&out.stdout, want)
    {
        return failed(
            format!("run `{command}` (expect the output {want:?})"),
            out.combined(),
        );
    }
    if let Some(name) = record {
        let value = out.stdout.trim().replace(['\n', '\t'], " ");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(vm.dir.join(MEASUREMENTS))?;
        std::io::Write::write_all(&mut file, format!("{name}\t{value}\n").as_bytes())?;
    }
    Ok(None)
}

/// Whether `stdout` is `want` line for line (each line and the whole trimmed).
fn same_output(stdout: &str, want: &str) -> bool {
    let lines = |t: &str| {
        t.trim()
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
    };
    lines(stdout) == lines(want)
}

/// The trial directory's file of `record`ed values, one `NAME<TAB>VALUE` per line.
pub const MEASUREMENTS: &str = "measurements.tsv";

/// The values the steps recorded in the trial directory `dir`, in step order.
pub fn measurements(dir: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(MEASUREMENTS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_compared_whole() {
        assert!(same_output("active\nactive\n", "active\nactive"));
        assert!(same_output("  healthy \nactive", "healthy\nactive"));
        assert!(!same_output("inactive\nactive\n", "active\nactive"));
        assert!(!same_output("unhealthy\nactive", "healthy\nactive"));
        assert!(!same_output("active\nactive\nactive", "active\nactive"));
    }

    /// echo-probe's own `--json` result, against a real listener on loopback.
    fn probe_json(expect: &str, serve: Option<&'static [u8]>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if let Some(reply) = serve {
            std::thread::spawn(move || {
                let (mut c, _) = listener.accept().unwrap();
                let _ = c.read(&mut [0; 64]);
                c.write_all(reply).unwrap();
            });
        } else {
            drop(listener); // nothing listens: refused
        }
        let spec = echo_probe::ProbeSpec {
            address: format!("tcp4:127.0.0.1:{port}").parse().unwrap(),
            send: b"hello\n".to_vec(),
            expect: echo_probe::Expect::Bytes(expect.as_bytes().to_vec()),
            timeout: Duration::from_secs(5),
            keep_open: false,
        };
        serde_json::to_string(&echo_probe::probe(&spec)).unwrap()
    }

    #[test]
    fn only_a_wrong_reply_ends_the_retries() {
        assert!(answered_wrongly(&probe_json("hello\n", Some(b"iello\n"))));
        assert!(!answered_wrongly(&probe_json("hello\n", Some(b"hello\n"))));
        assert!(!answered_wrongly(&probe_json("hello\n", None)));
        assert!(!answered_wrongly(
            "ssh: connect to host: Connection refused"
        ));
    }

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

    #[test]
    fn a_watched_probe_stops_once_the_service_failed_twice() {
        // The shell script itself, in sh, with a probe that would wait 60 s and, for the
        // journal, systemd 257's lines about crun 1.21 failing echo.service (crun#1828).
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("journal");
        let once =
            "[  109.129819] lab systemd[384]: echo.service: Failed with result 'exit-code'.\n";
        std::fs::write(&lines, once.repeat(2)).unwrap();
        let journal = format!("cat {}", lines.display());
        let services = vec!["echo.service".to_string()];
        let run = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .output()
                .unwrap()
        };
        let started = Instant::now();
        let out = run(&watched_probe("sleep 60", &journal, &services));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "it waited out the probe"
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("lab: stopped waiting: echo.service failed 2 times during the step"),
            "{stderr}"
        );
        // One failure, or another unit's, lets the probe finish on its own.
        std::fs::write(
            &lines,
            once.to_string() + &once.replace("echo.service", "other.service"),
        )
        .unwrap();
        let out = run(&watched_probe(
            "sleep 5; echo answered",
            &journal,
            &services,
        ));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answered");
        // The probe's own exit status comes back (1: the probe failed; 2: a usage error).
        let out = run(&watched_probe("exit 2", &journal, &services));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        // A probe answered at once is returned at once: the shell waits on the probe, not
        // on the watcher's sleep (which must not hold the output open either).
        let started = Instant::now();
        let out = run(&watched_probe("echo answered", &journal, &services));
        assert!(out.status.success(), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the watcher's sleep 4 held the command open: {:?}",
            started.elapsed()
        );
    }
}
