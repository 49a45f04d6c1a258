//! Ctrl-C, as a terminal sends it: SIGINT to the whole process group of a real
//! `xtask` run, during a trial, while an image is built and while the ready state is
//! provisioned. Each must end promptly with a non-zero status, keep the logs (an
//! interrupted trial is a FAIL in results.json), and leave nothing behind: no qemu,
//! ssh or mmdebstrap process, no overlay, no half-built cache entry, no mount, no socket
//! directory in /tmp.
//!
//! Needs root, QEMU, mmdebstrap and the Debian archive; `cargo xtask ci` runs them with
//! `--ignored --test-threads=1` (they count the machine's processes and /tmp).

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `xtask ARGS` in a process group of its own, its output in `log`.
fn spawn(args: &[&str], cache: Option<&Path>, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0);
    if let Some(c) = cache {
        cmd.env("XDG_CACHE_HOME", c);
    }
    cmd.spawn().unwrap()
}

/// Waits (up to `limit`) until `ready` says the moment has come.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ctrl-C: SIGINT to the group; the run must end within a minute with status 130.
fn interrupt(child: &mut Child, log: &Path) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
    wait_interrupted(child, log);
}

/// The run ends within a minute of its interruption, with status 130.
fn wait_interrupted(child: &mut Child, log: &Path) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            panic!(
                "still running 60 s after the interruption; log:\n{}",
                read(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "--- after the interruption ({status}) ---\n{}",
        tail(&read(log), 25)
    );
    assert_eq!(status.code(), Some(130), "{}", read(log));
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Nothing that names `needle` runs (after a moment for the kernel to reap), nothing is
/// mounted under it, no new lab directory is in /tmp.
fn assert_nothing_left(needle: &Path, tmp_before: &BTreeSet<String>) {
    let needle = needle.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<(u32, String)> = vm::cleanup::processes()
            .into_iter()
            .filter(|(_, c)| {
                c.contains(&needle)
                    && (c.starts_with("qemu")
                        || c.starts_with("ssh")
                        || c.contains("mmdebstrap")
                        || c.contains("apt")
                        || c.contains("dpkg"))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mounts = read(Path::new("/proc/mounts"));
    assert!(
        !mounts.lines().any(|l| l.contains(&needle)),
        "left mounted:\n{mounts}"
    );
    // A directory another lab run on this machine is using is not this run's leftover:
    // its QEMU or ssh names it, and not this test's path.
    let running = vm::cleanup::processes();
    let new: Vec<String> = vm::cleanup::lab_tmp_dirs()
        .difference(tmp_before)
        .filter(|dir| {
            let users: Vec<&String> = running
                .iter()
                .map(|(_, c)| c)
                .filter(|c| c.contains(dir.as_str()))
                .collect();
            users.is_empty() || users.iter().any(|c| c.contains(&needle))
        })
        .cloned()
        .collect();
    assert!(new.is_empty(), "left in /tmp: {new:?}");
}

fn entries(images: &Path) -> Vec<String> {
    std::fs::read_dir(images)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn newest_run_dir(after: std::time::SystemTime) -> Option<PathBuf> {
    std::fs::read_dir(workspace().join("target/lab"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= after)
        })
        .map(|e| e.path())
        .max()
}

/// `xtask test` of reboot-usernamespace on debian-13 with crun (a reboot gives a wide
/// window), once its trial has run its first command: the run and the trial directory.
fn reboot_trial_under_way(log: &Path) -> (Child, PathBuf) {
    let started = std::time::SystemTime::now();
    let child = spawn(
        &["test", "reboot-usernamespace::debian-13::crun", "--exact"],
        None,
        log,
    );
    let trial = std::cell::RefCell::new(None::<PathBuf>);
    wait_until(
        "the trial's first command",
        Duration::from_secs(900),
        || {
            let Some(run) = newest_run_dir(started) else {
                return false;
            };
            let dir = run.join("reboot-usernamespace--debian-13--crun");
            let started = read(&dir.join("commands.log")).contains("systemctl --user");
            if started {
                *trial.borrow_mut() = Some(dir);
            }
            started
        },
    );
    (child, trial.into_inner().unwrap())
}

#[test]
#[ignore = "needs root, QEMU and a debian-13 image (built when missing): cargo xtask ci"]
fn ctrl_c_during_a_trial() {
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let log = workspace().join("target/interrupt-trial.log");
    let (mut child, dir) = reboot_trial_under_way(&log);
    interrupt(&mut child, &log);
    assert_recorded_as_interrupted(&dir, &log, &tmp_before);
}

/// After an interrupted trial in `dir`: nothing left, and the evidence and the verdict (a
/// FAIL that says it was interrupted) in the trial directory and the reports.
fn assert_recorded_as_interrupted(dir: &Path, log: &Path, tmp_before: &BTreeSet<String>) {
    assert_nothing_left(dir, tmp_before);
    assert!(
        !dir.join("disk.qcow2").exists(),
        "the overlay was left behind"
    );
    assert!(dir.join("console.log").is_file() && dir.join("commands.log").is_file());
    let result = read(&dir.join("result.json"));
    assert!(result.contains("\"FAIL\""), "{result}");
    assert!(result.contains("interrupted"), "{result}");
    let run = dir.parent().unwrap();
    let results = read(&run.join("results.json"));
    assert!(
        results.contains("reboot-usernamespace::debian-13::crun"),
        "{results}"
    );
    assert!(read(log).contains("interrupted"), "{}", read(log));
}

#[test]
#[ignore = "needs root, QEMU and a debian-13 image (built when missing): cargo xtask ci"]
fn sigterm_to_xtask_alone_during_a_trial() {
    // `kill PID`, as a supervisor stops the command it started: the harness, xtask's
    // child in the same group, gets no signal of its own.
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let log = workspace().join("target/interrupt-sigterm.log");
    let (mut child, dir) = reboot_trial_under_way(&log);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_interrupted(&mut child, &log);
    assert_recorded_as_interrupted(&dir, &log, &tmp_before);
}

#[test]
#[ignore = "needs root, mmdebstrap and the Debian archive: cargo xtask ci"]
fn ctrl_c_while_building_an_image() {
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let cache = tempfile::Builder::new()
        .prefix("sal-interrupt-cache-")
        .tempdir_in(workspace().join("target"))
        .unwrap();
    let log = workspace().join("target/interrupt-image.log");
    let mut child = spawn(&["vm", "build", "debian-13"], Some(cache.path()), &log);
    let images = cache.path().join("socket-activation-lab/images");
    wait_until("mmdebstrap at work", Duration::from_secs(600), || {
        entries(&images)
            .iter()
            .any(|n| n.contains("base") && n.contains(".building-"))
            && vm::cleanup::processes()
                .iter()
                .any(|(_, c)| c.contains("mmdebstrap"))
    });
    std::thread::sleep(Duration::from_secs(3));
    interrupt(&mut child, &log);
    assert_nothing_left(cache.path(), &tmp_before);
    let left: Vec<String> = entries(&images)
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

#[test]
#[ignore = "needs root, QEMU and a debian-13 image (built when missing): cargo xtask ci"]
fn ctrl_c_while_provisioning_the_ready_state() {
    // The base image comes from the real cache (built there if missing), hard-linked
    // into an empty one, so this run provisions a ready state from it.
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["vm", "build", "debian-13"])
        .current_dir(workspace())
        .status()
        .unwrap();
    assert!(status.success());
    // The base image this code builds, not any debian-13 base an older recipe left in
    // the cache: with a stale one, the run below would build the base first and keep it.
    lab::host_env::init();
    let target = vm::target::find(&workspace().join("vm"), "debian-13").unwrap();
    let real_base = vm::image::base_dir(&target);
    assert!(real_base.is_dir(), "{} after vm build", real_base.display());
    let real = real_base.parent().unwrap().to_path_buf();
    let base = real_base.file_name().unwrap().to_str().unwrap().to_string();
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let cache = tempfile::Builder::new()
        .prefix("sal-interrupt-cache-")
        .tempdir_in(workspace().join("target"))
        .unwrap();
    let images = cache.path().join("socket-activation-lab/images");
    std::fs::create_dir_all(&images).unwrap();
    // With it, the finished container images (a ready state imports them): built on the
    // host before the guest boots, they are whole entries, not what this test is about.
    let container_images: Vec<String> = entries(&real)
        .into_iter()
        .filter(|n| {
            n.starts_with("container-") && !n.contains(".building-") && !n.ends_with(".lock")
        })
        .collect();
    let inputs: Vec<String> = std::iter::once(base.clone())
        .chain(container_images)
        .collect();
    for name in &inputs {
        let copied = Command::new("cp")
            .arg("-al")
            .arg(real.join(name))
            .arg(images.join(name))
            .status()
            .unwrap();
        assert!(copied.success(), "cp -al {name}");
    }
    let log = workspace().join("target/interrupt-ready.log");
    let mut child = spawn(&["vm", "build", "debian-13"], Some(cache.path()), &log);
    // provision.log gets its first line when provisioning runs its first command.
    wait_until("provisioning", Duration::from_secs(600), || {
        entries(&images).iter().any(|n| {
            n.contains("-ready-")
                && n.contains(".building-")
                && std::fs::metadata(images.join(n).join("provision.log"))
                    .is_ok_and(|m| m.len() > 0)
        })
    });
    interrupt(&mut child, &log);
    assert_nothing_left(cache.path(), &tmp_before);
    let left: Vec<String> = entries(&images)
        .into_iter()
        .filter(|n| !inputs.contains(n) && !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
    for name in &inputs {
        assert!(images.join(name).is_dir(), "{name} was removed");
    }
}

/// The lab directories in /tmp that appeared since `before` and whose sockets no longer
/// accept connections: a run's own, once it is dead (a live run's accept them).
fn dead_new_tmp_dirs(before: &BTreeSet<String>) -> Vec<PathBuf> {
    vm::cleanup::lab_tmp_dirs()
        .difference(before)
        .map(|n| std::env::temp_dir().join(n))
        .filter(|d| vm::cleanup::abandoned_socket_dir(d))
        .collect()
}

#[test]
#[ignore = "needs root, QEMU and a debian-13 image (built when missing): cargo xtask ci"]
fn killed_outright_mid_trial_then_the_next_run_removes_what_it_left() {
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let log = workspace().join("target/interrupt-killed.log");
    let (mut child, dir) = reboot_trial_under_way(&log);
    // SIGKILL, as a lost machine or the OOM killer does it: no handler runs. QEMU and
    // ssh die with their parent (PR_SET_PDEATHSIG); files stay.
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let overlay = dir.join("disk.qcow2");
    let mut left = Vec::new();
    wait_until(
        "QEMU and ssh to die with it",
        Duration::from_secs(20),
        || {
            left = dead_new_tmp_dirs(&tmp_before);
            let names: Vec<String> = left.iter().map(|d| d.display().to_string()).collect();
            names.iter().any(|n| n.contains("sal-qemu-"))
                && names.iter().any(|n| n.contains("sal-ssh-"))
        },
    );
    assert!(overlay.is_file(), "a killed run leaves its overlay");
    // The next run leaves an overlay alone for two minutes after its last write (a run
    // may be between creating it and starting QEMU): age this one past that.
    let f = std::fs::File::options().write(true).open(&overlay).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    drop(f);

    let log2 = workspace().join("target/interrupt-killed-next.log");
    let mut next = spawn(
        &[
            "test",
            "unprivileged-port-refused::debian-13::crun",
            "--exact",
        ],
        None,
        &log2,
    );
    let status = next.wait().unwrap();
    let out = read(&log2);
    assert!(status.success(), "{}", tail(&out, 30));
    assert!(
        out.contains("removed what a killed run left behind"),
        "{}",
        tail(&out, 30)
    );
    for d in &left {
        assert!(
            !d.exists(),
            "{} is still there\n{}",
            d.display(),
            tail(&out, 30)
        );
    }
    assert!(!overlay.exists(), "the overlay is still there");
    // The killed trial's logs stay.
    assert!(dir.join("commands.log").is_file() && dir.join("console.log").is_file());
}

/// A crun source tree whose build (the crun recipe) takes minutes: the window for Ctrl-C.
fn slow_crun_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    for (name, text, mode) in [
        ("autogen.sh", "#!/bin/sh\ntrue\n", 0o755),
        ("configure", "#!/bin/sh\ntrue\n", 0o755),
        (
            "Makefile",
            "all:\n\techo building slowly; sleep 600\n",
            0o644,
        ),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=lab",
            "-c",
            "user.email=lab@example.invalid",
            "commit",
            "-qm",
            "slow",
        ],
    ] {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "git {args:?}");
    }
}

#[test]
#[ignore = "needs root, mmdebstrap and the crun build root (built when missing): cargo xtask ci"]
fn ctrl_c_while_building_a_runtime() {
    let tmp_before = vm::cleanup::lab_tmp_dirs();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("crun");
    slow_crun_tree(&tree);
    let head_before = read(&tree.join(".git/HEAD"));
    let log = workspace().join("target/interrupt-build.log");
    let runtime = format!("crun@git:{}", tree.display());
    let mut child = spawn(&["test", "echo-tcp4::", "--runtime", &runtime], None, &log);
    lab::host_env::init();
    let images = vm::cache::root().join("images");
    wait_until("the build at work", Duration::from_secs(900), || {
        vm::cleanup::processes()
            .iter()
            .any(|(_, c)| c.contains("sleep 600"))
    });
    interrupt(&mut child, &log);
    // Neither the build's processes nor its mounts nor its directories are left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm::cleanup::processes()
        .iter()
        .any(|(_, c)| c.contains("sleep 600") || c.starts_with("unshare"))
    {
        assert!(Instant::now() < deadline, "the build is still running");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_nothing_left(&images, &tmp_before);
    // The clone it built in (`.build-*`) and the entry it was staging (`.NAME.building-*`).
    let left: Vec<String> = entries(&images)
        .into_iter()
        .filter(|n| n.starts_with(".build-") || n.contains(".building-"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
    // The checkout is as it was: no worktree, no bisect state, nothing built in it.
    assert_eq!(read(&tree.join(".git/HEAD")), head_before);
    assert!(!tree.join("crun").exists());
    assert!(
        read(&log).contains("building in the trixie build root"),
        "{}",
        read(&log)
    );
}
