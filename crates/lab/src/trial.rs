//! A trial's record: its outcome, the versions it ran with and the evidence, as the
//! reports read it back from `result.json`; and the runtime a trial uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    /// A known upstream bug reproduced.
    Xfail,
    /// A known upstream bug did not reproduce: loud, and a failure of the run.
    Xpass,
    Skip,
}

impl Outcome {
    pub fn is_bad(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Xpass)
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Xfail => "XFAIL",
            Outcome::Xpass => "XPASS",
            Outcome::Skip => "SKIP",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialResult {
    /// `scenario::target::runtime`
    pub name: String,
    pub scenario: String,
    pub target: String,
    pub runtime: String,
    pub outcome: Outcome,
    pub elapsed_s: f64,
    pub versions: BTreeMap<String, String>,
    /// The upstream issue behind an XFAIL or XPASS.
    #[serde(default)]
    pub issue: Option<String>,
    /// Why: the failing step and the journal lines, or what the expected failure showed.
    pub detail: String,
    pub log_dir: PathBuf,
    /// The mutant the trial ran with (`cargo xtask test --mutants`), if any.
    #[serde(default)]
    pub mutant: Option<String>,
    /// What the scenario claims, for readers of the report.
    #[serde(default)]
    pub claim: Option<String>,
    /// The step that failed, counted from 1, if one did.
    #[serde(default)]
    pub failed_step: Option<usize>,
    /// The line that decided the verdict, if one did.
    #[serde(default)]
    pub evidence: Option<String>,
    /// What `run` steps with `record` measured (name, value), in step order.
    #[serde(default)]
    pub measurements: Vec<(String, String)>,
    /// Where the runtime came from when it is no distribution package: a host binary
    /// (with `git describe` of its tree) or a build of a git checkout's revision.
    #[serde(default)]
    pub runtime_source: Option<String>,
    /// The commit a runtime built from a git checkout was built at.
    #[serde(default)]
    pub runtime_commit: Option<String>,
    /// The scenario's steps ran and were judged. A FAIL without it is the lab's, the
    /// guest's or a mutant's set-up failing, and says nothing of the claim.
    #[serde(default)]
    pub steps_ran: bool,
    /// The steps that judge the scenario's claim, counted from 1.
    #[serde(default)]
    pub claim_steps: Vec<usize>,
}

impl TrialResult {
    pub fn runtime_version(&self) -> &str {
        self.versions
            .get(&self.runtime)
            .map(String::as_str)
            .unwrap_or("?")
    }

    pub fn summary_line(&self) -> String {
        let podman = self
            .versions
            .get("podman")
            .map(String::as_str)
            .unwrap_or("?");
        let first = self.detail.lines().next().unwrap_or_default();
        let why = if first.is_empty() {
            String::new()
        } else {
            format!(": {first}")
        };
        let issue = self
            .issue
            .as_deref()
            .map(|i| format!(" [{i}]"))
            .unwrap_or_default();
        format!(
            "{} {} ({} {}, podman {podman}) in {:.1} s{issue}{why}",
            self.outcome.label(),
            self.name,
            self.runtime,
            self.runtime_version(),
            self.elapsed_s
        )
    }
}

/// The runtime a trial uses: its name (what known bugs name), what podman gets as
/// `--runtime`, and the version the binary reported in the guest.
#[derive(Debug, Clone)]
pub struct RuntimeUse {
    pub name: String,
    pub podman_arg: String,
    pub version: String,
    /// Where a runtime that is no distribution package came from (`TrialResult::runtime_source`).
    pub source: Option<String>,
    /// The commit it was built at, for a build of a git checkout.
    pub commit: Option<String>,
}
