//! The verdict: pure functions from a trial's recorded step failure, journal and versions
//! to PASS, FAIL, XFAIL, XPASS or SKIP with the evidence that decided it. Nothing here
//! touches a guest, so every rule is unit-tested on recorded outputs.

use std::collections::BTreeMap;

use crate::scenario::schema::{ExpectedOutcome, KnownBug, Scenario};
use crate::trial::{Outcome, RuntimeUse};
use crate::version;

/// The step that failed and what it printed.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub step: String,
    pub output: String,
}

/// An outcome, the evidence for it, and the upstream issue behind an XFAIL or XPASS.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub detail: String,
    pub issue: Option<String>,
}

impl Verdict {
    pub fn new(outcome: Outcome, detail: String, issue: Option<String>) -> Verdict {
        Verdict {
            outcome,
            detail,
            issue,
        }
    }
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
                    format!("needs {tool} {range}, the guest has {v}"),
                    None,
                ));
            }
            Err(e) => return fail(format!("requires.{tool} = {range:?}: {e}")),
        }
    }
    None
}

/// The known bugs that apply to this runtime and these guest versions.
fn applicable<'a>(
    scenario: &'a Scenario,
    runtime: &RuntimeUse,
    versions: &BTreeMap<String, String>,
) -> Vec<&'a KnownBug> {
    scenario
        .known_bug
        .iter()
        .filter(|b| {
            let version = match (&b.runtime, &b.tool) {
                (Some(r), _) if *r == runtime.name => Some(runtime.version.as_str()),
                (_, Some(t)) => versions
                    .get(t)
                    .map(String::as_str)
                    .filter(|v| !v.is_empty()),
                _ => None,
            };
            version.is_some_and(|v| version::in_range(v, &b.versions).unwrap_or(false))
        })
        .collect()
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
    let tail = |text: &str| -> String {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let bugs = applicable(scenario, runtime, versions);
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
            let evidence = format!("{}\n{journal}", f.output);
            for b in &bugs {
                if let Some(line) = evidence.lines().find(|l| l.contains(&b.pattern)) {
                    return Verdict::new(
                        Outcome::Xfail,
                        format!("known bug at `{}`: {}", f.step, line.trim()),
                        Some(b.issue.clone()),
                    );
                }
            }
            if let (ExpectedOutcome::Fail, Some(pattern)) =
                (scenario.expect.outcome, &scenario.expect.pattern)
            {
                if let Some(line) = evidence.lines().find(|l| l.contains(pattern.as_str())) {
                    return Verdict::new(
                        Outcome::Pass,
                        format!("failed as expected at `{}`: {}", f.step, line.trim()),
                        None,
                    );
                }
                return Verdict::new(
                    Outcome::Fail,
                    format!(
                        "failed at `{}` but without {pattern:?}: {}\njournal:\n{}",
                        f.step,
                        f.output.trim(),
                        tail(journal)
                    ),
                    None,
                );
            }
            Verdict::new(
                Outcome::Fail,
                format!(
                    "step `{}` failed: {}\njournal:\n{}",
                    f.step,
                    f.output.trim(),
                    tail(journal)
                ),
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario_with_bug() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bug.toml");
        std::fs::write(
            &p,
            "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\nruntime = \"runc\"\nversions = \"<1.1.3\"\nissue = \"https://github.com/opencontainers/runc/issues/3488\"\npattern = \"_LIBCONTAINER_LOGPIPE\"\n",
        )
        .unwrap();
        Scenario::load(&p).unwrap()
    }

    fn judge_rt(
        s: &Scenario,
        name: &str,
        version: &str,
        f: Option<StepFailure>,
        journal: &str,
    ) -> Verdict {
        let rt = RuntimeUse {
            name: name.into(),
            podman_arg: name.into(),
            version: version.into(),
        };
        judge(s, &rt, &BTreeMap::new(), f, journal)
    }

    #[test]
    fn tool_bugs_apply_only_where_the_tool_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("se.toml");
        std::fs::write(
            &p,
            "description = \"d\"\n[[steps]]\ndo = \"reboot\"\n[[known_bug]]\ntool = \"container-selinux\"\nversions = \"<2.183.0\"\nissue = \"u\"\npattern = \"avc:  denied\"\n",
        )
        .unwrap();
        let s = Scenario::load(&p).unwrap();
        let rt = RuntimeUse {
            name: "crun".into(),
            podman_arg: "crun".into(),
            version: "1.21".into(),
        };
        let old = BTreeMap::from([("container-selinux".to_string(), "2.180.0".to_string())]);
        let new = BTreeMap::from([("container-selinux".to_string(), "2.190.0".to_string())]);
        let denied = || failure("type=AVC msg=audit: avc:  denied { read write }");
        assert_eq!(judge(&s, &rt, &old, denied(), "").outcome, Outcome::Xfail);
        assert_eq!(judge(&s, &rt, &old, None, "").outcome, Outcome::Xpass);
        assert_eq!(judge(&s, &rt, &new, None, "").outcome, Outcome::Pass);
        // No SELinux on the guest: the bug does not apply.
        assert_eq!(
            judge(&s, &rt, &BTreeMap::new(), None, "").outcome,
            Outcome::Pass
        );
    }

    fn failure(text: &str) -> Option<StepFailure> {
        Some(StepFailure {
            step: "probe".into(),
            output: text.into(),
        })
    }

    #[test]
    fn known_bug_reproduced_is_xfail() {
        let Verdict {
            outcome: o, issue, ..
        } = judge_rt(
            &scenario_with_bug(),
            "runc",
            "1.0.0~rc93",
            failure("bad value for _LIBCONTAINER_LOGPIPE=7"),
            "",
        );
        assert_eq!(o, Outcome::Xfail);
        assert!(issue.unwrap().ends_with("/3488"));
    }

    #[test]
    fn known_bug_not_reproduced_is_xpass() {
        let Verdict {
            outcome: o, detail, ..
        } = judge_rt(&scenario_with_bug(), "runc", "1.1.2", None, "");
        assert_eq!(o, Outcome::Xpass, "{detail}");
    }

    #[test]
    fn fixed_version_passes_and_other_failures_fail() {
        let s = scenario_with_bug();
        assert_eq!(
            judge_rt(&s, "runc", "1.1.15+ds1", None, "").outcome,
            Outcome::Pass
        );
        // In the bug's range but failing for another reason: a plain failure.
        assert_eq!(
            judge_rt(&s, "runc", "1.1.2", failure("connection refused"), "").outcome,
            Outcome::Fail
        );
        // The pattern on another runtime is not this bug.
        assert_eq!(
            judge_rt(&s, "crun", "1.1.2", failure("_LIBCONTAINER_LOGPIPE"), "").outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn requirements() {
        let mut s = scenario_with_bug();
        s.requires.podman = Some(">=4.4".into());
        let v = BTreeMap::from([("podman".to_string(), "4.3.1".to_string())]);
        let skip = requirements_verdict(&s, &v).unwrap();
        assert_eq!(skip.outcome, Outcome::Skip);
        assert_eq!(skip.detail, "needs podman >=4.4, the guest has 4.3.1");
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
