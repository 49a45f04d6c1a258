//! Reports of a run, all from the same results: `results.json`, `junit.xml`,
//! `summary.md` (a scenario × target/runtime table, usable as a GitHub step summary) and
//! `report.html` ([`html`]).
//! Each trial also leaves `result.json` in its own directory, so a run split over several
//! processes (nextest runs each trial in its own) still gets one report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::trial::{Outcome, TrialResult};

pub mod html;

pub const TRIAL_RESULT: &str = "result.json";

/// Every `result.json` under `run_dir`, sorted by trial name. Each result's `log_dir` is
/// where it was found, so a run directory moved elsewhere (an unpacked CI artifact)
/// still finds its files.
pub fn collect(run_dir: &Path) -> Result<Vec<TrialResult>> {
    let mut results = Vec::new();
    for entry in std::fs::read_dir(run_dir)? {
        let dir = entry?.path();
        let file = dir.join(TRIAL_RESULT);
        if file.is_file() {
            let text = std::fs::read_to_string(&file)?;
            let mut r: TrialResult = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            r.log_dir = dir;
            results.push(r);
        }
    }
    results.sort_by(|a: &TrialResult, b| a.name.cmp(&b.name));
    Ok(results)
}

pub fn write_trial(result: &TrialResult) -> Result<()> {
    std::fs::create_dir_all(&result.log_dir)?;
    std::fs::write(
        result.log_dir.join(TRIAL_RESULT),
        serde_json::to_string_pretty(result)?,
    )?;
    Ok(())
}

/// Writes the run reports.
pub fn write_all(run_dir: &Path, results: &[TrialResult]) -> Result<()> {
    std::fs::write(run_dir.join("report.html"), html::page(run_dir, results))?;
    std::fs::write(
        run_dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(run_dir.join("junit.xml"), junit(results)?)?;
    std::fs::write(run_dir.join("summary.md"), summary(results))?;
    Ok(())
}

pub fn junit(results: &[TrialResult]) -> Result<String> {
    let mut report = Report::new("socket-activation-lab");
    let mut suites: BTreeMap<String, TestSuite> = BTreeMap::new();
    for r in results {
        let suite = suites
            .entry(format!("{}::{}", r.target, r.runtime))
            .or_insert_with_key(|k| TestSuite::new(k.clone()));
        let mut status = match r.outcome {
            Outcome::Pass => TestCaseStatus::success(),
            Outcome::Fail | Outcome::Xpass => TestCaseStatus::non_success(NonSuccessKind::Failure),
            // pytest's convention: an expected failure is a skipped test of type
            // pytest.xfail, never a success, with the issue and the evidence.
            Outcome::Xfail => {
                let mut s = TestCaseStatus::skipped();
                s.set_type("pytest.xfail");
                s
            }
            Outcome::Skip => TestCaseStatus::skipped(),
        };
        if r.outcome == Outcome::Xfail {
            status.set_message(format!(
                "XFAIL: {}: {}",
                r.issue.as_deref().unwrap_or("no issue"),
                r.evidence.as_deref().unwrap_or_else(|| r
                    .detail
                    .lines()
                    .next()
                    .unwrap_or_default())
            ));
        } else if r.outcome != Outcome::Pass {
            status.set_message(format!(
                "{}: {}",
                r.outcome.label(),
                r.detail.lines().next().unwrap_or_default()
            ));
        }
        let mut case = TestCase::new(r.name.clone(), status);
        case.set_classname(r.scenario.clone());
        case.set_time(Duration::from_secs_f64(r.elapsed_s));
        case.set_system_out(r.detail.clone());
        case.add_property(("outcome", r.outcome.label()));
        if let Some(issue) = &r.issue {
            case.add_property(("issue", issue.as_str()));
        }
        for (k, v) in &r.versions {
            case.add_property((k.as_str(), v.as_str()));
        }
        suite.add_test_case(case);
    }
    report.add_test_suites(suites.into_values());
    Ok(report.to_string()?)
}

/// A Markdown table: one row per scenario, one column per target/runtime with versions.
pub fn summary(results: &[TrialResult]) -> String {
    let columns: BTreeSet<(String, String, String)> = results
        .iter()
        .map(|r| {
            (
                r.target.clone(),
                r.runtime.clone(),
                r.runtime_version().to_string(),
            )
        })
        .collect();
    // A row per scenario, or per (scenario, mutant) in a --mutants run.
    let scenarios: BTreeSet<(&str, Option<&str>)> = results
        .iter()
        .map(|r| (r.scenario.as_str(), r.mutant.as_deref()))
        .collect();
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    let mut s = format!(
        "## socket-activation-lab\n\n{} trials: {} PASS, {} FAIL, {} XFAIL, {} XPASS, {} SKIP\n\n",
        results.len(),
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Xfail),
        count(Outcome::Xpass),
        count(Outcome::Skip)
    );
    s += "| scenario |";
    for (t, r, v) in &columns {
        // The guest's other versions under the runtime's: podman, conmon and systemd
        // decide as much as the runtime does.
        let guest = results
            .iter()
            .find(|x| &x.target == t && &x.runtime == r && x.runtime_version() == v)
            .map(|x| {
                ["podman", "conmon", "systemd"]
                    .iter()
                    .filter_map(|tool| x.versions.get(*tool).map(|ver| format!("{tool} {ver}")))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|g| !g.is_empty())
            .map(|g| format!("<br>{g}"))
            .unwrap_or_default();
        s += &format!(" {t} {r} {v}{guest} |");
    }
    s += "\n|---|";
    s += &"---|".repeat(columns.len());
    s += "\n";
    let mut notes = Vec::new();
    for (sc, mutant) in &scenarios {
        match mutant {
            Some(m) => s += &format!("| {sc} with mutant {m} |"),
            None => s += &format!("| {sc} |"),
        }
        for (t, r, v) in &columns {
            let cell = results.iter().find(|x| {
                x.scenario == *sc
                    && x.mutant.as_deref() == *mutant
                    && &x.target == t
                    && &x.runtime == r
                    && x.runtime_version() == v
            });
            match cell {
                None => s += " |",
                Some(x) => {
                    let mut text = x.outcome.label().to_string();
                    if let Some(issue) = &x.issue {
                        text = format!("[{text}]({issue})");
                    }
                    if let Some(m) = &x.mutant {
                        text = format!("{text}: {m} {}", crate::mutant::Score::of(x).label());
                    }
                    if matches!(x.outcome, Outcome::Fail | Outcome::Xpass | Outcome::Skip) {
                        notes.push(format!(
                            "- {} {}: {}",
                            x.name,
                            x.outcome.label(),
                            x.detail.lines().next().unwrap_or_default()
                        ));
                    }
                    s += &format!(" {text} |");
                }
            }
        }
        s += "\n";
    }
    let sources: BTreeSet<(&str, &str)> = results
        .iter()
        .filter_map(|r| Some((r.runtime.as_str(), r.runtime_source.as_deref()?)))
        .collect();
    if !sources.is_empty() {
        s += "\nWhere the runtimes came from:\n\n";
        for (runtime, source) in sources {
            s += &format!("- {runtime}: {source}\n");
        }
    }
    let mut versions: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in results {
        // The guest's stack as its ready state recorded it, then the kernel and the OS.
        let line = vm::ready::GUEST_COMPONENTS
            .iter()
            .chain(&["kernel", "os"])
            .filter_map(|k| r.versions.get(*k).map(|v| format!("{k} {v}")))
            .collect::<Vec<_>>()
            .join(", ");
        versions.entry(r.target.as_str()).or_default().insert(line);
    }
    s += "\n";
    for (t, lines) in versions {
        for l in lines {
            s += &format!("- {t}: {l}\n");
        }
    }
    let measured: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.measurements
                .iter()
                .map(move |(k, v)| format!("- {}: {k} = {v}", r.name))
        })
        .collect();
    if !measured.is_empty() {
        s += "\n### Measurements (not part of the verdicts)\n\n";
        s += &measured.join("\n");
        s += "\n";
    }
    if !notes.is_empty() {
        s += "\n### Not passing\n\n";
        s += &notes.join("\n");
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, runtime: &str, outcome: Outcome, issue: Option<&str>) -> TrialResult {
        TrialResult {
            name: format!("{scenario}::debian-13::{runtime}"),
            scenario: scenario.into(),
            target: "debian-13".into(),
            runtime: runtime.into(),
            outcome,
            elapsed_s: 5.5,
            versions: BTreeMap::from([
                ("podman".to_string(), "5.4.2".to_string()),
                ("crun".to_string(), "1.21".to_string()),
                ("runc".to_string(), "1.1.15".to_string()),
            ]),
            issue: issue.map(String::from),
            detail: if outcome == Outcome::Pass {
                String::new()
            } else {
                "why it went so".into()
            },
            log_dir: "/tmp/x".into(),
            mutant: None,
            claim: None,
            failed_step: None,
            evidence: None,
            measurements: Vec::new(),
            runtime_source: None,
            runtime_commit: None,
            steps_ran: true,
            claim_steps: Vec::new(),
        }
    }

    #[test]
    fn summary_table() {
        let rs = vec![
            result("echo-tcp4", "crun", Outcome::Pass, None),
            result("echo-tcp4", "runc", Outcome::Pass, None),
            result(
                "sockets-3",
                "runc",
                Outcome::Xfail,
                Some("https://github.com/opencontainers/runc/issues/3488"),
            ),
            result("quadlet", "crun", Outcome::Skip, None),
        ];
        let s = summary(&rs);
        assert!(
            s.contains("4 trials: 2 PASS, 0 FAIL, 1 XFAIL, 0 XPASS, 1 SKIP"),
            "{s}"
        );
        assert!(
            s.contains(
                "| scenario | debian-13 crun 1.21<br>podman 5.4.2 | debian-13 runc 1.1.15<br>podman 5.4.2 |"
            ),
            "{s}"
        );
        assert!(s.contains("| echo-tcp4 | PASS | PASS |"), "{s}");
        assert!(
            s.contains(
                "| sockets-3 | | [XFAIL](https://github.com/opencontainers/runc/issues/3488) |"
            ),
            "{s}"
        );
        assert!(
            s.contains("- quadlet::debian-13::crun SKIP: why it went so"),
            "{s}"
        );
    }

    #[test]
    fn a_mutants_summary_names_the_mutant_in_its_rows_and_cells() {
        let mut caught = result("echo-tcp6", "crun", Outcome::Fail, None);
        caught.mutant = Some("echo-flip-byte".into());
        caught.failed_step = Some(2);
        caught.claim_steps = vec![2];
        let mut survived = result("echo-tcp6", "crun", Outcome::Pass, None);
        survived.mutant = Some("probe-port-off-by-one".into());
        let s = summary(&[caught, survived]);
        assert!(
            s.contains(
                "| echo-tcp6 with mutant echo-flip-byte | FAIL: echo-flip-byte caught at step 2 |"
            ),
            "{s}"
        );
        assert!(
            s.contains("| echo-tcp6 with mutant probe-port-off-by-one | PASS: probe-port-off-by-one SURVIVED |"),
            "{s}"
        );
    }

    #[test]
    fn junit_maps_outcomes() {
        let rs = vec![
            result("a", "crun", Outcome::Pass, None),
            result("b", "crun", Outcome::Fail, None),
            result("c", "crun", Outcome::Xfail, Some("u")),
            result("d", "crun", Outcome::Skip, None),
        ];
        let x = junit(&rs).unwrap();
        assert!(
            x.contains("tests=\"4\"")
                && x.contains("failures=\"1\"")
                && x.contains("skipped=\"2\""),
            "{x}"
        );
        assert!(x.contains("name=\"outcome\" value=\"XFAIL\""), "{x}");
        // The XFAIL is skipped the way pytest writes it, with its issue.
        assert!(
            x.contains("<skipped message=\"XFAIL: u: why it went so\" type=\"pytest.xfail\"/>"),
            "{x}"
        );
    }

    #[test]
    fn trial_results_round_trip_through_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = result("a", "crun", Outcome::Pass, None);
        r.log_dir = dir.path().join("a--debian-13--crun");
        write_trial(&r).unwrap();
        let back = collect(dir.path()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].name, r.name);
    }
}
