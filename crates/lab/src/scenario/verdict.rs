//! The verdict: pure functions from a trial's recorded step failure, journal and versions
//! to PASS, FAIL, XFAIL, XPASS or SKIP with the evidence that decided it. Nothing here
//! touches a guest, so every rule is unit-tested on recorded outputs.

use std::collections::BTreeMap;

use crate::scenario::schema::{ExpectedOutcome, KnownBug, Scenario};
use crate::trial::{Outcome, RuntimeUse};
use crate::version;

/// The step that failed: its place, what it was, what it printed, and the scenario
/// units' journal lines logged from when it began (nothing from before it).
#[derive(Debug, Clone, Default)]
pub struct StepFailure {
    /// Counted from 1 in `[[steps]]`, as `expect.step` and `known_bug.step` count.
    pub index: usize,
    /// What the step did, for people: `probe tcp4:127.0.0.1:3000`.
    pub step: String,
    pub output: String,
    pub journal: String,
}

impl StepFailure {
    /// The first line that proves `pattern` at step `step`: in this step's output or the
    /// journal lines logged while it ran; `None` at another step or without the text.
    fn evidence(&self, step: usize, pattern: &str) -> Option<&str> {
        if self.index != step {
            return None;
        }
        self.output
            .lines()
            .chain(self.journal.lines())
            .find(|l| l.contains(pattern))
            .map(str::trim)
    }
}

/// An outcome, the evidence for it, and the upstream issue behind an XFAIL or XPASS.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub detail: String,
    pub issue: Option<String>,
    /// The step that failed, counted from 1, if one did.
    pub step: Option<usize>,
    /// The line that decided the verdict (an expected failure's or a known bug's text).
    pub evidence: Option<String>,
    /// The scenario's steps ran and were judged (`judge`): false for a SKIP before the
    /// trial, and for a FAIL of the lab, the guest or a mutant's set-up.
    pub steps_ran: bool,
}

impl Verdict {
    pub fn new(outcome: Outcome, detail: String, issue: Option<String>) -> Verdict {
        Verdict {
            outcome,
            detail,
            issue,
            step: None,
            evidence: None,
            steps_ran: false,
        }
    }

    fn at(mut self, step: usize, evidence: Option<&str>) -> Verdict {
        self.step = Some(step);
        self.evidence = evidence.map(String::from);
        self
    }
}

/// The FAIL of a trial whose units systemd did not take as the scenario expects: judged
/// at step 0, the units' load (a claim about what systemd says of a unit is judged there).
pub fn units_refused(why: &str) -> Verdict {
    let mut v = Verdict::new(
        Outcome::Fail,
        format!("step 0 (loading the units): {why}"),
        None,
    );
    v.step = Some(0);
    v.steps_ran = true;
    v
}

/// The verdict the scenario's `requires` gives before anything runs: a SKIP when the
/// guest's versions are outside its ranges (or the scenario is unavailable), a FAIL when
/// a version it needs could not be read from the guest; `None` when the trial runs.
pub fn requirements_verdict(
    scenario: &Scenario,
    versions: &BTreeMap<String, String>,
) -> Option<Verdict> {
    if let Some(why) = &scenario.requires.unavailable {
        return Some(Verdict::new(Outcome::Skip, why.clone(), None));
    }
    if scenario.requires.selinux && !versions.contains_key("container-selinux") {
        return Some(Verdict::new(
            Outcome::Skip,
            match &scenario.requires.reason {
                Some(why) => {
                    format!("needs SELinux, the guest has none (no container-selinux): {why}")
                }
                None => "needs SELinux, the guest has none (no container-selinux)".into(),
            },
            None,
        ));
    }
    for (tool, range) in [
        ("podman", &scenario.requires.podman),
        ("systemd", &scenario.requires.systemd),
    ] {
        let Some(range) = range else { continue };
        let fail = |why: String| Some(Verdict::new(Outcome::Fail, why, None));
        let Some(v) = versions.get(tool).filter(|v| !v.trim().is_empty()) else {
            return fail(format!(
                "the scenario requires {tool} {range}, but the guest's {tool} version could not be read"
            ));
        };
        match version::in_range(v, range) {
            Ok(true) => {}
            Ok(false) => {
                return Some(Verdict::new(
                    Outcome::Skip,
                    match &scenario.requires.reason {
                        Some(why) => format!("needs {tool} {range}, the guest has {v}: {why}"),
                        None => format!("needs {tool} {range}, the guest has {v}"),
                    },
                    None,
                ));
            }
            Err(e) => return fail(format!("requires.{tool} = {range:?}: {e}")),
        }
    }
    None
}

/// The known bugs that apply to this runtime and these guest versions; an error naming
/// the component when a bug is keyed on a version that could not be read (an empty or
/// unparsable runtime version, a tool's version that is not one), since that would
/// switch the bug off without a word. A tool the guest does not have at all (no SELinux
/// on Debian) is no error: its bugs do not apply there.
fn applicable<'a>(
    scenario: &'a Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
) -> Result<Vec<&'a KnownBug>, String> {
    let mut bugs = Vec::new();
    for b in &scenario.known_bug {
        let (component, version) = match (&b.runtime, &b.tool) {
            (Some(r), _) if *r == runtime.name => (r, Some(runtime.version.as_str())),
            (_, Some(t)) => match versions.get(t) {
                Some(v) => (t, Some(v.as_str())),
                None => continue,
            },
            _ => continue,
        };
        let version = version.unwrap_or_default();
        match version::in_range(version, &b.versions) {
            Ok(true) => bugs.push(b),
            Ok(false) => {}
            Err(e) => {
                return Err(format!(
                    "the known bug {} is keyed on {component}'s version ({}), but the version read from the guest, {version:?}, is none: {e}",
                    b.issue, b.versions
                ));
            }
        }
    }
    Ok(bugs)
}

/// What a known bug is about on this guest: `crun 1.21`, `container-selinux 2.180.0`.
fn affected(b: &KnownBug, runtime: &RuntimeUse, versions: &BTreeMap<String, String>) -> String {
    match &b.tool {
        Some(t) => format!("{t} {}", versions.get(t).map(String::as_str).unwrap_or("?")),
        None => format!("{} {}", runtime.name, runtime.version),
    }
}

/// The verdict on a trial whose steps ended with `failure` (`None`: every step passed),
/// given the scenario's expectation and the known bugs for this runtime and guest.
pub fn judge(
    scenario: &Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
    failure: Option<StepFailure>,
    journal: &str,
) -> Verdict {
    let bugs = match applicable(scenario, runtime, versions) {
        Ok(bugs) => bugs,
        // The steps ran, but what they showed cannot be judged: the lab's failure.
        Err(why) => return Verdict::new(Outcome::Fail, why, None),
    };
    let mut verdict = judge_steps(scenario, runtime, versions, &bugs, failure, journal);
    verdict.steps_ran = true;
    verdict
}

fn judge_steps(
    scenario: &Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
    bugs: &[&KnownBug],
    failure: Option<StepFailure>,
    journal: &str,
) -> Verdict {
    let tail = |text: &str| -> String {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    match failure {
        None => {
            if let Some(b) = bugs.first() {
                return Verdict::new(
                    Outcome::Xpass,
                    format!(
                        "known bug did not reproduce on {} (listed for {})",
                        affected(b, runtime, versions),
                        b.versions
                    ),
                    Some(b.issue.clone()),
                );
            }
            match scenario.expect.outcome {
                ExpectedOutcome::Pass => Verdict::new(Outcome::Pass, String::new(), None),
                ExpectedOutcome::Fail => Verdict::new(
                    Outcome::Fail,
                    "expected a failure, but every step passed".into(),
                    None,
                ),
            }
        }
        Some(f) => {
            for b in bugs {
                if let Some(line) = f.evidence(b.step, &b.pattern) {
                    return Verdict::new(
                        Outcome::Xfail,
                        format!("known bug at step {} `{}`: {line}", f.index, f.step),
                        Some(b.issue.clone()),
                    )
                    .at(f.index, Some(line));
                }
            }
            if let (ExpectedOutcome::Fail, Some(pattern), Some(step)) = (
                scenario.expect.outcome,
                &scenario.expect.pattern,
                scenario.expect.step,
            ) {
                if let Some(line) = f.evidence(step, pattern) {
                    return Verdict::new(
                        Outcome::Pass,
                        format!(
                            "failed as expected at step {} `{}`: {line}",
                            f.index, f.step
                        ),
                        None,
                    );
                }
                let why = if f.index == step {
                    format!("without {pattern:?} in its output or the journal while it ran")
                } else {
                    format!("but step {step} was to fail, with {pattern:?}")
                };
                return Verdict::new(
                    Outcome::Fail,
                    format!(
                        "failed at step {} `{}` {why}: {}\njournal:\n{}",
                        f.index,
                        f.step,
                        f.output.trim(),
                        tail(journal)
                    ),
                    None,
                )
                .at(f.index, None);
            }
            Verdict::new(
                Outcome::Fail,
                format!(
                    "step {} `{}` failed: {}\njournal:\n{}",
                    f.index,
                    f.step,
                    f.output.trim(),
                    tail(journal)
                ),
                None,
            )
            .at(f.index, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, text).unwrap();
        Scenario::load(&p).unwrap()
    }

    const TWO_STEPS: &str = "description = \"d\"\n[socket]\nlisten = [{ stream = \"0.0.0.0:80\" }]\n[[steps]]\ndo = \"start\"\nunit = \"echo.socket\"\n[[steps]]\ndo = \"probe\"\naddress = \"tcp4:127.0.0.1:80\"\n";

    fn with_bug(step: usize) -> Scenario {
        load(&format!(
            "{TWO_STEPS}[[known_bug]]\nruntime = \"crun\"\nversions = \">=1.21,<1.23\"\nissue = \"https://github.com/containers/crun/issues/1828\"\npattern = \"recvfrom(PF_NETLINK)\"\nstep = {step}\n"
        ))
    }

    fn expecting_failure(step: usize) -> Scenario {
        load(&format!(
            "{TWO_STEPS}[expect]\noutcome = \"fail\"\nstep = {step}\npattern = \"Failed to create listening socket (0.0.0.0:80): Permission denied\"\n"
        ))
    }

    fn crun(version: &str) -> RuntimeUse {
        RuntimeUse {
            name: "crun".into(),
            podman_arg: "crun".into(),
            version: version.into(),
            source: None,
            commit: None,
        }
    }

    fn judged(
        s: &Scenario,
        runtime: &RuntimeUse,
        f: Option<StepFailure>,
        journal: &str,
    ) -> Verdict {
        judge(s, runtime, &BTreeMap::new(), f, journal)
    }

    fn failure(index: usize, step: &str, output: &str, journal: &str) -> Option<StepFailure> {
        Some(StepFailure {
            index,
            step: step.into(),
            output: output.into(),
            journal: journal.into(),
        })
    }

    // Recorded on debian-13 (crun 1.21, podman 5.4.2, systemd 257).
    const NETLINK: &str = "[   46.950888] lab conmon[597]: conmon 121d34d87535604766b2 <nwarn>: runtime stderr: recvfrom(PF_NETLINK): Permission denied";
    const PORT_80: &str = "[   37.227176] lab systemd[377]: echo.socket: Failed to create listening socket (0.0.0.0:80): Permission denied";
    const PROBE_FAILED: &str = "echo-probe: tcp4:127.0.0.1:80: connection closed before a reply";

    #[test]
    fn known_bug_in_the_journal_while_its_step_ran_is_xfail() {
        let v = judged(
            &with_bug(2),
            &crun("1.21"),
            failure(2, "probe tcp4:127.0.0.1:80", PROBE_FAILED, NETLINK),
            NETLINK,
        );
        assert_eq!(v.outcome, Outcome::Xfail, "{}", v.detail);
        assert!(v.issue.unwrap().ends_with("/1828"));
        assert!(
            v.detail
                .contains("step 2 `probe tcp4:127.0.0.1:80`: [   46.950888]"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn known_bug_text_at_another_step_is_a_failure() {
        // The bug's text, but the trial failed at step 1, not the bug's step 2.
        let v = judged(
            &with_bug(2),
            &crun("1.21"),
            failure(1, "start echo.socket", NETLINK, NETLINK),
            NETLINK,
        );
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.detail);
    }

    #[test]
    fn known_bug_text_logged_before_the_step_is_a_failure() {
        // The line is in the units' journal (the whole of it, as journal.txt), but not
        // among the lines logged while step 2 ran.
        let v = judged(
            &with_bug(2),
            &crun("1.21"),
            failure(2, "probe tcp4:127.0.0.1:80", PROBE_FAILED, ""),
            &format!("{NETLINK}\n"),
        );
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.detail);
    }

    #[test]
    fn known_bug_outside_its_versions_or_runtime_is_a_failure() {
        let f = || failure(2, "probe", PROBE_FAILED, NETLINK);
        assert_eq!(
            judged(&with_bug(2), &crun("1.23"), f(), "").outcome,
            Outcome::Fail
        );
        let runc = RuntimeUse {
            name: "runc".into(),
            podman_arg: "runc".into(),
            version: "1.21".into(),
            source: None,
            commit: None,
        };
        assert_eq!(judged(&with_bug(2), &runc, f(), "").outcome, Outcome::Fail);
    }

    #[test]
    fn a_known_bug_keyed_on_an_unreadable_version_fails_naming_it() {
        // A runtime whose --version printed nothing usable must not switch the bug off.
        for unread in ["", "unknown"] {
            let v = judged(&with_bug(2), &crun(unread), None, "");
            assert_eq!(v.outcome, Outcome::Fail, "{unread:?}: {}", v.detail);
            assert!(
                v.detail.contains("keyed on crun's version") && v.detail.contains("/1828"),
                "{}",
                v.detail
            );
            assert!(!v.steps_ran, "the lab's failure, not the steps'");
        }
        // Another runtime's unreadable version is not this bug's business.
        let runc = RuntimeUse {
            name: "runc".into(),
            podman_arg: "runc".into(),
            version: String::new(),
            source: None,
            commit: None,
        };
        assert_eq!(judged(&with_bug(2), &runc, None, "").outcome, Outcome::Pass);
    }

    #[test]
    fn known_bug_not_reproduced_is_xpass_and_fixed_versions_pass() {
        let v = judged(&with_bug(2), &crun("1.21"), None, "");
        assert_eq!(v.outcome, Outcome::Xpass, "{}", v.detail);
        assert_eq!(
            judged(&with_bug(2), &crun("1.24"), None, "").outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn expected_failure_at_its_step_with_its_text_passes() {
        let v = judged(
            &expecting_failure(1),
            &crun("1.21"),
            failure(
                1,
                "start echo.socket",
                "Job for echo.socket failed.",
                PORT_80,
            ),
            PORT_80,
        );
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.detail);
        assert!(
            v.detail.starts_with("failed as expected at step 1"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn expected_failure_elsewhere_or_without_its_text_fails() {
        let s = expecting_failure(1);
        // The text, at step 2.
        let v = judged(
            &s,
            &crun("1.21"),
            failure(2, "probe", PORT_80, PORT_80),
            PORT_80,
        );
        assert_eq!(v.outcome, Outcome::Fail);
        assert!(v.detail.contains("but step 1 was to fail"), "{}", v.detail);
        // Step 1, but another "Permission denied" (a broken user bus says that too).
        let bus = "Failed to connect to bus: Permission denied";
        let v = judged(
            &s,
            &crun("1.21"),
            failure(1, "start echo.socket", bus, ""),
            "",
        );
        assert_eq!(v.outcome, Outcome::Fail);
        // Step 1, the text only in journal lines from before it.
        let v = judged(
            &s,
            &crun("1.21"),
            failure(1, "start echo.socket", bus, ""),
            PORT_80,
        );
        assert_eq!(v.outcome, Outcome::Fail);
        // No step failed at all.
        let v = judged(&s, &crun("1.21"), None, PORT_80);
        assert_eq!(v.outcome, Outcome::Fail);
        assert_eq!(v.detail, "expected a failure, but every step passed");
    }

    #[test]
    fn tool_bugs_apply_only_where_the_tool_is() {
        let s = load(&format!(
            "{TWO_STEPS}[[known_bug]]\ntool = \"container-selinux\"\nversions = \"<2.183.0\"\nissue = \"u\"\npattern = \"avc:  denied\"\nstep = 2\n"
        ));
        let rt = crun("1.21");
        let old = BTreeMap::from([("container-selinux".to_string(), "2.180.0".to_string())]);
        let new = BTreeMap::from([("container-selinux".to_string(), "2.190.0".to_string())]);
        let denied = || {
            failure(
                2,
                "probe",
                "type=AVC msg=audit: avc:  denied { read write }",
                "",
            )
        };
        assert_eq!(judge(&s, &rt, &old, denied(), "").outcome, Outcome::Xfail);
        assert_eq!(judge(&s, &rt, &old, None, "").outcome, Outcome::Xpass);
        assert_eq!(judge(&s, &rt, &new, None, "").outcome, Outcome::Pass);
        // No SELinux on the guest: the bug does not apply.
        assert_eq!(
            judge(&s, &rt, &BTreeMap::new(), None, "").outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn requirements() {
        let mut s = with_bug(2);
        s.requires.podman = Some(">=4.4".into());
        let v = BTreeMap::from([("podman".to_string(), "4.3.1".to_string())]);
        let skip = requirements_verdict(&s, &v).unwrap();
        assert_eq!(skip.outcome, Outcome::Skip);
        assert_eq!(skip.detail, "needs podman >=4.4, the guest has 4.3.1");
        s.requires.reason = Some("quadlet is new in podman 4.4".into());
        assert_eq!(
            requirements_verdict(&s, &v).unwrap().detail,
            "needs podman >=4.4, the guest has 4.3.1: quadlet is new in podman 4.4"
        );
        let v = BTreeMap::from([("podman".to_string(), "5.4.2".to_string())]);
        assert!(requirements_verdict(&s, &v).is_none());
        // A version the guest did not tell is a FAIL naming it, never "0".
        let unread = requirements_verdict(&s, &BTreeMap::new()).unwrap();
        assert_eq!(unread.outcome, Outcome::Fail);
        assert!(
            unread.detail.contains("podman version could not be read"),
            "{}",
            unread.detail
        );
    }
}
