//! `report.html`: one self-contained page per run (inline CSS, no script, no network),
//! from the trials' `result.json` and the files beside them. The verdict grid; per trial
//! the claim, the verdict with the line that decided it, the steps with their commands
//! and outputs (the failing one open and marked), the units as written and the diffs of
//! declared rewrites, the journal and the serial console folded, and relative links to
//! the raw files, so the page works from an unpacked artifact. A bisect run (one
//! scenario across versions of a runtime) also gets its outcome per version.
//!
//! maud writes the HTML: every text is escaped by construction.

use std::collections::BTreeSet;
use std::path::Path;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::scenario::files;
use crate::trial::{Outcome, TrialResult};

const CSS: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; } h3 { font-size: 1em; }
table.grid { border-collapse: collapse; }
table.grid th, table.grid td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
table.grid thead th { background: #f3f3f3; font-weight: 600; }
table.grid small { font-weight: normal; color: #555; }
.outcome { font-weight: 700; padding: .1em .4em; border-radius: 3px; }
.PASS { background: #d7f5dd; } .FAIL { background: #ffd6d6; } .XFAIL { background: #fff1c2; }
.XPASS { background: #ffc2e6; } .SKIP { background: #e6e6e6; }
td.PASS, td.FAIL, td.XFAIL, td.XPASS, td.SKIP { font-weight: 600; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
mark { background: #ffe066; }
details { margin: .3em 0; } summary { cursor: pointer; }
details.step.failed > summary { color: #b00020; font-weight: 700; }
.diff-add { color: #116329; } .diff-del { color: #b00020; }
.claim { font-style: italic; }
.cause { font-weight: 600; }
svg text { font: 12px system-ui, sans-serif; }
"#;

/// An anchor id for a trial.
fn anchor(r: &TrialResult) -> String {
    r.name.replace("::", "--").replace('@', "-at-")
}

/// Where a trial's files are, relative to the run directory.
fn rel(run_dir: &Path, r: &TrialResult) -> String {
    r.log_dir
        .strip_prefix(run_dir)
        .unwrap_or(&r.log_dir)
        .display()
        .to_string()
}

/// One step of a trial as the command log records it: its heading, and its commands with
/// their outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedStep {
    pub heading: String,
    pub text: String,
}

/// Splits a command log at its `## ` headings (a step, the preparation); what comes
/// before the first heading (restoring, the runtime) is its own part.
pub fn split_steps(log: &str) -> Vec<LoggedStep> {
    let mut steps = vec![LoggedStep {
        heading: "before the steps: the guest and the runtime".into(),
        text: String::new(),
    }];
    for line in log.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            steps.push(LoggedStep {
                heading: h.to_string(),
                text: String::new(),
            });
        } else if let Some(last) = steps.last_mut() {
            last.text.push_str(line);
            last.text.push('\n');
        }
    }
    steps.retain(|s| !(s.text.trim().is_empty() && s.heading.starts_with("before")));
    steps
}

/// A step's log split into what a user would type and see, and the lab's plumbing around
/// it: the journal position taken before the step's first command, and the watcher
/// around a probe (`& p=$!` up to its `wait $p`), so the probe reads as the command it is.
pub fn split_plumbing(text: &str) -> (String, String) {
    let (mut shown, mut plumbing) = (String::new(), String::new());
    let mut in_watcher = false;
    for line in text.lines() {
        if in_watcher {
            plumbing += line;
            plumbing.push('\n');
            in_watcher = !line.starts_with("wait $p;");
        } else if line.starts_with("$ ") && line.contains("socket-activation-lab-journal-mark") {
            plumbing += line;
            plumbing.push('\n');
        } else if let Some(command) = line.strip_suffix(" & p=$!") {
            shown += command;
            shown.push('\n');
            plumbing += "(the probe runs in the background, watched:)\n";
            in_watcher = true;
        } else {
            shown += line;
            shown.push('\n');
        }
    }
    (shown, plumbing)
}

/// Text as lines, the lines equal to `evidence` marked.
fn marked(text: &str, evidence: Option<&str>) -> Markup {
    html! {
        pre {
            @for line in text.lines() {
                @if evidence.is_some_and(|e| !e.is_empty() && line.trim() == e.trim()) {
                    mark { (line) } "\n"
                } @else {
                    (line) "\n"
                }
            }
        }
    }
}

fn diff_text(text: &str) -> Markup {
    html! {
        pre {
            @for line in text.lines() {
                @if line.starts_with('+') && !line.starts_with("+++") {
                    span.diff-add { (line) } "\n"
                } @else if line.starts_with('-') && !line.starts_with("---") {
                    span.diff-del { (line) } "\n"
                } @else {
                    (line) "\n"
                }
            }
        }
    }
}

/// A unit, drop-in, quadlet or `containers.conf` file the trial installed (rewrite
/// diffs are shown apart).
fn is_unit_file(name: &str) -> bool {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    (files::UNIT_EXTENSIONS.contains(&ext)
        || files::QUADLET_EXTENSIONS.contains(&ext)
        || ext == "conf")
        && !name.starts_with("rewrites/")
}

/// The tail of a text: its last `n` lines.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line of a FAIL's text that says why, for a FAIL no pattern decided: a
/// program's `Error:` first (podman, netavark, the runtime), then any other error or
/// failure, never the lab's own lines or the client's (a probe only sees that the server
/// went away, not why).
pub fn cause_line(detail: &str) -> Option<&str> {
    let candidates = || {
        detail.lines().map(str::trim).filter(|l| {
            !l.is_empty()
                && !l.starts_with("lab:")
                && !l.contains("echo-probe")
                && !l.starts_with("step ")
                && !l.starts_with("failed at step ")
        })
    };
    let lower = |l: &str| l.to_ascii_lowercase();
    candidates()
        .find(|l| l.contains("Error:"))
        .or_else(|| candidates().find(|l| lower(l).contains("error")))
        .or_else(|| {
            candidates().find(|l| {
                let l = lower(l);
                ["failed", "denied", "refusing", "not found", "no such file"]
                    .iter()
                    .any(|w| l.contains(w))
            })
        })
}

fn trial_section(run_dir: &Path, r: &TrialResult) -> Markup {
    let dir = &r.log_dir;
    let base = rel(run_dir, r);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    // A FAIL that no pattern decided gets the line that explains it first and marked.
    let cause = (r.outcome == Outcome::Fail && r.evidence.is_none())
        .then(|| cause_line(&r.detail))
        .flatten();
    let evidence = r.evidence.as_deref().or(cause);
    let steps = read("commands.log")
        .map(|l| split_steps(&l))
        .unwrap_or_default();
    let files = files::relative_files(dir).unwrap_or_default();
    // Step 0 is the units' load, logged under the preparation's heading.
    let failing = r.failed_step.map(|n| match n {
        0 => "preparing the guest".to_string(),
        n => format!("step {n} "),
    });
    html! {
        section.trial id=(anchor(r)) {
            h2 {
                span class={"outcome " (r.outcome.label())} { (r.outcome.label()) }
                " " (r.name)
            }
            p {
                (r.runtime) " " (r.runtime_version())
                @for k in ["podman", "conmon", "systemd", "kernel"] {
                    @if let Some(v) = r.versions.get(k) { ", " (k) " " (v) }
                }
                ", " (format!("{:.1}", r.elapsed_s)) " s"
                @if let Some(m) = &r.mutant { ", mutant " strong { (m) } }
                @if let Some(issue) = &r.issue { " — " a href=(issue) { (issue) } }
            }
            @if let Some(line) = cause { p.cause { "Cause: " mark { (line) } } }
            @if let Some(claim) = &r.claim { p.claim { "Claim: " (claim) } }
            @if let Some(source) = &r.runtime_source { p { "Runtime: " (source) } }
            @if !r.detail.is_empty() {
                h3 { "Verdict" }
                (marked(&r.detail, evidence))
            }
            @if !steps.is_empty() {
                h3 { "Steps" }
                @for s in &steps {
                    @let is_failing = failing.as_deref().is_some_and(|f| s.heading.starts_with(f));
                    @let (shown, plumbing) = split_plumbing(&s.text);
                    details.step.failed[is_failing] open[is_failing] {
                        summary { (s.heading) @if is_failing { " — failed here" } }
                        (marked(&shown, evidence))
                        @if !plumbing.is_empty() {
                            details.plumbing {
                                summary { "the lab's plumbing (journal position, watcher)" }
                                pre { (plumbing) }
                            }
                        }
                    }
                }
            }
            @let units: Vec<&String> = files.iter().filter(|f| is_unit_file(f)).collect();
            @if !units.is_empty() {
                h3 { "Units as written" }
                @for f in units {
                    details {
                        summary { (f) }
                        pre { (read(f).unwrap_or_default()) }
                    }
                }
            }
            @let diffs: Vec<&String> = files.iter().filter(|f| f.starts_with("rewrites/")).collect();
            @if !diffs.is_empty() {
                h3 { "Declared rewrites" }
                @for f in diffs {
                    details open {
                        summary { (f) }
                        (diff_text(&read(f).unwrap_or_default()))
                    }
                }
            }
            @if let Some(journal) = read("journal.txt") {
                details {
                    summary { "journal of the scenario's units" }
                    (marked(&journal, evidence))
                }
            }
            @if let Some(console) = read("console.log") {
                details {
                    summary { "serial console (last 200 lines)" }
                    pre { (tail(&console, 200)) }
                }
            }
            p.files {
                "Files: "
                @for f in files.iter().filter(|f| !f.ends_with(".qcow2")) {
                    a href=(format!("{base}/{f}")) { (f) } " "
                }
            }
        }
    }
}

/// A bisect by commit: trials of runtimes built at two or more commits, in commit date
/// order, each with its verdict and the line that decided it.
fn commit_section(results: &[TrialResult]) -> Option<Markup> {
    let mut built: Vec<&TrialResult> = results
        .iter()
        .filter(|r| r.runtime_commit.is_some())
        .collect();
    let commits: BTreeSet<&str> = built
        .iter()
        .filter_map(|r| r.runtime_commit.as_deref())
        .collect();
    if commits.len() < 2 {
        return None;
    }
    let date = |r: &TrialResult| {
        let (line, commit) = (r.runtime_source.as_deref()?, r.runtime_commit.as_deref()?);
        crate::runtimes::build::date_in_line(line, commit).map(str::to_string)
    };
    built.sort_by_key(|r| (date(r), r.scenario.clone()));
    Some(html! {
        h2 { "Bisect by commit" }
        table {
            tr { th { "commit" } th { "scenario" } th { "verdict" } th { "built from" } th { "deciding line" } }
            @for r in &built {
                @let commit = r.runtime_commit.as_deref().unwrap_or_default();
                tr {
                    td { code { (&commit[..commit.len().min(12)]) } }
                    td { (r.scenario) }
                    td style=(format!("background:{}", color(r.outcome))) { (r.outcome.label()) }
                    td { (r.runtime_source.as_deref().unwrap_or_default()) }
                    td { code { (crate::bisect::deciding_line(r)) } }
                }
            }
        }
    })
}

/// A bisect run: one scenario and target, several versions of one runtime.
fn bisect_section(results: &[TrialResult]) -> Option<Markup> {
    let scenarios: BTreeSet<(&str, &str)> = results
        .iter()
        .map(|r| (r.scenario.as_str(), r.target.as_str()))
        .collect();
    let names: BTreeSet<&str> = results
        .iter()
        .map(|r| r.runtime.split('@').next().unwrap_or(&r.runtime))
        .collect();
    if scenarios.len() != 1 || names.len() != 1 || results.len() < 2 {
        return None;
    }
    let mut sorted: Vec<&TrialResult> = results.iter().collect();
    sorted.sort_by(|a, b| {
        let v = |r: &TrialResult| crate::version::Version::parse(r.runtime_version());
        v(a).cmp(&v(b))
    });
    let (w, step) = (120.0, 130.0);
    let width = 40.0 + step * sorted.len() as f64;
    Some(html! {
        h2 { "Outcome per version" }
        svg width=(width) height="110" role="img" aria-label="outcome per runtime version" {
            line x1="20" y1="55" x2=(width - 20.0) y2="55" stroke="#999" {}
            @for (i, r) in sorted.iter().enumerate() {
                @let x = 40.0 + step * i as f64;
                @let changed = i > 0 && sorted[i - 1].outcome != r.outcome;
                @if changed {
                    line x1=(x - 7.0) y1="10" x2=(x - 7.0) y2="100" stroke="#b00020" stroke-dasharray="4 3" {}
                }
                rect x=(x) y="40" width=(w - 20.0) height="30" rx="4" fill=(color(r.outcome)) stroke="#666" {}
                text x=(x + 6.0) y="60" { (r.outcome.label()) }
                text x=(x) y="30" { (r.runtime_version()) }
                text x=(x) y="90" { (r.runtime) }
            }
        }
        p { "A dashed line marks where the outcome changes." }
    })
}

fn color(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "#d7f5dd",
        Outcome::Fail => "#ffd6d6",
        Outcome::Xfail => "#fff1c2",
        Outcome::Xpass => "#ffc2e6",
        Outcome::Skip => "#e6e6e6",
    }
}

/// The page for the run in `run_dir` with these results.
pub fn page(run_dir: &Path, results: &[TrialResult]) -> String {
    let columns: BTreeSet<(&str, &str, &str)> = results
        .iter()
        .map(|r| (r.target.as_str(), r.runtime.as_str(), r.runtime_version()))
        .collect();
    let rows: BTreeSet<(Option<&str>, &str)> = results
        .iter()
        .map(|r| (r.mutant.as_deref(), r.scenario.as_str()))
        .collect();
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    let title = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "socket-activation-lab " (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "socket-activation-lab: " (title) }
                p.counts {
                    (results.len()) " trials: "
                    @for o in [Outcome::Pass, Outcome::Fail, Outcome::Xfail, Outcome::Xpass, Outcome::Skip] {
                        span class={"outcome " (o.label())} { (count(o)) " " (o.label()) } " "
                    }
                }
                table.grid {
                    thead {
                        tr {
                            th { "scenario" }
                            @for (t, rt, v) in &columns {
                                @let sample = results.iter().find(|r| r.target == *t && r.runtime == *rt);
                                th {
                                    (t) br; (rt) " " (v) br;
                                    small {
                                        @if let Some(r) = sample {
                                            @for k in ["podman", "conmon", "systemd", "kernel"] {
                                                @if let Some(val) = r.versions.get(k) { (k) " " (val) br; }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    tbody {
                        @for (m, sc) in &rows {
                            tr {
                                th {
                                    @if let Some(m) = m { "mutant " (m) ": " }
                                    (sc)
                                }
                                @for (t, rt, v) in &columns {
                                    @let cell = results.iter().find(|r| {
                                        r.mutant.as_deref() == *m && r.scenario == *sc && r.target == *t
                                            && r.runtime == *rt && r.runtime_version() == *v
                                    });
                                    @match cell {
                                        None => td {},
                                        Some(r) => td class=(r.outcome.label()) data-trial=(r.name) {
                                            a href=(format!("#{}", anchor(r))) { (r.outcome.label()) }
                                            @if let Some(issue) = &r.issue {
                                                " " a href=(issue) title=(issue) { "issue" }
                                            }
                                        },
                                    }
                                }
                            }
                        }
                    }
                }
                @if let Some(b) = commit_section(results) { (b) }
                @else if let Some(b) = bisect_section(results) { (b) }
                @for r in results { (trial_section(run_dir, r)) }
            }
        }
    };
    markup.into_string()
}

/// One bar of a benchmark chart: a method's ratio to the baseline (median of the
/// rounds) and the spread of the rounds' ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Bars from per-round values: `(method, round, value)`; each round's value is divided by
/// the baseline's value of the same round, so a slow round slows both.
pub fn ratio_bars(samples: &[(String, usize, f64)], baseline: &str) -> Vec<Bar> {
    let mut methods: Vec<&str> = Vec::new();
    for (m, _, _) in samples {
        if !methods.contains(&m.as_str()) {
            methods.push(m);
        }
    }
    let base = |round: usize| {
        samples
            .iter()
            .find(|(m, r, _)| m == baseline && *r == round)
            .map(|(_, _, v)| *v)
            .filter(|v| *v > 0.0)
    };
    methods
        .into_iter()
        .filter_map(|m| {
            let mut ratios: Vec<f64> = samples
                .iter()
                .filter(|(name, _, _)| name == m)
                .filter_map(|(_, r, v)| base(*r).map(|b| v / b))
                .collect();
            if ratios.is_empty() {
                return None;
            }
            ratios.sort_by(f64::total_cmp);
            let n = ratios.len();
            let median = if n % 2 == 1 {
                ratios[n / 2]
            } else {
                (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
            };
            Some(Bar {
                label: m.to_string(),
                median,
                min: ratios[0],
                max: ratios[n - 1],
            })
        })
        .collect()
}

/// A horizontal bar chart (inline SVG) of ratios, a line at 1.0, whiskers for the spread.
pub fn bar_chart(bars: &[Bar]) -> Markup {
    let scale_max = bars.iter().map(|b| b.max).fold(1.0_f64, f64::max) * 1.1;
    let (label_w, plot_w, row_h) = (260.0, 520.0, 28.0);
    let x = |v: f64| label_w + plot_w * v / scale_max;
    let height = 30.0 + row_h * bars.len() as f64;
    html! {
        svg width=(label_w + plot_w + 80.0) height=(height) role="img" aria-label="ratio to the baseline" {
            line x1=(x(1.0)) y1="5" x2=(x(1.0)) y2=(height - 5.0) stroke="#555" stroke-dasharray="3 3" {}
            text x=(x(1.0) + 3.0) y="14" { "1.0 (baseline)" }
            @for (i, b) in bars.iter().enumerate() {
                @let y = 22.0 + row_h * i as f64;
                text x="4" y=(y + 14.0) { (b.label) }
                rect x=(label_w) y=(y) width=(x(b.median) - label_w) height="18" fill="#7aa6d8" {}
                line x1=(x(b.min)) y1=(y + 9.0) x2=(x(b.max)) y2=(y + 9.0) stroke="#222" {}
                line x1=(x(b.min)) y1=(y + 4.0) x2=(x(b.min)) y2=(y + 14.0) stroke="#222" {}
                line x1=(x(b.max)) y1=(y + 4.0) x2=(x(b.max)) y2=(y + 14.0) stroke="#222" {}
                text x=(x(b.max) + 6.0) y=(y + 14.0) { (format!("{:.2}x", b.median)) }
            }
        }
    }
}

/// A page with a benchmark's chart and its Markdown table as text.
pub fn chart_page(title: &str, context: &str, bars: &[Bar], table: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { (title) }
                p { (context) }
                p { "Bars: the median over the rounds of each round's ratio to the baseline; whiskers: the lowest and highest round." }
                (bar_chart(bars))
                h2 { "Table" }
                pre { (table) }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_step_shows_the_probe_and_folds_the_watcher() {
        let step = "$ [root] journalctl -q -n 0 --show-cursor > /run/socket-activation-lab-journal-mark || { echo 'lab: x' >&2; exit 125; }\n$ [root] echo-probe tcp4:127.0.0.1:3000 --send hello --timeout 150 --json --expect hello & p=$!\n( exec 3>&2 2>/dev/null >/dev/null </dev/null\n  sleep 4 3>&-\n  done ) & w=$!\nwait $p; r=$?; kill $w 2>/dev/null; exit $r\n{\"ok\":true}\n[exit 0 after 3.92 s]\n";
        let (shown, plumbing) = split_plumbing(step);
        assert_eq!(
            shown,
            "$ [root] echo-probe tcp4:127.0.0.1:3000 --send hello --timeout 150 --json --expect hello\n{\"ok\":true}\n[exit 0 after 3.92 s]\n"
        );
        assert!(
            plumbing.contains("--show-cursor") && plumbing.contains("wait $p;"),
            "{plumbing}"
        );
        // A plain command is left alone.
        let plain = "$ [test] systemctl --user start echo.socket\n[exit 0 after 0.2 s]\n";
        assert_eq!(split_plumbing(plain), (plain.to_string(), String::new()));
    }

    #[test]
    fn the_cause_of_a_fail_is_the_first_error_line_not_the_lab_s_own() {
        // As a container on a user-defined network failed on debian-12 (the cause in
        // the middle of 40 journal lines).
        let detail = "step 2 `probe tcp4:127.0.0.1:3000` failed: echo-probe: tcp4:127.0.0.1:3000: connection closed before a reply\nlab: stopped waiting: echo.service failed 4 times during the step\njournal:\n[ 40.1] lab systemd[377]: Starting echo.service...\n[ 41.2] lab echo[590]: Error: netavark: No such file or directory\n[ 41.3] lab systemd[377]: echo.service: Main process exited, code=exited, status=126/n/a\n[ 41.3] lab systemd[377]: echo.service: Failed with result 'exit-code'.";
        assert_eq!(
            cause_line(detail),
            Some("[ 41.2] lab echo[590]: Error: netavark: No such file or directory")
        );
        let systemd_only = "step 1 `start echo.socket` failed: Job failed\njournal:\n[ 3.0] lab systemd[377]: echo.socket: Failed to create listening socket (0.0.0.0:80): Permission denied";
        assert_eq!(
            cause_line(systemd_only),
            Some(
                "[ 3.0] lab systemd[377]: echo.socket: Failed to create listening socket (0.0.0.0:80): Permission denied"
            )
        );
        assert_eq!(cause_line("step 3 `run true` failed: exit 1"), None);
    }

    #[test]
    fn the_command_log_splits_at_step_headings() {
        let log = "$ [root] true\n[exit 0 after 0.01 s]\n\n## preparing the guest: files\n$ [root] mkdir x\n[exit 0 after 0.1 s]\n## step 1 (start): echo.socket\n$ [test] systemctl --user start echo.socket\n[exit 0 after 0.2 s]\n## step 2 (probe): tcp4:127.0.0.1:3000\n$ [root] echo-probe\nrefused\n[exit 1 after 0.1 s]\n";
        let steps = split_steps(log);
        let headings: Vec<&str> = steps.iter().map(|s| s.heading.as_str()).collect();
        assert_eq!(
            headings,
            [
                "before the steps: the guest and the runtime",
                "preparing the guest: files",
                "step 1 (start): echo.socket",
                "step 2 (probe): tcp4:127.0.0.1:3000"
            ]
        );
        assert!(steps[3].text.contains("refused"));
    }

    #[test]
    fn ratios_are_per_round_with_their_spread() {
        let samples = vec![
            ("base".to_string(), 0, 100.0),
            ("base".to_string(), 1, 50.0),
            ("base".to_string(), 2, 100.0),
            ("fast".to_string(), 0, 90.0),
            ("fast".to_string(), 1, 50.0),
            ("fast".to_string(), 2, 80.0),
        ];
        let bars = ratio_bars(&samples, "base");
        assert_eq!(bars[0].label, "base");
        assert_eq!((bars[0].median, bars[0].min, bars[0].max), (1.0, 1.0, 1.0));
        assert_eq!(bars[1].label, "fast");
        assert_eq!((bars[1].median, bars[1].min, bars[1].max), (0.9, 0.8, 1.0));
        let svg = bar_chart(&bars).into_string();
        assert!(
            svg.starts_with("<svg") && svg.contains(">0.90x</text>"),
            "{svg}"
        );
    }

    fn built(commit: &str, date: &str, outcome: Outcome) -> TrialResult {
        let source = crate::runtimes::build::Source {
            dir: "/src/crun".into(),
            commit: commit.into(),
            describe: "1.16.1-32-gab64a5cb".into(),
            subject: "linux: fix".into(),
            date: date.into(),
            diff: None,
            untracked: Vec::new(),
        };
        TrialResult {
            name: format!("restrict::debian-13::crun@git:/src/crun#{commit}"),
            scenario: "restrict".into(),
            target: "debian-13".into(),
            runtime: format!("crun@git:/src/crun#{commit}"),
            outcome,
            elapsed_s: 5.0,
            versions: Default::default(),
            issue: None,
            detail: String::new(),
            log_dir: "/tmp/x".into(),
            mutant: None,
            claim: None,
            failed_step: None,
            evidence: None,
            measurements: Vec::new(),
            runtime_source: Some(source.describe_line()),
            runtime_commit: Some(commit.into()),
            steps_ran: true,
            claim_steps: Vec::new(),
        }
    }

    #[test]
    fn commits_are_listed_in_date_order() {
        let newer = built(
            "ab64a5cb5e141edea1a4",
            "2024-09-03T14:12:09+02:00",
            Outcome::Fail,
        );
        let older = built(
            "28b47d6c7f41f2e29e0b",
            "2024-09-03T11:31:42+02:00",
            Outcome::Pass,
        );
        let html = commit_section(&[newer.clone(), older])
            .unwrap()
            .into_string();
        let (a, b) = (
            html.find("28b47d6c7f41").unwrap(),
            html.find("ab64a5cb5e14").unwrap(),
        );
        assert!(a < b, "the older commit first: {html}");
        assert!(
            html.contains("<td>restrict</td>") && html.contains("every step held"),
            "{html}"
        );
        // One commit is no bisect.
        assert!(commit_section(&[newer]).is_none());
    }

    #[test]
    fn text_is_escaped_and_the_evidence_marked() {
        let m = marked("a <b>\nthe line\n", Some("the line")).into_string();
        assert_eq!(m, "<pre>a &lt;b&gt;\n<mark>the line</mark>\n</pre>");
    }
}
