//! The shell the guest runs, built without a guest: files written from stdin, journal
//! reads (since a cursor or the last mark), and the preludes a command may run first.

use std::path::Path;

use anyhow::Result;

use crate::proc::quote;

/// A systemd manager in the guest: the test user's (`systemctl --user`) or the system's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    User,
    System,
}

impl Manager {
    /// The `systemctl` that talks to this manager.
    pub fn systemctl(self) -> &'static str {
        match self {
            Manager::User => "systemctl --user",
            Manager::System => "systemctl",
        }
    }
}

/// A file for [`Guest::write_files`](super::Guest::write_files): owned by `owner` (root when `None`), its parent
/// directories created likewise.
#[derive(Debug, Clone)]
pub struct GuestFile {
    pub path: String,
    pub content: Vec<u8>,
    pub owner: Option<String>,
    pub mode: u32,
}

/// What [`Guest::write_files`](super::Guest::write_files) prints once every file is written.
pub(super) const FILES_WRITTEN: &str = "-- lab: files written --";

/// The shell (`set -e`) that writes `files` from stdin, and that stdin. Each process costs
/// a restored guest its translation under TCG, so the script runs few: a directory is
/// made only when missing (as its owner: `runuser` opens a PAM session), one `dd` a file,
/// then one `chown` an owner and one `chmod` a mode for all the files.
pub fn write_files_script(files: &[GuestFile]) -> (String, Vec<u8>) {
    let mut script = String::from("set -e\n");
    let mut stdin: Vec<u8> = Vec::new();
    let mut made: Vec<(String, Option<String>)> = Vec::new();
    let mut owners: Vec<(String, Vec<String>)> = Vec::new();
    let mut modes: Vec<(u32, Vec<String>)> = Vec::new();
    for f in files {
        let dir = Path::new(&f.path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let p = quote(&f.path);
        let key = (dir.clone(), f.owner.clone());
        if !made.contains(&key) {
            let d = quote(&dir);
            script += &match &f.owner {
                None => format!("[ -d {d} ] || mkdir -p {d}\n"),
                Some(o) => format!("[ -d {d} ] || runuser -u {} -- mkdir -p {d}\n", quote(o)),
            };
            made.push(key);
        }
        // dd reads a pipe in short reads; fullblock makes it wait for the whole file.
        script += &match f.content.len() {
            0 => format!(": > {p}\n"),
            n => format!("dd of={p} bs={n} count=1 iflag=fullblock status=none\n"),
        };
        stdin.extend_from_slice(&f.content);
        if let Some(o) = &f.owner {
            add_to_group(&mut owners, o.clone(), p.clone());
        }
        add_to_group(&mut modes, f.mode, p);
    }
    for (o, paths) in owners {
        script += &format!("chown {}: {}\n", quote(&o), paths.join(" "));
    }
    for (m, paths) in modes {
        script += &format!("chmod {m:o} {}\n", paths.join(" "));
    }
    (script, stdin)
}

/// Adds `path` to the group of `key` in `groups`, which keep their first appearance's
/// order (so the script reads the same for the same files).
fn add_to_group<K: PartialEq>(groups: &mut Vec<(K, Vec<String>)>, key: K, path: String) {
    match groups.iter_mut().find(|(k, _)| *k == key) {
        Some((_, paths)) => paths.push(path),
        None => groups.push((key, vec![path])),
    }
}

/// How a prelude says it failed (exit 125), to tell that from the command's own failure.
pub(super) const PRELUDE_FAILED: &str = "lab: before the command,";

/// Where the guest keeps the journal's position at the last mark ([`Since::Mark`]);
/// root's, on a tmpfs.
pub(super) const MARK_CURSOR_FILE: &str = "/run/socket-activation-lab-journal-mark";

/// Where a journal read starts.
#[derive(Debug, Clone, Copy)]
pub enum Since<'a> {
    /// After this cursor.
    Cursor(&'a str),
    /// After the position the guest recorded at the last mark
    /// ([`Guest::mark_journal_with_next_command`](super::Guest::mark_journal_with_next_command)).
    Mark,
}

impl Since<'_> {
    /// The cursor as a shell word.
    pub(super) fn shell(self) -> String {
        match self {
            Since::Cursor(c) => quote(c),
            Since::Mark => {
                format!("\"$(sed -n 's/^-- cursor: //p' {MARK_CURSOR_FILE})\"")
            }
        }
    }
}

/// The shell that sets the clock to the host's time now.
pub fn clock_prelude() -> Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(format!(
        "date -u -s @{}.{:09} >/dev/null || {{ echo '{PRELUDE_FAILED} setting the clock failed' >&2; exit 125; }}",
        now.as_secs(),
        now.subsec_nanos()
    ))
}

/// The `journalctl` command (run as root) of [`Guest::unit_journal`](super::Guest::unit_journal): the last `lines`
/// (all when `None`) logged by or about `units`, after `after` when given. A user unit's
/// lines are those its processes wrote (`_SYSTEMD_USER_UNIT=`) and those the user manager
/// logged about it (`USER_UNIT=`).
pub fn unit_journal_command(
    manager: Manager,
    units: &[&str],
    lines: Option<usize>,
    after: Option<Since>,
) -> String {
    let matches: Vec<String> = units
        .iter()
        .flat_map(|u| match manager {
            Manager::User => vec![
                format!("_SYSTEMD_USER_UNIT={}", quote(u)),
                format!("USER_UNIT={}", quote(u)),
            ],
            Manager::System => vec![format!("-u {}", quote(u))],
        })
        .collect();
    let matches = match manager {
        Manager::User => matches.join(" + "),
        Manager::System => matches.join(" "),
    };
    journal_command(&matches, lines, after)
}

/// `journalctl` with `matches`: the last `lines` (all when `None`), after `after` when
/// given.
///
/// Not `--after-cursor` with matches: before systemd 255 that skips the first matching
/// entry after the cursor (systemd issue 30288, fixed by PR 30336), so on debian-12 a
/// step's evidence lost its first line. `--cursor` starts at the cursor's own entry
/// instead, which is dropped when it is the first line shown (it was logged before the
/// step).
pub fn journal_command(matches: &str, lines: Option<usize>, after: Option<Since>) -> String {
    let Some(after) = after else {
        let lines = lines.map(|n| format!("-n {n} ")).unwrap_or_default();
        return format!("journalctl --no-pager -o short-monotonic {lines}{matches}");
    };
    let tail = lines.map(|n| format!(" | tail -n {n}")).unwrap_or_default();
    format!(
        "c={}; at=$(journalctl --no-pager -o short-monotonic --cursor=\"$c\" | head -n 1); \
         journalctl --no-pager -o short-monotonic --cursor=\"$c\" {matches} \
         | AT=\"$at\" awk 'NR == 1 && $0 == ENVIRON[\"AT\"] {{ next }} {{ print }}'{tail}",
        after.shell()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window after a cursor, run by sh against a stand-in `journalctl` that prints
    /// the cursor's own entry first (with a backslash, which awk -v would mangle) when no
    /// match is given, and the matching entries otherwise.
    fn window(matching: &str) -> String {
        let fake = format!(
            "journalctl() {{ case \"$*\" in *UNIT*) printf '%s' {};; *) printf '%s\\n' 'cursor entry \\ x' 'other';; esac; }}; ",
            quote(matching)
        );
        let script = fake + &journal_command("UNIT=a", Some(2), Some(Since::Cursor("s=1;i=2")));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_window_after_a_cursor_drops_only_the_cursors_own_entry() {
        // The cursor's entry matched: it was logged before the step, so it goes.
        assert_eq!(
            window("cursor entry \\ x\nfirst\nsecond\n"),
            "first\nsecond\n"
        );
        // It did not match: the first matching entry after it stays (systemd 252's
        // --after-cursor lost this one).
        assert_eq!(window("first\nsecond\n"), "first\nsecond\n");
        // `lines` keeps the last ones.
        assert_eq!(window("a\nb\nc\n"), "b\nc\n");
        assert!(
            !journal_command("UNIT=a", None, Some(Since::Cursor("c"))).contains("--after-cursor")
        );
    }

    /// The clock's prelude and then a command, run by sh with `date` as given.
    fn after_clock_prelude(date: &str) -> std::process::Output {
        let script = format!(
            "date() {{ {date}; }}; {}\necho the command ran",
            clock_prelude().unwrap()
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap()
    }

    #[test]
    fn the_clock_prelude_runs_the_command_after_it_or_stops_with_its_own_words() {
        let set = after_clock_prelude("echo \"set $*\" >&2");
        assert!(set.status.success());
        assert_eq!(String::from_utf8_lossy(&set.stdout), "the command ran\n");
        let asked = String::from_utf8_lossy(&set.stderr).into_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let given: f64 = asked
            .trim()
            .strip_prefix("set -u -s @")
            .unwrap_or_else(|| panic!("{asked:?}"))
            .parse()
            .unwrap();
        assert!((now - given).abs() < 60.0, "{given} against {now}");

        let refused = after_clock_prelude("return 1");
        assert_eq!(refused.status.code(), Some(125));
        assert!(refused.stdout.is_empty());
        assert!(String::from_utf8_lossy(&refused.stderr).contains(PRELUDE_FAILED));
    }

    fn file(path: &str, content: &str, owner: Option<&str>, mode: u32) -> GuestFile {
        GuestFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            owner: owner.map(String::from),
            mode,
        }
    }

    #[test]
    fn written_files_have_their_exact_contents_and_modes_in_new_directories() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p).display().to_string();
        let files = [
            file(&at("a/b/one"), "first\n", None, 0o644),
            file(&at("a/b/two"), "", None, 0o600),
            file(&at("a/three"), "third, with 'quotes'", None, 0o755),
        ];
        let (script, stdin) = write_files_script(&files);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        assert!(child.wait().unwrap().success(), "{script}");
        use std::os::unix::fs::PermissionsExt;
        for (f, text) in files.iter().zip(["first\n", "", "third, with 'quotes'"]) {
            assert_eq!(std::fs::read_to_string(&f.path).unwrap(), text);
            let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, f.mode, "{}", f.path);
        }
        // One chmod a mode, one mkdir a directory.
        assert_eq!(script.matches("chmod ").count(), 3, "{script}");
        assert_eq!(script.matches("mkdir -p").count(), 2, "{script}");
    }

    #[test]
    fn a_file_that_cannot_be_written_stops_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "a file, not a directory").unwrap();
        let files = [file(
            &blocker.join("unit").display().to_string(),
            "x",
            None,
            0o644,
        )];
        let (script, _) = write_files_script(&files);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{script}echo after"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("after"));
    }

    #[test]
    fn a_users_files_get_one_chown_and_their_directory_is_made_as_the_user_only_when_missing() {
        let files = [
            file(
                "/home/test/.config/systemd/user/a.socket",
                "a",
                Some("test"),
                0o644,
            ),
            file(
                "/home/test/.config/systemd/user/a.service",
                "b",
                Some("test"),
                0o644,
            ),
            file("/etc/systemd/system/b.service", "c", None, 0o644),
        ];
        let (script, stdin) = write_files_script(&files);
        assert_eq!(stdin, b"abc");
        assert!(script.contains(
            "[ -d /home/test/.config/systemd/user ] || runuser -u test -- mkdir -p /home/test/.config/systemd/user\n"
        ), "{script}");
        assert!(script.contains(
            "chown test: /home/test/.config/systemd/user/a.socket /home/test/.config/systemd/user/a.service\n"
        ), "{script}");
        assert_eq!(script.matches("chown ").count(), 1, "{script}");
        assert_eq!(script.matches("chmod 644 ").count(), 1, "{script}");
    }
}
