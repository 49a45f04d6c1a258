//! A runtime (or conmon) built from a git checkout at a revision, in a build root of the
//! target's own Debian suite, so the binary links against the libraries the guest has.
//!
//! - The source: a clone of the user's checkout (`git clone` of a local path copies or
//!   hard-links its objects, so the checkout itself is never written to), the revision
//!   checked out detached, its submodules cloned from the checkout's own copies
//!   (`.git/modules/NAME`, nested likewise): nothing is fetched from the network. Without
//!   a revision, HEAD plus the checkout's uncommitted changes (`git diff HEAD`), recorded.
//! - The build root: mmdebstrap of the suite with the recipe's packages, unpacked once
//!   and cached like an image. A build mounts it read-only in a private mount namespace
//!   (`unshare --mount`, so no mount outlives the build, also on Ctrl-C), with a tmpfs on
//!   `/tmp`, the source at `/src` and the suite's ccache and Go caches at `/cache`.
//! - The binary: cached by (recipe, suite, mirror, commit, diff), with its build log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vm::events::Events;
use vm::{cache, debian, proc};

/// How one component is built from its source tree.
#[derive(Debug)]
pub struct Recipe {
    pub name: &'static str,
    /// The build root's packages besides Debian's essential set: what upstream's build
    /// instructions list for a build from git (autotools and generators included).
    pub packages: &'static [&'static str],
    /// Run with `sh -e` in the source tree inside the build root.
    pub script: &'static str,
    /// The binary, relative to the tree.
    pub output: &'static str,
    /// Submodules (paths from the top, nested with `/`) the build configures but does
    /// not link, with why: when the checkout lacks the pinned commit, its copy's HEAD is
    /// checked out instead and the build says so. Any other missing commit is an error.
    pub unused_submodules: &'static [(&'static str, &'static str)],
}

pub const RECIPES: [Recipe; 3] = [
    Recipe {
        name: "crun",
        packages: &[
            "gcc",
            "make",
            "autoconf",
            "automake",
            "libtool",
            "pkgconf",
            "python3",
            "gperf",
            "go-md2man",
            "git",
            "ccache",
            "libyajl-dev",
            "libjson-c-dev",
            "libseccomp-dev",
            "libcap-dev",
            "libsystemd-dev",
        ],
        script: "./autogen.sh\n./configure --disable-dependency-tracking\nmake -j\"$(nproc)\"\n",
        output: "crun",
        unused_submodules: &[(
            "libocispec/yajl",
            "libocispec builds against the system's libyajl unless configured with --enable-embedded-yajl",
        )],
    },
    Recipe {
        name: "runc",
        packages: &[
            "golang-go",
            "make",
            "gcc",
            "libc6-dev",
            "pkgconf",
            "libseccomp-dev",
            "git",
        ],
        script: "make runc\n",
        output: "runc",
        unused_submodules: &[],
    },
    Recipe {
        name: "conmon",
        packages: &[
            "gcc",
            "make",
            "pkgconf",
            "git",
            "ccache",
            "libglib2.0-dev",
            "libsystemd-dev",
            "libseccomp-dev",
        ],
        script: "make bin/conmon\n",
        output: "bin/conmon",
        unused_submodules: &[],
    },
];

/// Bump when how a build root is made or a build is run changes.
const BUILD_VERSION: &str = "build-3";

pub fn recipe(name: &str) -> Result<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "no build recipe for {name:?} (the lab builds {})",
            RECIPES
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// A revision of a checkout, resolved on the host.
#[derive(Debug, Clone)]
pub struct Source {
    pub dir: PathBuf,
    pub commit: String,
    /// `git describe --tags --always`, with `-dirty` when built with uncommitted changes.
    pub describe: String,
    pub subject: String,
    /// The committer date, ISO 8601.
    pub date: String,
    /// The uncommitted changes built with it (`git diff HEAD --binary`), if any.
    pub diff: Option<String>,
    /// Files git does not track, which are not part of the build.
    pub untracked: Vec<String>,
}

impl Source {
    /// One line for reports: where the runtime came from.
    pub fn describe_line(&self) -> String {
        let changes = if self.diff.is_some() {
            " with its uncommitted changes (source-NAME.diff in the trial)"
        } else {
            ""
        };
        format!(
            "built from {} at {} ({}, {}: {}){changes}",
            self.dir.display(),
            short(&self.commit),
            self.describe,
            self.date,
            self.subject
        )
    }
}

/// The commit date in a line [`Source::describe_line`] wrote for `commit`.
pub fn date_in_line<'a>(line: &'a str, commit: &str) -> Option<&'a str> {
    let marker = format!(" at {} (", short(commit));
    let after = &line[line.find(&marker)? + marker.len()..];
    let (_describe, rest) = after.split_once(", ")?;
    Some(rest.split_once(": ")?.0)
}

/// `spec`'s component (a runtime, or conmon) built from the checkout and revision it
/// names (`git:DIR#REV`) for `suite`: resolved, then found in the cache or built.
pub fn ensure_for(
    spec: &crate::runtimes::RuntimeSpec,
    suite: &str,
    mirror: &str,
    events: &Events,
) -> Result<Built> {
    let crate::runtimes::Origin::Git { dir, rev } = &spec.origin else {
        bail!("{spec} names no checkout to build");
    };
    let source = resolve(dir, rev.as_deref()).with_context(|| format!("{spec}"))?;
    ensure_built(recipe(&spec.name)?, &source, suite, mirror, events)
        .with_context(|| format!("{spec}"))
}

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// `git` on the host for `dir`; checkouts of other users are read as root too.
fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-c")
        .arg("safe.directory=*")
        .arg("-C")
        .arg(dir)
        .env("GIT_TERMINAL_PROMPT", "0");
    c
}

/// `git ARGS` on the host in `dir`, with its output.
pub(crate) fn git_out(dir: &Path, args: &[&str]) -> Result<proc::Output> {
    let mut c = git(dir);
    c.args(args);
    proc::run(c, None, Duration::from_secs(120))
}

/// The revision `rev` of the checkout `dir` (HEAD and its uncommitted changes without
/// one). Errors name the directory and the revision.
pub fn resolve(dir: &Path, rev: Option<&str>) -> Result<Source> {
    if !dir.exists() {
        bail!("{} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!("{} is not a directory (a git checkout)", dir.display());
    }
    let top = git_out(dir, &["rev-parse", "--show-toplevel"])?;
    if !top.success() {
        bail!(
            "{} is not a git checkout: {}",
            dir.display(),
            top.combined().trim()
        );
    }
    let dir = PathBuf::from(top.stdout.trim());
    let wanted = rev.unwrap_or("HEAD");
    let spec = format!("{wanted}^{{commit}}");
    let c = git_out(
        &dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
    )?;
    if !c.success() {
        let said = c.combined();
        bail!(
            "revision {wanted:?} does not exist in {} (git rev-parse: {})",
            dir.display(),
            if said.trim().is_empty() {
                "no such commit"
            } else {
                said.trim()
            }
        );
    }
    let commit = c.stdout.trim().to_string();
    let (diff, untracked) = if rev.is_none() {
        let d = git_out(&dir, &["diff", "HEAD", "--binary"])?;
        if !d.success() {
            bail!(
                "git diff HEAD in {}: {}",
                dir.display(),
                d.combined().trim()
            );
        }
        let u = git_out(&dir, &["ls-files", "--others", "--exclude-standard"])?;
        let untracked = u.stdout.lines().map(str::to_string).collect();
        ((!d.stdout.is_empty()).then(|| d.stdout.clone()), untracked)
    } else {
        (None, Vec::new())
    };
    let describe = git_out(&dir, &["describe", "--tags", "--always", &commit])?
        .stdout
        .trim()
        .to_string();
    let log = git_out(&dir, &["log", "-1", "--format=%cI%x00%s", &commit])?;
    let (date, subject) = log.stdout.trim().split_once('\0').unwrap_or(("", ""));
    Ok(Source {
        dir,
        describe: if diff.is_some() {
            format!("{describe}-dirty")
        } else {
            describe
        },
        subject: subject.to_string(),
        date: date.to_string(),
        commit,
        diff,
        untracked,
    })
}

/// A built binary in the cache.
#[derive(Debug, Clone)]
pub struct Built {
    pub binary: PathBuf,
    pub log: PathBuf,
    pub source: Source,
    /// What the build did that a reader must know (a submodule at another commit).
    pub notes: Vec<String>,
    pub cached: bool,
}

/// The suite's build root for `recipe`: mmdebstrap with its packages, unpacked, cached.
pub fn ensure_build_root(
    recipe: &Recipe,
    suite: &str,
    mirror: &str,
    events: &Events,
) -> Result<PathBuf> {
    // Ctrl-C removes the staging directories and stops the build's process group.
    vm::cleanup::install_handler();
    let packages: Vec<String> = recipe.packages.iter().map(|p| p.to_string()).collect();
    let key = cache::key(&[
        ("version", BUILD_VERSION.as_bytes()),
        ("suite", suite.as_bytes()),
        ("mirror", mirror.as_bytes()),
        ("packages", packages.join(",").as_bytes()),
    ]);
    let dir = cache::root()
        .join("images")
        .join(format!("buildroot-{}-{suite}-{key}", recipe.name));
    let _lock = cache::lock(&dir)?;
    let root = dir.join("rootfs");
    if cache::lookup_keyed(&dir, &key).is_some() && root.join("usr/bin/make").exists() {
        return Ok(root);
    }
    let stage = cache::stage(&dir, &key)?;
    let label = format!("{} build root ({suite})", recipe.name);
    let tar = debian::debootstrap_with(
        suite,
        mirror,
        &packages,
        None,
        &debian::NO_DOCS,
        stage.path(),
        &label,
        events,
    )?;
    let unpacked = stage.path().join("rootfs");
    std::fs::create_dir_all(&unpacked)?;
    let mut untar = Command::new("tar");
    untar
        .arg("-C")
        .arg(&unpacked)
        .arg("--numeric-owner")
        .arg("-xf")
        .arg(&tar);
    proc::check(untar, None, Duration::from_secs(600))?;
    std::fs::remove_file(&tar)?;
    // Mount points for the source and the compiler caches (the root is mounted read-only).
    std::fs::create_dir_all(unpacked.join("src"))?;
    std::fs::create_dir_all(unpacked.join("cache"))?;
    std::fs::write(stage.path().join("packages.txt"), packages.join("\n"))?;
    let facts = BTreeMap::from([("suite".to_string(), suite.to_string())]);
    stage.publish(facts)?;
    Ok(root)
}

/// The cache entry of one build.
fn build_dir(recipe: &Recipe, suite: &str, key: &str, commit: &str) -> PathBuf {
    cache::root().join("images").join(format!(
        "build-{}-{suite}-{}-{key}",
        recipe.name,
        &commit[..commit.len().min(10)]
    ))
}

/// The binary of `recipe` built from `source` for `suite`: from the cache, or built.
/// A failed build is an error that ends with the log's last lines and names the log,
/// kept under the cache's `failed/`.
pub fn ensure_built(
    recipe: &Recipe,
    source: &Source,
    suite: &str,
    mirror: &str,
    events: &Events,
) -> Result<Built> {
    let root = ensure_build_root(recipe, suite, mirror, events)?;
    let root_key = root
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let diff = source.diff.as_deref().unwrap_or_default();
    let key = cache::key(&[
        ("version", BUILD_VERSION.as_bytes()),
        ("recipe", format!("{recipe:?}").as_bytes()),
        ("root", root_key.as_bytes()),
        ("commit", source.commit.as_bytes()),
        ("diff", diff.as_bytes()),
    ]);
    let dir = build_dir(recipe, suite, &key, &source.commit);
    let _lock = cache::lock(&dir)?;
    let binary_name = Path::new(recipe.output)
        .file_name()
        .context("recipe output without a file name")?
        .to_owned();
    if let Some(m) = cache::lookup_keyed(&dir, &key) {
        let notes = m
            .facts
            .get("notes")
            .map(|n| n.lines().map(str::to_string).collect())
            .unwrap_or_default();
        return Ok(Built {
            binary: dir.join(&binary_name),
            log: dir.join("build.log"),
            source: source.clone(),
            notes,
            cached: true,
        });
    }
    let label = format!("{} {}", recipe.name, source.describe);
    let stage = cache::stage(&dir, &key)?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(dir.parent().context("build dir without parent")?)?;
    vm::cleanup::register(work.path());
    let result = (|| -> Result<(std::path::PathBuf, Vec<String>)> {
        let step = events.step(
            &label,
            &format!("preparing the source ({})", short(&source.commit)),
        );
        let src = work.path().join("src");
        let notes = checkout(recipe, source, &src)?;
        step.done();
        let step = events.step(&label, &format!("building in the {suite} build root"));
        let out = run_in_root(
            &root,
            &src,
            &compiler_cache(suite)?,
            recipe.script,
            work.path(),
        )?;
        let log = stage.path().join("build.log");
        let mut text = String::new();
        for n in &notes {
            text += &format!("socket-activation-lab: {n}\n");
        }
        text += &out.combined();
        std::fs::write(&log, &text)?;
        let built = src.join(recipe.output);
        let failed = if !out.success() {
            Some(format!("failed ({})", out.status))
        } else if !built.is_file() {
            Some(format!("finished but made no {}", recipe.output))
        } else {
            None
        };
        if let Some(what) = failed {
            let kept = keep_failed_log(&log, &dir);
            bail!(
                "building {} at {} ({}) {what}:\n{}\nthe whole log: {}",
                recipe.name,
                short(&source.commit),
                source.describe,
                proc::tail(&text, 25),
                kept.display()
            );
        }
        std::fs::copy(&built, stage.path().join(&binary_name))?;
        step.done();
        Ok((log, notes))
    })();
    vm::cleanup::unregister(work.path());
    drop(work);
    let (_, notes) = result?;
    if let Some(d) = &source.diff {
        std::fs::write(stage.path().join("source.diff"), d)?;
    }
    let facts = BTreeMap::from([
        ("commit".to_string(), source.commit.clone()),
        ("describe".to_string(), source.describe.clone()),
        ("suite".to_string(), suite.to_string()),
        ("notes".to_string(), notes.join("\n")),
    ]);
    stage.publish(facts)?;
    Ok(Built {
        binary: dir.join(&binary_name),
        log: dir.join("build.log"),
        source: source.clone(),
        notes,
        cached: false,
    })
}

/// A copy of a failed build's log under the cache's `failed/`, where it outlives the
/// staging directory; the staging path if copying fails.
fn keep_failed_log(log: &Path, dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kept = cache::root().join("failed").join(format!("{name}.log"));
    let copied = kept
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| std::fs::copy(log, &kept));
    if copied.is_ok() {
        kept
    } else {
        log.to_path_buf()
    }
}

/// The suite's ccache and Go build cache, shared by every build for that suite.
fn compiler_cache(suite: &str) -> Result<PathBuf> {
    let dir = cache::root().join("compiler-cache").join(suite);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Clones `source` into `dest` at its commit (with its uncommitted changes), and its
/// submodules from the checkout's own copies. Returns notes for the log.
fn checkout(recipe: &Recipe, source: &Source, dest: &Path) -> Result<Vec<String>> {
    let parent = dest.parent().context("destination without parent")?;
    let mut clone = git(parent);
    clone
        .args(["clone", "--quiet", "--no-checkout", "--"])
        .arg(&source.dir)
        .arg(dest);
    proc::check(clone, None, Duration::from_secs(600))
        .with_context(|| format!("cloning {}", source.dir.display()))?;
    let co = git_out(dest, &["checkout", "--quiet", "--detach", &source.commit])?;
    if !co.success() {
        bail!("checking out {}: {}", source.commit, co.combined().trim());
    }
    if let Some(diff) = &source.diff {
        let mut apply = git(dest);
        apply.args(["apply", "--binary", "--whitespace=nowarn", "-"]);
        let out = proc::run(apply, Some(diff.as_bytes()), Duration::from_secs(120))?;
        if !out.success() {
            bail!(
                "applying the uncommitted changes of {} to a clone of it: {}",
                source.dir.display(),
                out.combined().trim()
            );
        }
    }
    let common = git_out(
        &source.dir,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )?;
    let modules = PathBuf::from(common.stdout.trim());
    let mut notes = Vec::new();
    submodules(recipe, &source.dir, dest, &modules, "", &mut notes)?;
    Ok(notes)
}

/// The `.gitmodules` entries of the tree at `dir`: (name, path).
fn gitmodules(dir: &Path) -> Result<Vec<(String, String)>> {
    if !dir.join(".gitmodules").exists() {
        return Ok(Vec::new());
    }
    let out = git_out(
        dir,
        &[
            "config",
            "-f",
            ".gitmodules",
            "--get-regexp",
            r"^submodule\..*\.path$",
        ],
    )?;
    Ok(parse_gitmodules(&out.stdout))
}

/// `submodule.NAME.path PATH` lines as (name, path).
fn parse_gitmodules(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (key, path) = l.split_once(' ')?;
            let name = key.strip_prefix("submodule.")?.strip_suffix(".path")?;
            Some((name.to_string(), path.trim().to_string()))
        })
        .collect()
}

/// Clones each submodule of the tree at `tree` from `git_dir/modules/NAME` (the user's
/// checkout keeps them there), at the commit the tree pins; then theirs, recursively.
fn submodules(
    recipe: &Recipe,
    checkout: &Path,
    tree: &Path,
    git_dir: &Path,
    prefix: &str,
    notes: &mut Vec<String>,
) -> Result<()> {
    for (name, path) in gitmodules(tree)? {
        let full = format!("{prefix}{path}");
        let pinned = git_out(tree, &["rev-parse", &format!("HEAD:{path}")])?;
        if !pinned.success() {
            continue; // listed in .gitmodules, not in the tree at this commit
        }
        let pinned = pinned.stdout.trim().to_string();
        let copy = git_dir.join("modules").join(&name);
        if !copy.exists() {
            bail!(
                "submodule {full}: {} has no copy of it ({} is missing); run `git submodule update --init --recursive` in {} first",
                checkout.display(),
                copy.display(),
                checkout.display()
            );
        }
        let dest = tree.join(&path);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        let mut clone = git(tree);
        clone
            .args(["clone", "--quiet", "--no-checkout", "--"])
            .arg(&copy)
            .arg(&dest);
        proc::check(clone, None, Duration::from_secs(600))
            .with_context(|| format!("cloning submodule {full} from {}", copy.display()))?;
        let has = git_out(&dest, &["cat-file", "-e", &format!("{pinned}^{{commit}}")])?;
        let at = if has.success() {
            pinned.clone()
        } else if let Some((_, why)) = recipe.unused_submodules.iter().find(|(p, _)| *p == full) {
            let head = git_out(&dest, &["rev-parse", "HEAD"])?
                .stdout
                .trim()
                .to_string();
            notes.push(format!(
                "submodule {full} pins {}, which {} does not have; checked out its HEAD {} instead, since {why}",
                short(&pinned),
                copy.display(),
                short(&head)
            ));
            head
        } else {
            bail!(
                "submodule {full} pins {pinned}, which {} does not have: fetch it there (`git -C {} submodule update --init --recursive`)",
                copy.display(),
                checkout.display()
            );
        };
        let co = git_out(&dest, &["checkout", "--quiet", "--detach", &at])?;
        if !co.success() {
            bail!(
                "submodule {full}: checking out {at}: {}",
                co.combined().trim()
            );
        }
        // A submodule whose content differs (a substituted submodule of its own, files
        // its build generates) must not make its parent "dirty" to `git describe
        // --dirty`, which builds take their version from: the version stays the
        // revision's; the notes say what was substituted.
        let ignore = git_out(
            tree,
            &["config", &format!("submodule.{name}.ignore"), "dirty"],
        )?;
        if !ignore.success() {
            bail!("submodule {full}: git config: {}", ignore.combined().trim());
        }
        submodules(recipe, checkout, &dest, &copy, &format!("{full}/"), notes)?;
    }
    Ok(())
}

/// The host side of a build: a private mount namespace with the build root read-only,
/// a tmpfs on /tmp, the source at /src, the compiler caches at /cache; the recipe runs
/// chrooted with a clean environment.
const IN_ROOT: &str = r#"set -e
root=$1 src=$2 cache=$3 mnt=$4
mount --bind "$root" "$mnt"
mount -o remount,bind,ro "$mnt"
mount -t tmpfs tmpfs "$mnt/tmp"
mount -t proc proc "$mnt/proc"
mount --bind /dev "$mnt/dev"
mount --bind "$src" "$mnt/src"
mount --bind "$cache" "$mnt/cache"
exec chroot "$mnt" /usr/bin/env -i \
  PATH=/usr/lib/ccache:/usr/local/bin:/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 \
  CCACHE_DIR=/cache/ccache GOCACHE=/cache/go-build GOPATH=/tmp/go GOTOOLCHAIN=local \
  GOPROXY=off GOFLAGS=-mod=vendor \
  GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' \
  /bin/sh -ec "exec 2>&1; cd /src
$5"
"#;

fn run_in_root(
    root: &Path,
    src: &Path,
    cache_dir: &Path,
    script: &str,
    work: &Path,
) -> Result<proc::Output> {
    if !proc::is_root() {
        bail!(
            "building a runtime needs root (a build root is mounted in a private mount namespace)"
        );
    }
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--fork",
        "--",
        "sh",
        "-c",
        IN_ROOT,
        "sh",
    ])
    .arg(root)
    .arg(src)
    .arg(cache_dir)
    .arg(&mnt)
    .arg(script);
    proc::run_own_group(c, Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_read_back_from_the_source_line() {
        let source = Source {
            dir: "/src/a, b".into(),
            commit: "0123456789abcdef0123".into(),
            describe: "1.21-3-g0123456".into(),
            subject: "fix: a: b".into(),
            date: "2025-07-18T14:44:10+02:00".into(),
            diff: None,
            untracked: Vec::new(),
        };
        let line = source.describe_line();
        assert_eq!(
            date_in_line(&line, &source.commit),
            Some("2025-07-18T14:44:10+02:00")
        );
        assert_eq!(date_in_line(&line, "ffffffffffff"), None);
    }

    #[test]
    fn gitmodules_lines() {
        let text = "submodule.libocispec.path libocispec\nsubmodule.a.b.path sub/dir\n";
        assert_eq!(
            parse_gitmodules(text),
            vec![
                ("libocispec".to_string(), "libocispec".to_string()),
                ("a.b".to_string(), "sub/dir".to_string())
            ]
        );
    }

    #[test]
    fn every_runtime_has_a_recipe() {
        for r in crate::runtimes::RUNTIMES {
            assert!(recipe(r).is_ok(), "{r}");
        }
        assert!(recipe("conmon").is_ok());
        let e = recipe("youki").unwrap_err().to_string();
        assert!(
            e.contains("youki") && e.contains("crun, runc, conmon"),
            "{e}"
        );
    }
}
