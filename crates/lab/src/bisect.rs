//! Bisecting a runtime's commits with a trial's verdict as the oracle: which outcome a
//! verdict counts as, what `git bisect` said, and the table of what was tested. Pure; the
//! CLI drives git and the trials.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use crate::trial::{Outcome, TrialResult};

/// What a trial says of the scenario's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// PASS, or XPASS (a listed bug did not reproduce): the claim holds.
    Holds,
    /// FAIL or XFAIL at one of the scenario's steps: the claim does not hold.
    Fails,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Claim::Holds => "pass",
            Claim::Fails => "fail",
        })
    }
}

impl FromStr for Claim {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Claim> {
        match s {
            "pass" => Ok(Claim::Holds),
            "fail" => Ok(Claim::Fails),
            _ => bail!("{s:?}: expected pass (hunting a regression) or fail (hunting a fix)"),
        }
    }
}

/// How git bisect is told about one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Old,
    New,
    /// Cannot be tested (`git bisect skip`), with why: it did not build, the trial was a
    /// SKIP, or it failed before any step (the guest, the tool), which says nothing of
    /// the claim.
    Skip(String),
}

impl Mark {
    /// How the table and the progress lines say it: `old`, `new`, `skip (why)`.
    pub fn label(&self) -> String {
        match self {
            Mark::Skip(why) => format!("skip ({why})"),
            m => m.git_word().to_string(),
        }
    }

    pub fn git_word(&self) -> &'static str {
        match self {
            Mark::Old => "old",
            Mark::New => "new",
            Mark::Skip(_) => "skip",
        }
    }
}

/// What a trial's result says of the claim, if anything.
pub fn claim_of(result: &TrialResult) -> std::result::Result<Claim, String> {
    match result.outcome {
        Outcome::Pass | Outcome::Xpass => Ok(Claim::Holds),
        Outcome::Fail | Outcome::Xfail if result.failed_step.is_some() => Ok(Claim::Fails),
        Outcome::Skip => Err(format!("SKIP: {}", first_line(&result.detail))),
        _ => Err(format!(
            "{} before any step: {}",
            result.outcome.label(),
            first_line(&result.detail)
        )),
    }
}

/// The mark for a trial, given which outcome the old end has.
pub fn mark(result: &TrialResult, old: Claim) -> Mark {
    match claim_of(result) {
        Ok(c) if c == old => Mark::Old,
        Ok(_) => Mark::New,
        Err(why) => Mark::Skip(why),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The line that decided a trial, for a reader comparing commits: its evidence (a known
/// bug's or an expected failure's line); for a FAIL, the failing step (a probe's JSON
/// reduced to its kind of failure) and the last error the journal logged during it
/// (podman's `Error: ...`, which names the runtime's own words); for a PASS, that every
/// step held.
pub fn deciding_line(result: &TrialResult) -> String {
    if let Some(e) = &result.evidence {
        return e.trim().to_string();
    }
    if result.outcome == Outcome::Pass {
        return "every step held".to_string();
    }
    let step = first_line(&result.detail);
    let step = match (step.find(" failed: {"), step.split("\"failure\":\"").nth(1)) {
        (Some(at), Some(kind)) => format!(
            "{} failed: {}",
            &step[..at],
            kind.split('"').next().unwrap_or_default()
        ),
        _ => step.to_string(),
    };
    let error = result
        .detail
        .lines()
        .skip(1)
        .filter(|l| l.contains("Error:") || l.contains("<error>"))
        .last()
        .map(|l| match l.find("] ") {
            Some(at) => l[at + 2..].trim(),
            None => l.trim(),
        });
    match error {
        Some(e) => format!("{step}; {e}"),
        None => step,
    }
}

/// What `git bisect old|new|skip` printed, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Another commit to test (now at `BISECT_HEAD`).
    Next,
    /// `HASH is the first new commit`.
    Found(String),
    /// Only skipped commits are left: the first new commit is one of these.
    OnlySkipped(Vec<String>),
}

pub fn parse_step(output: &str) -> Step {
    if let Some(line) = output
        .lines()
        .find(|l| l.contains("is the first new commit") || l.contains("is the first bad commit"))
    {
        return Step::Found(
            line.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    if output.contains("only 'skip'ped commits left") {
        let hashes = output
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.len() >= 7 && w.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_string)
            .collect();
        return Step::OnlySkipped(hashes);
    }
    Step::Next
}

/// One tested commit, for the printed table and the report.
#[derive(Debug, Clone)]
pub struct Tested {
    pub commit: String,
    pub describe: String,
    pub subject: String,
    pub date: String,
    pub mark: Mark,
    /// `PASS`, `FAIL`, ..., or `no build`.
    pub verdict: String,
    pub line: String,
}

/// The Markdown table of tested commits, in the order tested.
pub fn table(tested: &[Tested]) -> String {
    let mut s = String::from(
        "| # | commit | describe | date | verdict | counts as | deciding line |\n|---|---|---|---|---|---|---|\n",
    );
    for (i, t) in tested.iter().enumerate() {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            &t.commit[..t.commit.len().min(12)],
            t.describe,
            t.date,
            t.verdict,
            t.mark.label(),
            t.line.replace('|', "\\|")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn result(outcome: Outcome, step: Option<usize>) -> TrialResult {
        TrialResult {
            name: "s::t::crun".into(),
            scenario: "s".into(),
            target: "t".into(),
            runtime: "crun".into(),
            outcome,
            elapsed_s: 1.0,
            versions: Default::default(),
            issue: None,
            detail: "why\nmore".into(),
            log_dir: "/tmp".into(),
            mutant: None,
            claim: None,
            failed_step: step,
            evidence: None,
            measurements: Vec::new(),
            runtime_source: None,
            runtime_commit: None,
            steps_ran: true,
            claim_steps: Vec::new(),
        }
    }

    #[rstest]
    #[case(Outcome::Pass, None, Claim::Holds, Mark::Old)]
    #[case(Outcome::Xpass, None, Claim::Holds, Mark::Old)]
    #[case(Outcome::Fail, Some(2), Claim::Holds, Mark::New)]
    #[case(Outcome::Xfail, Some(2), Claim::Holds, Mark::New)]
    #[case(Outcome::Xfail, Some(2), Claim::Fails, Mark::Old)]
    #[case(Outcome::Pass, None, Claim::Fails, Mark::New)]
    fn marks(#[case] o: Outcome, #[case] step: Option<usize>, #[case] old: Claim, #[case] m: Mark) {
        assert_eq!(mark(&result(o, step), old), m);
    }

    #[test]
    fn a_fail_before_any_step_and_a_skip_say_nothing_of_the_claim() {
        assert_eq!(
            mark(&result(Outcome::Fail, None), Claim::Holds),
            Mark::Skip("FAIL before any step: why".into())
        );
        assert_eq!(
            mark(&result(Outcome::Skip, None), Claim::Fails),
            Mark::Skip("SKIP: why".into())
        );
    }

    #[test]
    fn the_deciding_line_names_the_step_and_the_last_error() {
        let mut r = result(Outcome::Fail, Some(2));
        r.detail = "step 2 `probe tcp4:127.0.0.1:3000` failed: {\"ok\":false,\"error\":\"Connection reset by peer\",\"failure\":\"reset\"}\nlab: stopped waiting\njournal:\n[ 30.8] lab conmon[629]: conmon ba7c <error>: Failed to create container: exit status 1\n[ 31.1] lab podman[618]: Error: OCI runtime error: /x/crun: recvfrom(PF_NETLINK)\n[ 31.2] lab systemd[254]: echo.service: Failed with result 'exit-code'.".into();
        assert_eq!(
            deciding_line(&r),
            "step 2 `probe tcp4:127.0.0.1:3000` failed: reset; lab podman[618]: Error: OCI runtime error: /x/crun: recvfrom(PF_NETLINK)"
        );
        r.evidence = Some("the known bug's line".into());
        assert_eq!(deciding_line(&r), "the known bug's line");
        assert_eq!(
            deciding_line(&result(Outcome::Pass, None)),
            "every step held"
        );
        assert_eq!(deciding_line(&result(Outcome::Fail, Some(1))), "why");
    }

    #[test]
    fn git_bisect_output() {
        let found = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2 is the first new commit\ncommit a1b2c3d\nAuthor: x\n";
        assert_eq!(
            parse_step(found),
            Step::Found("a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2".into())
        );
        let next =
            "Bisecting: 3 revisions left to test after this (roughly 2 steps)\n[0123abc] subject\n";
        assert_eq!(parse_step(next), Step::Next);
        let skipped = "There are only 'skip'ped commits left to test.\nThe first new commit could be any of:\n0123456789abcdef0123456789abcdef01234567\nfedcba9876543210fedcba9876543210fedcba98\nWe cannot bisect more!\n";
        assert_eq!(
            parse_step(skipped),
            Step::OnlySkipped(vec![
                "0123456789abcdef0123456789abcdef01234567".into(),
                "fedcba9876543210fedcba9876543210fedcba98".into()
            ])
        );
    }

    #[test]
    fn the_table_has_a_row_per_tested_commit() {
        let row = |commit: &str, mark: Mark, line: &str| Tested {
            commit: commit.into(),
            describe: "1.16.1-32-gab64a5cb".into(),
            subject: "linux: fix".into(),
            date: "2024-09-03T14:12:09+02:00".into(),
            mark,
            verdict: "FAIL".into(),
            line: line.into(),
        };
        let t = table(&[
            row("ab64a5cb5e141edea1a4", Mark::New, "a | b"),
            row(
                "28b47d6c7f41f2e29e0b",
                Mark::Skip("does not build".into()),
                "x",
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(
            lines[2],
            "| 1 | ab64a5cb5e14 | 1.16.1-32-gab64a5cb | 2024-09-03T14:12:09+02:00 | FAIL | new | a \\| b |"
        );
        assert!(lines[3].contains("| skip (does not build) | x |"), "{t}");
    }

    #[test]
    fn claims_parse() {
        assert_eq!("pass".parse::<Claim>().unwrap(), Claim::Holds);
        assert_eq!("fail".parse::<Claim>().unwrap(), Claim::Fails);
        let e = "good".parse::<Claim>().unwrap_err().to_string();
        assert!(e.contains("\"good\""), "{e}");
    }
}
