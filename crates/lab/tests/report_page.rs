//! `report.html` as a person sees it. The page of a recorded run (checked in under
//! `tests/fixtures/report-run/`: a PASS, an XFAIL and a deliberate FAIL on debian-13) is
//! rendered and checked as text; then loaded in headless Chromium, which must show one
//! grid cell per trial with its outcome and the failing step, and a screenshot is saved
//! under `target/`. With `SAL_REPORT_RUNS` (run directories, one per line) the same
//! checks run on those too: `cargo xtask ci` passes its own smoke run.

use std::path::{Path, PathBuf};
use std::process::Command;

use lab::trial::Outcome;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report-run")
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// A copy of a run directory (the page is written into it) and its results.
fn rendered(run: &Path) -> (tempfile::TempDir, PathBuf, Vec<lab::trial::TrialResult>) {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join(run.file_name().unwrap());
    copy_dir(run, &copy);
    let results = lab::report::collect(&copy).unwrap();
    lab::report::write_all(&copy, &results).unwrap();
    (tmp, copy, results)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else if p.extension().is_none_or(|x| x != "qcow2") {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn the_recorded_run_has_a_pass_an_xfail_and_a_fail() {
    let (_tmp, dir, results) = rendered(&fixture());
    let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
    for o in [Outcome::Pass, Outcome::Xfail, Outcome::Fail] {
        assert!(outcomes.contains(&o), "{outcomes:?}");
    }
    let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    // One grid cell per trial, with its outcome.
    for r in &results {
        let cell = format!(
            "<td class=\"{}\" data-trial=\"{}\">",
            r.outcome.label(),
            r.name
        );
        assert_eq!(page.matches(&cell).count(), 1, "{cell}");
    }
    // The failing step is open and marked; the XFAIL's deciding line is highlighted.
    assert!(
        page.contains("<details class=\"step failed\" open><summary>step 2 (probe): tcp4:127.0.0.1:3000 — failed here</summary>"),
        "no open failing step"
    );
    let xfail = results
        .iter()
        .find(|r| r.outcome == Outcome::Xfail)
        .unwrap();
    let evidence = xfail.evidence.as_deref().unwrap();
    assert!(page.contains(&format!("<mark>{}", evidence.split('<').next().unwrap())));
    // Self-contained: no script and nothing fetched from elsewhere.
    assert!(!page.contains("<script") && !page.contains("src=\"http"));
}

/// What Chromium made of the page: its DOM after loading, and a screenshot.
fn in_chromium(page: &Path, screenshot: &Path) -> String {
    let url = format!("file://{}", page.display());
    let run = |args: &[&str]| {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(args)
            .arg(&url)
            .output()
            .expect("chromium (cargo xtask ci installs Debian's chromium package)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "--window-size=1400,1400",
        &format!("--screenshot={}", screenshot.display()),
    ]);
    assert!(std::fs::metadata(screenshot).is_ok_and(|m| m.len() > 10_000));
    run(&["--dump-dom"])
}

fn check_in_browser(run: &Path, name: &str) {
    let (_tmp, dir, results) = rendered(run);
    let shot = target_dir().join(format!("report-{name}.png"));
    let dom = in_chromium(&dir.join("report.html"), &shot);
    for r in &results {
        let cell = format!("data-trial=\"{}\"><a href=", r.name);
        let at = dom
            .find(&cell)
            .unwrap_or_else(|| panic!("no grid cell for {}", r.name));
        let shown = &dom[at..at + cell.len() + 200];
        assert!(
            shown.contains(&format!(">{}</a>", r.outcome.label())),
            "{}: {shown}",
            r.name
        );
    }
    if let Some(f) = results.iter().find(|r| r.outcome == Outcome::Fail) {
        let step = format!("step {} (", f.failed_step.unwrap());
        assert!(
            dom.contains(&step) && dom.contains("failed here"),
            "{}",
            f.name
        );
    }
    let size = std::fs::metadata(dir.join("report.html")).unwrap().len();
    eprintln!(
        "{}: {} trials, report.html {size} bytes, screenshot {}",
        run.display(),
        results.len(),
        shot.display()
    );
}

#[test]
#[ignore = "needs chromium; cargo xtask ci installs it and runs this"]
fn the_page_in_a_browser_shows_every_trial_and_the_failing_step() {
    check_in_browser(&fixture(), "fixture");
    let runs = std::env::var("SAL_REPORT_RUNS").unwrap_or_default();
    for (i, run) in runs.lines().filter(|l| !l.is_empty()).enumerate() {
        check_in_browser(Path::new(run), &format!("run-{i}"));
    }
}
