//! A scenario's steps on a trial's guest, one function per kind of step; [`run_steps`]
//! is the table from a step's kind to its function. A step that does not hold returns a
//! [`StepFailure`]; a step that cannot be carried out at all (ssh lost, QEMU gone) is an
//! error.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vm::guest::Since;
use vm::proc::Output;
use vm::proc::quote;
use vm::ready::ECHO_IMAGE;
use vm::target::User;
use vm::trial_vm::TrialVm;

use crate::scenario::evidence::{MEASUREMENTS, journal};
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
fn failed_sockets(vm: &TrialVm, scenario: &Scenario, units: &[String]) -> Result<Option<String>> {
    let sockets: Vec<String> = units
        .iter()
        .filter(|u| u.ends_with(".socket"))
        .cloned()
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

/// Runs the steps in order; the first that does not hold ends the trial, with the
/// journal lines logged from when it began (the guest records the journal's position
/// with the step's first command, so evidence is never a line logged before the step
/// that failed).
/// `units`: the units whose journal explains a failure ([`Scenario::journal_units`]).
pub fn run_steps(vm: &TrialVm, scenario: &Scenario, runtime: &str, units: &[String]) -> StepResult {
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
            Step::Probe { .. } => probe(vm, scenario, runtime, units, step, i + 1),
            Step::Reboot {} => reboot(vm),
            Step::IsFailed {
                unit,
                failed,
                within,
            } => is_failed(
                vm,
                scenario,
                unit,
                *failed,
                within.map(Duration::from_secs_f64),
            ),
            Step::Journal {
                contains,
                lacks,
                within,
            } => journal_holds(
                vm,
                scenario,
                units,
                contains.as_deref(),
                lacks.as_deref(),
                within.map(Duration::from_secs_f64),
            ),
            Step::Netinfo { .. } => netinfo(vm, step),
            Step::Run { .. } => run_command(vm, runtime, step),
            Step::Sleep { seconds } => {
                std::thread::sleep(Duration::from_secs_f64(*seconds));
                Ok(None)
            }
        }?;
        if let Some(mut failure) = result {
            failure.index = i + 1;
            failure.journal = journal(vm, scenario, units, Some(Since::Mark));
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
/// one of `services` has logged `Failed with result` `SERVICE_FAILURES_TO_GIVE_UP`
/// times, or a `decisive` text (a known bug's that settles the step) is logged, it says
/// so on stderr and ends the probe. It looks from the fourth second on, every other
/// second, so a probe answered at once costs no journal read; the shell waits on the
/// probe itself, so its answer is returned the moment it comes (a polling loop cost half
/// a second per probe on average). The watcher's children get neither the ssh session's
/// stdout nor its stderr (only the message does, through fd 3), so a watcher killed
/// mid-sleep leaves nothing that holds the session open.
pub fn watched_probe(
    probe: &str,
    journal: &str,
    services: &[String],
    decisive: &[String],
) -> String {
    if services.is_empty() && decisive.is_empty() {
        return probe.to_string();
    }
    let mut checks = String::new();
    if !services.is_empty() {
        let names: Vec<String> = services.iter().map(|s| quote(s)).collect();
        checks += &format!(
            "\x20   for u in {names}; do\n\
             \x20     c=$(printf '%s\\n' \"$j\" | grep -c -F \" $u: Failed with result '\")\n\
             \x20     if [ \"$c\" -ge {SERVICE_FAILURES_TO_GIVE_UP} ]; then echo \"{STOPPED_WAITING} $u failed $c times during the step\" >&3; kill $p; exit 0; fi\n\
             \x20   done\n",
            names = names.join(" ")
        );
    }
    if !decisive.is_empty() {
        let texts: Vec<String> = decisive.iter().map(|t| quote(t)).collect();
        checks += &format!(
            "\x20   for t in {texts}; do\n\
             \x20     if printf '%s\\n' \"$j\" | grep -q -F -e \"$t\"; then echo \"{STOPPED_WAITING} the journal shows \\\"$t\\\", which settles the step\" >&3; kill $p; exit 0; fi\n\
             \x20   done\n",
            texts = texts.join(" ")
        );
    }
    format!(
        "{probe} & p=$!\n\
         ( exec 3>&2 2>/dev/null >/dev/null </dev/null\n\
         \x20 sleep 4 3>&-\n\
         \x20 while kill -0 $p; do\n\
         \x20   j=$( {{ {journal}; }} 3>&- )\n\
         {checks}\
         \x20   sleep 2 3>&-\n\
         \x20 done ) & w=$!\n\
         wait $p; r=$?; kill $w 2>/dev/null; exit $r"
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
fn probe(
    vm: &TrialVm,
    scenario: &Scenario,
    runtime: &str,
    units: &[String],
    step: &Step,
    number: usize,
) -> StepResult {
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
    let address = expand(address, runtime, &vm.guest.user);
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
    // evidence. Any other stops waiting once the service has failed for it twice, or a
    // known bug's decisive text is logged.
    if must_fail.is_none() {
        cmd = watching_the_services(&cmd, scenario, units, number);
    }
    let (out, gave_up) = run_probe(vm, scenario, units, &cmd, *timeout, *retry)?;
    let parsed: Option<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok();
    let what = format!(
        "probe {address}{}",
        netns
            .as_deref()
            .map(|n| format!(" from {n}"))
            .unwrap_or_default()
    );
    if let Some(kind) = must_fail {
        let wanted = serde_json::to_value(kind).unwrap_or_default();
        return Ok(
            failed_otherwise(&out, parsed.as_ref(), wanted.as_str().unwrap_or("?")).map(|output| {
                StepFailure {
                    step: format!("{what} (must fail: {})", wanted.as_str().unwrap_or("?")),
                    output,
                    ..Default::default()
                }
            }),
        );
    }
    if !out.success() {
        let mut output = out.combined();
        if let Some(failed) = gave_up {
            output += &format!("\n(stopped retrying: {failed} failed)");
        }
        return failed(what, output);
    }
    match source {
        Some(src) => Ok(
            source_seen_otherwise(&out.stdout, parsed.as_ref(), *src, peer.as_deref()).map(
                |output| StepFailure {
                    step: format!("{what} (source {src:?})"),
                    output,
                    ..Default::default()
                },
            ),
        ),
        None => Ok(None),
    }
}

/// `probe` wrapped so that it stops once a service of the scenario has failed twice, or
/// the text of a decisive known bug of step `number` is logged.
fn watching_the_services(
    probe: &str,
    scenario: &Scenario,
    units: &[String],
    number: usize,
) -> String {
    let refs: Vec<&str> = units.iter().map(String::as_str).collect();
    let services: Vec<String> = units
        .iter()
        .filter(|u| u.ends_with(".service"))
        .cloned()
        .collect();
    let journal =
        vm::guest::unit_journal_command(scenario.scope.manager(), &refs, None, Some(Since::Mark));
    let decisive: Vec<String> = scenario
        .known_bug
        .iter()
        .filter(|b| b.decisive && b.step == number)
        .map(|b| b.pattern.clone())
        .collect();
    watched_probe(probe, &journal, &services, &decisive)
}

/// Runs the probe command; with `retry`, again every half second until it succeeds, its
/// time is up, the services stopped it, it got a wrong answer, or a socket of the
/// scenario failed (the one returned: a failed socket stays failed, so no later attempt
/// can be answered).
fn run_probe(
    vm: &TrialVm,
    scenario: &Scenario,
    units: &[String],
    cmd: &str,
    timeout: f64,
    retry: bool,
) -> Result<(Output, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let out = vm
            .guest
            .root(cmd, Duration::from_secs_f64(timeout + 30.0))?;
        if out.success()
            || !retry
            || Instant::now() >= deadline
            || out.stderr.contains(STOPPED_WAITING)
            || answered_wrongly(&out.stdout)
        {
            return Ok((out, None));
        }
        if let Some(failed) = failed_sockets(vm, scenario, units)? {
            return Ok((out, Some(failed)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// For a probe that must fail as `wanted`: `None` when it did, else what it did instead.
fn failed_otherwise(
    out: &Output,
    parsed: Option<&serde_json::Value>,
    wanted: &str,
) -> Option<String> {
    if out.success() {
        return Some(format!("it answered: {}", out.stdout.trim()));
    }
    // Exit 1 with a JSON result is the probe itself failing; anything else (2, a usage
    // error; 127, no binary; ip netns exec's own errors) is not evidence.
    let got = parsed
        .filter(|_| out.code() == Some(1))
        .and_then(|v| v["failure"].as_str());
    (got != Some(wanted)).then(|| {
        format!(
            "it failed otherwise ({}): {}",
            got.map_or_else(
                || format!("exit {:?}, no probe result", out.code()),
                str::to_string
            ),
            out.combined().trim()
        )
    })
}

/// For a probe that checks the client's address as the server saw it (`--reply-peer`):
/// `None` when it was `src` (the client's own, or rewritten to `peer`), else why not.
fn source_seen_otherwise(
    stdout: &str,
    parsed: Option<&serde_json::Value>,
    src: SourceAddress,
    peer: Option<&str>,
) -> Option<String> {
    let field = |name: &str| {
        parsed
            .and_then(|v| v[name].as_str())
            .map(|s| s.trim().to_string())
    };
    let (Some(reply), Some(local)) = (field("reply"), field("local_address")) else {
        return Some(format!(
            "the probe's result has no reply or local_address: {}",
            stdout.trim()
        ));
    };
    // Both are addresses; a reply that is not one (a plain echo) proves nothing.
    let (Ok(seen), Ok(ours)) = (
        reply.parse::<std::net::SocketAddr>(),
        local.parse::<std::net::SocketAddr>(),
    ) else {
        return Some(format!(
            "the server's reply {reply:?} or the client's {local:?} is no address"
        ));
    };
    let good = match (src, peer) {
        (SourceAddress::Preserved, _) => seen == ours,
        (SourceAddress::Rewritten, Some(ip)) => {
            seen.ip().to_string() == ip && seen.ip() != ours.ip()
        }
        (SourceAddress::Rewritten, None) => false,
    };
    (!good).then(|| {
        let wanted = peer
            .map(|ip| format!(", the forwarder's address is {ip}"))
            .unwrap_or_default();
        format!("the server saw {seen}, the client is {ours}{wanted}")
    })
}

/// A real reboot of the guest, waited for like a cold boot.
fn reboot(vm: &TrialVm) -> StepResult {
    let timeout = vm::ready::boot_timeout(vm.qemu.config.machine.accel);
    if let Err(e) = vm.guest.reboot(timeout, &vm.console_log()) {
        return failed("reboot".into(), format!("{e:#}"));
    }
    Ok(None)
}

/// `systemctl is-failed UNIT`, once the unit has settled; an active unit that is to fail
/// is given until `within` to do so.
fn is_failed(
    vm: &TrialVm,
    scenario: &Scenario,
    unit: &str,
    want_failed: bool,
    within: Option<Duration>,
) -> StepResult {
    // A unit between states (a failed service that its socket triggers again is
    // "activating" for a moment) is judged once it has settled: one instant's state made
    // restrict-pull-always flaky under load. Active is settled unless the scenario says
    // the unit may still fail (`within`): a notify service is started once conmon says
    // so, and its server fails after that (quadlet-service-started-alone). Waiting on
    // every active unit kept a mutant that keeps the unit active 60 s in this loop.
    let start = Instant::now();
    let settle = start + Duration::from_secs(60);
    let may_fail = within.map(|w| start + w);
    let out = loop {
        let out = systemctl(vm, scenario.scope, &format!("is-failed {}", quote(unit)))?;
        let state = out.stdout.trim();
        let now = Instant::now();
        let moving = matches!(
            state,
            "activating" | "deactivating" | "reloading" | "refreshing"
        ) && now < settle;
        let may_still_fail = state == "active" && may_fail.is_some_and(|d| now < d);
        if !moving && !may_still_fail {
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
    units: &[String],
    contains: Option<&str>,
    lacks: Option<&str>,
    within: Option<Duration>,
) -> StepResult {
    let deadline = within.map(|w| Instant::now() + w);
    let mut text = journal(vm, scenario, units, None);
    // A text that is to come within a time is looked for once a second until then.
    while let (Some(c), Some(deadline)) = (contains, deadline)
        && !text.contains(c)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_secs(1));
        text = journal(vm, scenario, units, None);
    }
    if let Some(c) = contains
        && !text.contains(c)
    {
        let wait = within
            .map(|w| format!(" within {} s", w.as_secs_f64()))
            .unwrap_or_default();
        return failed(
            format!("journal contains {c:?}{wait}"),
            vm::proc::tail(&text, 15),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(stdout: &str) -> (String, Option<serde_json::Value>) {
        (stdout.to_string(), serde_json::from_str(stdout).ok())
    }

    #[test]
    fn the_source_address_is_judged_on_the_parsed_addresses() {
        let check = |stdout: &str, src, peer| {
            let (text, parsed) = result(stdout);
            source_seen_otherwise(&text, parsed.as_ref(), src, peer)
        };
        let same = r#"{"reply":"127.0.0.1:40000","local_address":"127.0.0.1:40000"}"#;
        let other = r#"{"reply":"10.0.2.100:5555","local_address":"127.0.0.1:40000"}"#;
        let echo = r#"{"reply":"hello","local_address":"127.0.0.1:40000"}"#;
        assert_eq!(check(same, SourceAddress::Preserved, None), None);
        assert!(check(other, SourceAddress::Preserved, None).is_some());
        assert_eq!(
            check(other, SourceAddress::Rewritten, Some("10.0.2.100")),
            None
        );
        // Another address than the forwarder's, the client's own, or no forwarder named.
        assert!(check(other, SourceAddress::Rewritten, Some("10.0.2.2")).is_some());
        assert!(check(same, SourceAddress::Rewritten, Some("127.0.0.1")).is_some());
        assert!(check(other, SourceAddress::Rewritten, None).is_some());
        // A plain echo is no address, whatever is expected.
        let e = check(echo, SourceAddress::Rewritten, Some("10.0.2.100")).unwrap();
        assert!(e.contains("is no address"), "{e}");
        let e = check("{}", SourceAddress::Preserved, None).unwrap();
        assert!(e.contains("no reply or local_address"), "{e}");
    }

    #[test]
    fn a_probe_that_must_fail_fails_only_as_it_must() {
        use std::os::unix::process::ExitStatusExt;
        let out = |code: i32, stdout: &str| Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
        };
        let refused = r#"{"failure":"refused"}"#;
        let check = |o: &Output| {
            let parsed = serde_json::from_str(&o.stdout).ok();
            failed_otherwise(o, parsed.as_ref(), "refused")
        };
        assert_eq!(check(&out(1, refused)), None);
        assert!(check(&out(0, "{}")).unwrap().contains("it answered"));
        let e = check(&out(1, r#"{"failure":"reset"}"#)).unwrap();
        assert!(e.contains("failed otherwise (reset)"), "{e}");
        // The same JSON with another exit is not the probe's own failure.
        let e = check(&out(127, refused)).unwrap();
        assert!(e.contains("no probe result"), "{e}");
    }

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

    /// `script` run by sh, as the guest runs it.
    fn run(script: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .unwrap()
    }

    /// A watched probe that would wait 60 s ends well before, failing, with `message`.
    fn ends_early_saying(script: &str, message: &str) {
        let started = Instant::now();
        let out = run(script);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "it waited out the probe"
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
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
        ends_early_saying(
            &watched_probe("sleep 60", &journal, &services, &[]),
            "lab: stopped waiting: echo.service failed 2 times during the step",
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
            &[],
        ));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answered");
        // The probe's own exit status comes back (1: the probe failed; 2: a usage error).
        let out = run(&watched_probe("exit 2", &journal, &services, &[]));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        // A probe answered at once is returned at once: the shell waits on the probe, not
        // on the watcher's sleep (which must not hold the output open either).
        let started = Instant::now();
        let out = run(&watched_probe("echo answered", &journal, &services, &[]));
        assert!(out.status.success(), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the watcher's sleep 4 held the command open: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_watched_probe_stops_once_a_decisive_text_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("journal");
        let journal = format!("cat {}", lines.display());
        let text = vec!["unix seqpacket (unnamed)".to_string()];
        std::fs::write(
            &lines,
            "socket-activate-echo: serving fd 3 \"echo.socket\" unix seqpacket (unnamed)\n",
        )
        .unwrap();
        ends_early_saying(
            &watched_probe("sleep 60", &journal, &[], &text),
            "lab: stopped waiting: the journal shows \"unix seqpacket (unnamed)\", which settles the step",
        );
        // Without the text the probe ends on its own, with its own result.
        std::fs::write(&lines, "socket-activate-echo: serving fd 3 \"echo.socket\" inet stream listening 127.0.0.1:3000\n").unwrap();
        let out = run(&watched_probe(
            "sleep 5; echo answered",
            &journal,
            &[],
            &text,
        ));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "answered");
    }
}
