//! `cargo xtask host` on a clean machine, not on the developer's: a minimal Debian 12
//! root made with mmdebstrap that has what a new machine of this project's kind has
//! (`qemu-utils` 10.0 from bookworm-backports, no backports in its apt sources, no
//! `qemu-system-x86`, no Python), with the real xtask binary run inside it under chroot in
//! a private mount namespace (so no mount outlives the test). A plain
//! `apt-get install qemu-system-x86` there removes `qemu-utils`; the host step must end
//! with every lab tool present and nothing removed or downgraded.
//!
//! Needs root, mmdebstrap, unshare and the Debian archive; `cargo xtask ci` runs it with
//! `--ignored`.

use std::collections::BTreeMap;
use std::path::Path;

use xshell::{Shell, cmd};

/// The commands the lab needs, an oracle apart from the xtask's own list.
const COMMANDS: &[&str] = &[
    "qemu-system-x86_64",
    "qemu-img",
    "mmdebstrap",
    "newuidmap",
    "mkfs.ext4",
    "ssh",
    "ssh-keygen",
    "mkfs.vfat",
    "mcopy",
    "gpgv",
    "gpg",
    "xz",
    "dpkg-deb",
    "rpmkeys",
    "createrepo_c",
    "systemd-socket-activate",
];

const MIRROR: &str = "http://deb.debian.org/debian";

fn packages(sh: &Shell, root: &Path) -> BTreeMap<String, String> {
    let format = "${Package}\t${Version}\n";
    cmd!(sh, "chroot {root} dpkg-query -W -f={format}")
        .quiet()
        .read()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// Runs `xtask ARGS` inside the root: /dev, /proc, the host's resolv.conf and this
/// workspace (read-only, where the xtask expects it) are mounted in a mount namespace of
/// its own, gone when the command ends. So are the machine's own trust settings where it
/// has them (local CA certificates, which update-ca-certificates adds to the root's
/// bundle when ca-certificates is installed, and pip.conf): a machine behind a TLS
/// proxy has them, and without them PyPI is unreachable from the root.
fn xtask_in(sh: &Shell, root: &Path, args: &[&str]) -> (bool, String) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let script = r#"set -e
root=$1; ws=$2; shift 2
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mkdir -p "$root$ws"
mount --bind "$ws" "$root$ws"
mount -o remount,bind,ro "$root$ws"
touch "$root/etc/resolv.conf"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  mount --bind /usr/local/share/ca-certificates "$root/usr/local/share/ca-certificates"
fi
if [ -f /etc/pip.conf ]; then
  touch "$root/etc/pip.conf"
  mount --bind /etc/pip.conf "$root/etc/pip.conf"
fi
exec chroot "$root" env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  SAL_ALLOW_EXPIRED_RELEASE=1 /usr/local/bin/xtask "$@" 2>&1"#;
    let out = cmd!(
        sh,
        "unshare --mount --propagation private --fork sh -c {script} sh {root} {workspace} {args...}"
    )
    .ignore_status()
    .output()
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("--- xtask {} ---\n{text}", args.join(" "));
    (out.status.success(), text)
}

#[test]
#[ignore = "needs root, mmdebstrap, unshare and the Debian archive: cargo xtask ci runs it"]
fn host_step_on_a_clean_bookworm_root_with_backported_qemu_utils() {
    let sh = Shell::new().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("sal-host-root-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // bookworm-backports' InRelease carries a Valid-Until (a week), which a frozen
    // mirror's passes: accepted explicitly here and in the xtask's run below
    // (SAL_ALLOW_EXPIRED_RELEASE=1), signatures still checked. The root keeps only
    // bookworm in its sources, as a new machine does.
    let customize = format!(
        "echo 'deb {MIRROR} bookworm main' > \"$1/etc/apt/sources.list\"; rm -f \"$1/etc/apt/apt.conf.d/99mmdebstrap\""
    );
    let main = format!("deb {MIRROR} bookworm main");
    let backports = format!("deb {MIRROR} bookworm-backports main");
    let aptopt = "Acquire::Check-Valid-Until \"false\"";
    cmd!(
        sh,
        "mmdebstrap --quiet --mode=root --variant=apt --include=qemu-utils/bookworm-backports
            --aptopt={aptopt} --customize-hook={customize} bookworm {root} {main} {backports}"
    )
    .run()
    .unwrap();
    let xtask = env!("CARGO_BIN_EXE_xtask");
    std::fs::copy(xtask, root.join("usr/local/bin/xtask")).unwrap();
    let sources = std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap();
    let before = packages(&sh, &root);
    let qemu_utils = before["qemu-utils"].clone();
    assert!(
        qemu_utils.contains("~bpo12"),
        "the root's qemu-utils: {qemu_utils}"
    );
    assert!(!before.contains_key("qemu-system-x86"));

    // A package the plan cannot keep (it conflicts with mtools, which the lab needs):
    // the host step refuses, says what and how, and changes nothing.
    let blocker = dir.path().join("sal-blocker");
    std::fs::create_dir_all(blocker.join("DEBIAN")).unwrap();
    std::fs::write(
        blocker.join("DEBIAN/control"),
        "Package: sal-blocker\nVersion: 1.0\nArchitecture: all\nMaintainer: lab <lab@localhost>\n\
         Conflicts: mtools\nDescription: test fixture: conflicts with a package the lab needs\n",
    )
    .unwrap();
    let deb = root.join("sal-blocker.deb");
    cmd!(sh, "dpkg-deb --build {blocker} {deb}")
        .quiet()
        .run()
        .unwrap();
    cmd!(sh, "chroot {root} dpkg -i /sal-blocker.deb")
        .quiet()
        .run()
        .unwrap();
    let blocked = packages(&sh, &root);
    let (ok, refused) = xtask_in(&sh, &root, &["host"]);
    assert!(!ok, "{refused}");
    assert!(
        refused.contains("REFUSED: sal-blocker 1.0 would be removed")
            && refused.contains("apt-get install -y -q --no-install-recommends")
            && refused.contains("mtools"),
        "{refused}"
    );
    assert_eq!(
        packages(&sh, &root),
        blocked,
        "a refused plan changed packages"
    );
    cmd!(sh, "chroot {root} dpkg -r sal-blocker")
        .quiet()
        .run()
        .unwrap();
    std::fs::remove_file(&deb).unwrap();

    // The plan alone: pinned to the backported version, nothing removed, nothing done.
    let (ok, plan) = xtask_in(&sh, &root, &["host", "--dry-run"]);
    assert!(ok, "{plan}");
    assert!(
        plan.contains(&format!("qemu-system-x86={qemu_utils}"))
            && plan.contains(&format!("pin src:qemu to version {qemu_utils}*"))
            && plan.contains("suite bookworm-backports")
            && !plan.contains("REFUSED"),
        "{plan}"
    );
    assert_eq!(packages(&sh, &root), before, "--dry-run changed packages");

    // The install, then the linters (no Python in the root: python3 and python3-venv
    // come from apt, actionlint and zizmor from PyPI into a venv).
    let (ok, out) = xtask_in(&sh, &root, &["host", "--linters"]);
    assert!(ok, "{out}");
    let after = packages(&sh, &root);
    for (p, v) in &before {
        let now = after
            .get(p)
            .unwrap_or_else(|| panic!("{p} {v} was removed"));
        let not_older = cmd!(sh, "dpkg --compare-versions {now} ge {v}")
            .quiet()
            .run()
            .is_ok();
        assert!(not_older, "{p} went from {v} to {now}");
    }
    assert_eq!(after["qemu-utils"], qemu_utils);
    assert_eq!(after["qemu-system-x86"], qemu_utils, "one qemu version");
    let commands = COMMANDS.join(" ");
    let each = "for c in $0; do command -v $c || echo MISSING $c; done";
    let found = cmd!(sh, "chroot {root} sh -c {each} {commands}")
        .read()
        .unwrap();
    assert!(!found.contains("MISSING"), "{found}");
    let version = cmd!(sh, "chroot {root} qemu-system-x86_64 --version")
        .read()
        .unwrap();
    assert!(version.contains("10.0"), "{version}");
    assert!(
        root.join("usr/share/keyrings/debian-archive-keyring.gpg")
            .exists()
    );
    for linter in ["actionlint", "zizmor"] {
        let bin = format!("/root/.cache/socket-activation-lab/tools/venv/bin/{linter}");
        cmd!(sh, "chroot {root} {bin} --version").run().unwrap();
    }
    // The machine's own apt sources are as they were; the added suite was private.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap(),
        sources
    );
    assert!(
        std::fs::read_dir(root.join("etc/apt/sources.list.d"))
            .unwrap()
            .next()
            .is_none()
    );
    // A second run has nothing to do.
    let (ok, again) = xtask_in(&sh, &root, &["host", "--dry-run"]);
    assert!(ok && again.contains("nothing to install"), "{again}");
}
