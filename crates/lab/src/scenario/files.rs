//! Scenario directories: a bug report's own files (units, drop-ins, quadlets, anything
//! else) installed as they are, with only the rewrites `scenario.toml` declares (an
//! image reference mapped to a local image; the trial's OCI runtime), each shown as a
//! unified diff. Pure: reading the directory and rewriting text; the guest side is in
//! `steps`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Where a file of a scenario directory goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The manager's unit directory (`~/.config/systemd/user` or `/etc/systemd/system`),
    /// at this relative path (`echo.socket`, `echo@demo.socket.d/override.conf`).
    Unit(String),
    /// The quadlet directory (`~/.config/containers/systemd`, `/etc/containers/systemd`).
    Quadlet(String),
    /// Where `[files]` says.
    Declared(FileSpec),
}

/// A file `scenario.toml` places itself: `[files."Caddyfile"] dest = "{home}/Caddyfile"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// An absolute path in the guest; `{home}` is the test user's home.
    pub dest: String,
    /// `user` (the test user, the default) or `root`.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Octal, `0644` by default.
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_owner() -> String {
    "user".into()
}

fn default_mode() -> String {
    "0644".into()
}

impl FileSpec {
    pub fn mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                format!(
                    "mode = {:?}: expected an octal mode like \"0644\"",
                    self.mode
                )
            })
    }
}

/// The rewrites a scenario directory allows: nothing else in its files is changed.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Image references (as the files write them) → the local image to use instead;
    /// `"echo"` is the lab's own echo image. A reference without a tag or digest also
    /// maps its tagged and digested forms.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Replace the OCI runtime the files name (`--runtime NAME`, `--runtime=NAME`,
    /// `GlobalArgs=--runtime=NAME`) with the trial's.
    #[serde(default)]
    pub runtime: bool,
}

pub const UNIT_EXTENSIONS: [&str; 7] = [
    "socket", "service", "timer", "target", "path", "slice", "mount",
];
pub const QUADLET_EXTENSIONS: [&str; 7] = [
    "container",
    "volume",
    "network",
    "kube",
    "pod",
    "image",
    "build",
];

/// One file of a scenario directory, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirFile {
    /// Relative to the directory: `echo.socket`, `echo@demo.socket.d/override.conf`.
    pub name: String,
    pub text: String,
    pub dest: Destination,
}

/// Reads every file of the scenario directory `dir` but `scenario.toml` and decides
/// where each goes. A file that is neither a unit, a drop-in nor a quadlet file must be
/// in `declared`; a declared file must exist.
pub fn read_dir(dir: &Path, declared: &BTreeMap<String, FileSpec>) -> Result<Vec<DirFile>> {
    let paths = relative_files(dir)?;
    let mut files = Vec::new();
    for rel in paths {
        if rel == "scenario.toml" {
            continue;
        }
        let path = dir.join(&rel);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let dest = destination(&rel, declared).with_context(|| format!("{}", path.display()))?;
        files.push(DirFile {
            name: rel,
            text,
            dest,
        });
    }
    for name in declared.keys() {
        if !files.iter().any(|f| &f.name == name) {
            bail!(
                "{}: [files.{name:?}] names a file the directory does not have",
                dir.join("scenario.toml").display()
            );
        }
    }
    Ok(files)
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn relative_files(dir: &Path) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    collect(dir, dir, &mut paths)?;
    paths.sort();
    Ok(paths)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn destination(rel: &str, declared: &BTreeMap<String, FileSpec>) -> Result<Destination> {
    if let Some(spec) = declared.get(rel) {
        return Ok(Destination::Declared(spec.clone()));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    let ext = |name: &str| name.rsplit_once('.').map(|(_, e)| e.to_string());
    match parts.as_slice() {
        [name] if ext(name).is_some_and(|e| UNIT_EXTENSIONS.contains(&e.as_str())) => {
            Ok(Destination::Unit(rel.into()))
        }
        [name] if ext(name).is_some_and(|e| QUADLET_EXTENSIONS.contains(&e.as_str())) => {
            Ok(Destination::Quadlet(rel.into()))
        }
        [dropin, conf]
            if dropin.ends_with(".d")
                && conf.ends_with(".conf")
                && ext(dropin.trim_end_matches(".d"))
                    .is_some_and(|e| UNIT_EXTENSIONS.contains(&e.as_str())) =>
        {
            Ok(Destination::Unit(rel.into()))
        }
        _ => bail!(
            "not a unit ({}), a drop-in (UNIT.d/*.conf) or a quadlet file ({}): say where it goes in scenario.toml's [files]",
            UNIT_EXTENSIONS.join(", "),
            QUADLET_EXTENSIONS.join(", ")
        ),
    }
}

/// The unit names a directory's unit files define (`echo.socket`, `echo@.socket`), not
/// drop-ins.
pub fn unit_names(files: &[DirFile]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| match &f.dest {
            Destination::Unit(rel) if !rel.contains('/') => Some(rel.clone()),
            _ => None,
        })
        .collect()
}

/// The services quadlet generates from a directory's quadlet files (`echo.container` and
/// `echo.kube` → `echo.service`, `data.volume` → `data-volume.service`).
pub fn quadlet_services(files: &[DirFile]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| match &f.dest {
            Destination::Quadlet(rel) => {
                let (stem, ext) = rel.rsplit_once('.')?;
                Some(match ext {
                    "container" | "kube" => format!("{stem}.service"),
                    other => format!("{stem}-{other}.service"),
                })
            }
            _ => None,
        })
        .collect()
}

/// The socket units among `files` with `Accept=yes` (or true, on, 1): each connection
/// starts an instance of the template service of the same name (`echo.socket` →
/// `echo@.service`), so that template needs no instance of its own.
pub fn accepting_sockets(files: &[DirFile]) -> Vec<String> {
    files
        .iter()
        .filter(|f| matches!(f.dest, Destination::Unit(_)) && f.name.ends_with(".socket"))
        .filter(|f| {
            f.text.lines().any(|l| {
                l.trim().split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "Accept"
                        && ["yes", "true", "on", "1"].contains(&v.trim().to_lowercase().as_str())
                })
            })
        })
        .map(|f| f.name.clone())
        .collect()
}

/// `true` for a template unit name: `echo@.socket`.
pub fn is_template(unit: &str) -> bool {
    unit.split_once('@')
        .is_some_and(|(_, rest)| rest.starts_with('.'))
}

/// The template an instance belongs to: `echo@demo.socket` → `echo@.socket`.
pub fn template_of(unit: &str) -> Option<String> {
    let (prefix, rest) = unit.split_once('@')?;
    let (_, ext) = rest.rsplit_once('.')?;
    (!rest.starts_with('.')).then(|| format!("{prefix}@.{ext}"))
}

/// A runtime a file pins: the value after `--runtime` or `--runtime=`, with the line
/// (counted from 1) it is on.
pub fn pinned_runtimes(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.next() {
            let w = w
                .trim_start_matches("GlobalArgs=")
                .trim_start_matches("PodmanArgs=");
            if w == "--runtime" {
                if let Some(v) = words.peek() {
                    found.push((i + 1, v.trim_matches('"').to_string()));
                }
            } else if let Some(v) = w.strip_prefix("--runtime=") {
                found.push((i + 1, v.trim_matches('"').to_string()));
            }
        }
    }
    found
}

/// `text` with the runtime after every `--runtime` / `--runtime=` replaced by `runtime`.
pub fn rewrite_runtime(text: &str, runtime: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut rewritten = String::new();
        let mut rest = line;
        while let Some(i) = rest.find("--runtime") {
            let (before, from) = rest.split_at(i);
            rewritten.push_str(before);
            let after = &from["--runtime".len()..];
            let (sep, value_start) = if let Some(a) = after.strip_prefix('=') {
                ("=", a)
            } else if after.starts_with([' ', '\t']) {
                let trimmed = after.trim_start_matches([' ', '\t']);
                (&after[..after.len() - trimmed.len()], trimmed)
            } else {
                // `--runtime-flag` and the like: not the runtime option.
                rewritten.push_str("--runtime");
                rest = after;
                continue;
            };
            let end = value_start
                .find(|c: char| c.is_whitespace())
                .unwrap_or(value_start.len());
            rewritten.push_str("--runtime");
            rewritten.push_str(sep);
            rewritten.push_str(runtime);
            rest = &value_start[end..];
        }
        rewritten.push_str(rest);
        out.push_str(&rewritten);
    }
    out
}

/// `text` with each image reference of `images` (and, for a reference without a tag or
/// digest, its tagged and digested forms) replaced by its local image. A reference only
/// counts as a whole word: `=`, whitespace or a quote before it, whitespace, a quote or
/// the end of the line after it.
pub fn rewrite_images(text: &str, images: &BTreeMap<String, String>, echo: &str) -> String {
    let mut out = text.to_string();
    for (from, to) in images {
        let to = if to == "echo" { echo } else { to.as_str() };
        let untagged = !from.rsplit('/').next().unwrap_or(from).contains([':', '@']);
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(from.as_str()) {
            let before_ok = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == '=' || c == '"' || c == '\'');
            let after = &rest[i + from.len()..];
            // The reference's own tag or digest, if it has one and may.
            let suffix_len = if untagged && (after.starts_with(':') || after.starts_with('@')) {
                after
                    .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                    .unwrap_or(after.len())
            } else {
                0
            };
            let end_ok = after[suffix_len..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '"' || c == '\'');
            if before_ok && end_ok {
                result.push_str(&rest[..i]);
                result.push_str(to);
                rest = &after[suffix_len..];
            } else {
                result.push_str(&rest[..i + from.len()]);
                rest = after;
            }
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// A unified diff of `before` → `after` for the file `name`, empty when they are equal.
pub fn diff(name: &str, before: &str, after: &str) -> String {
    if before == after {
        return String::new();
    }
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

/// What the lab does to one file for one trial: the text it installs and the diff.
pub fn rewritten(
    file: &DirFile,
    rewrite: &Rewrite,
    runtime: &str,
    echo_image: &str,
) -> Result<(String, String)> {
    let mut text = rewrite_images(&file.text, &rewrite.images, echo_image);
    let pins = pinned_runtimes(&text);
    if rewrite.runtime {
        text = rewrite_runtime(&text, runtime);
    } else if let Some((line, pinned)) = pins.iter().find(|(_, p)| p != runtime) {
        bail!(
            "{}:{line}: pins the runtime {pinned:?} but the trial runs {runtime:?}, and scenario.toml declares no runtime rewrite ([rewrite] runtime = true)",
            file.name
        );
    }
    let d = diff(&file.name, &file.text, &text);
    Ok((text, d))
}

/// The images quadlet files ask for (`Image=` in `[Container]`), with file and line, as
/// installed (after the declared rewrites).
pub fn quadlet_images(installed: &[(String, String)]) -> Vec<(&str, usize, &str)> {
    installed
        .iter()
        .filter(|(name, _)| name.ends_with(".container"))
        .flat_map(|(name, text)| {
            text.lines().enumerate().filter_map(move |(i, l)| {
                l.trim()
                    .strip_prefix("Image=")
                    .map(|img| (name.as_str(), i + 1, img.trim()))
            })
        })
        .filter(|(_, _, img)| {
            !img.is_empty() && !img.ends_with(".image") && !img.ends_with(".build")
        })
        .collect()
}

/// Whether any file names a runtime (else the trial's goes into containers.conf).
pub fn names_a_runtime(files: &[DirFile]) -> bool {
    files.iter().any(|f| !pinned_runtimes(&f.text).is_empty())
}

/// podman's `containers.conf` that makes `runtime` (a name or a path) the default.
pub fn containers_conf(runtime: &str) -> String {
    if runtime.starts_with('/') {
        format!(
            "# socket-activation-lab: the trial's runtime\n[engine]\nruntime = \"lab\"\n\n[engine.runtimes]\nlab = [\"{runtime}\"]\n"
        )
    } else {
        format!("# socket-activation-lab: the trial's runtime\n[engine]\nruntime = \"{runtime}\"\n")
    }
}

/// The path of a scenario directory's `scenario.toml`.
pub fn manifest(dir: &Path) -> PathBuf {
    dir.join("scenario.toml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "ExecStart=/usr/bin/podman run --runtime crun --rm img\n",
        "ExecStart=/usr/bin/podman run --runtime runc --rm img\n"
    )]
    #[case(
        "ExecStart=/usr/bin/podman run --runtime=crun img\n",
        "ExecStart=/usr/bin/podman run --runtime=runc img\n"
    )]
    #[case(
        "ExecStart=podman --runtime /usr/bin/crun run img\n",
        "ExecStart=podman --runtime runc run img\n"
    )]
    #[case(
        "[Container]\nGlobalArgs=--runtime=crun\n",
        "[Container]\nGlobalArgs=--runtime=runc\n"
    )]
    #[case(
        "ExecStart=podman run --runtime-flag=debug img\n",
        "ExecStart=podman run --runtime-flag=debug img\n"
    )]
    #[case("ExecStart=podman run img\n", "ExecStart=podman run img\n")]
    fn runtime_flags_in_every_spelling(#[case] before: &str, #[case] after: &str) {
        assert_eq!(rewrite_runtime(before, "runc"), after);
    }

    #[test]
    fn pins_are_found_with_their_lines() {
        let text = "[Service]\nExecStart=podman run --runtime crun img\n[X]\nGlobalArgs=--runtime=/opt/crun\n";
        assert_eq!(
            pinned_runtimes(text),
            vec![(2, "crun".to_string()), (4, "/opt/crun".to_string())]
        );
        assert!(pinned_runtimes("ExecStart=podman run img\n").is_empty());
    }

    #[rstest]
    #[case(
        "ExecStart=podman run ghcr.io/e/echo\n",
        "ExecStart=podman run localhost/echo:latest\n"
    )]
    #[case(
        "ExecStart=podman run ghcr.io/e/echo:v2 --x\n",
        "ExecStart=podman run localhost/echo:latest --x\n"
    )]
    #[case("Image=ghcr.io/e/echo@sha256:abcd\n", "Image=localhost/echo:latest\n")]
    #[case(
        "ExecStart=podman run \"ghcr.io/e/echo\"\n",
        "ExecStart=podman run \"localhost/echo:latest\"\n"
    )]
    #[case(
        "ExecStart=podman run ghcr.io/e/echo-other\n",
        "ExecStart=podman run ghcr.io/e/echo-other\n"
    )]
    #[case(
        "ExecStart=podman run x/ghcr.io/e/echo\n",
        "ExecStart=podman run x/ghcr.io/e/echo\n"
    )]
    fn image_references_with_and_without_tag_or_digest(#[case] before: &str, #[case] after: &str) {
        let images = BTreeMap::from([("ghcr.io/e/echo".to_string(), "echo".to_string())]);
        assert_eq!(
            rewrite_images(before, &images, "localhost/echo:latest"),
            after
        );
    }

    #[test]
    fn a_tagged_reference_maps_only_that_tag() {
        let images = BTreeMap::from([("ghcr.io/e/echo:v1".to_string(), "localhost/x".to_string())]);
        assert_eq!(
            rewrite_images(
                "Image=ghcr.io/e/echo:v1\nImage=ghcr.io/e/echo:v2\n",
                &images,
                "e"
            ),
            "Image=localhost/x\nImage=ghcr.io/e/echo:v2\n"
        );
    }

    fn unit(name: &str, text: &str) -> DirFile {
        DirFile {
            name: name.into(),
            text: text.into(),
            dest: Destination::Unit(name.into()),
        }
    }

    #[test]
    fn every_rewrite_is_a_diff_and_undeclared_pins_are_errors() {
        let f = unit(
            "echo.service",
            "[Service]\nExecStart=/usr/bin/podman run --runtime crun --pull=never ghcr.io/e/echo\n",
        );
        let rw = Rewrite {
            images: BTreeMap::from([("ghcr.io/e/echo".to_string(), "echo".to_string())]),
            runtime: true,
        };
        let (text, d) = rewritten(
            &f,
            &rw,
            "/opt/runc@sid/runc",
            "localhost/socket-activate-echo:latest",
        )
        .unwrap();
        assert_eq!(
            text,
            "[Service]\nExecStart=/usr/bin/podman run --runtime /opt/runc@sid/runc --pull=never localhost/socket-activate-echo:latest\n"
        );
        assert_eq!(
            d,
            "--- a/echo.service\n+++ b/echo.service\n@@ -1,2 +1,2 @@\n [Service]\n-ExecStart=/usr/bin/podman run --runtime crun --pull=never ghcr.io/e/echo\n+ExecStart=/usr/bin/podman run --runtime /opt/runc@sid/runc --pull=never localhost/socket-activate-echo:latest\n"
        );
        // No runtime rewrite declared: the same runtime is fine, another is an error.
        let rw = Rewrite::default();
        let (same, d) = rewritten(&f, &rw, "crun", "e").unwrap();
        assert_eq!(same, f.text);
        assert!(d.is_empty());
        let e = rewritten(&f, &rw, "runc", "e").unwrap_err().to_string();
        assert!(
            e.contains("echo.service:2: pins the runtime \"crun\" but the trial runs \"runc\""),
            "{e}"
        );
    }

    #[test]
    fn files_with_no_runtime_get_it_from_containers_conf() {
        let files = vec![unit("echo.container", "[Container]\nImage=echo\n")];
        assert!(!names_a_runtime(&files));
        assert_eq!(
            containers_conf("crun"),
            "# socket-activation-lab: the trial's runtime\n[engine]\nruntime = \"crun\"\n"
        );
        assert!(containers_conf("/opt/x/runc").contains("lab = [\"/opt/x/runc\"]"));
    }

    #[test]
    fn a_directory_is_sorted_into_units_dropins_quadlets_and_declared_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, text) in [
            ("scenario.toml", "x"),
            ("echo@.socket", "[Socket]\n"),
            ("echo@.service", "[Service]\n"),
            (
                "echo@demo.socket.d/override.conf",
                "[Socket]\nListenStream=3000\n",
            ),
            ("web.container", "[Container]\n"),
            ("Caddyfile", ":80\n"),
        ] {
            std::fs::create_dir_all(d.join(name).parent().unwrap()).unwrap();
            std::fs::write(d.join(name), text).unwrap();
        }
        let e = format!("{:#}", read_dir(d, &BTreeMap::new()).unwrap_err());
        assert!(e.contains("Caddyfile") && e.contains("[files]"), "{e}");
        let declared = BTreeMap::from([(
            "Caddyfile".to_string(),
            FileSpec {
                dest: "{home}/Caddyfile".into(),
                owner: "user".into(),
                mode: "0644".into(),
            },
        )]);
        let files = read_dir(d, &declared).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Caddyfile",
                "echo@.service",
                "echo@.socket",
                "echo@demo.socket.d/override.conf",
                "web.container"
            ]
        );
        assert_eq!(unit_names(&files), ["echo@.service", "echo@.socket"]);
        assert_eq!(quadlet_services(&files), ["web.service"]);
        let quadlet = |name: &str| DirFile {
            name: name.into(),
            text: String::new(),
            dest: Destination::Quadlet(name.into()),
        };
        let kube = vec![quadlet("app.kube"), quadlet("app.pod")];
        assert_eq!(quadlet_services(&kube), ["app.service", "app-pod.service"]);
        let missing = BTreeMap::from([("nope.conf".to_string(), declared["Caddyfile"].clone())]);
        let mut with_missing = declared.clone();
        with_missing.extend(missing);
        let e = format!("{:#}", read_dir(d, &with_missing).unwrap_err());
        assert!(
            e.contains("[files.\"nope.conf\"] names a file the directory does not have"),
            "{e}"
        );
    }

    #[test]
    fn quadlet_images_with_file_and_line() {
        let installed = vec![
            (
                "echo.container".to_string(),
                "[Container]\nImage=localhost/echo:latest\n".to_string(),
            ),
            (
                "web.container".to_string(),
                "[Unit]\n\n[Container]\nImage=web.image\n".to_string(),
            ),
            (
                "echo.socket".to_string(),
                "Image=not-a-quadlet\n".to_string(),
            ),
        ];
        assert_eq!(
            quadlet_images(&installed),
            vec![("echo.container", 2, "localhost/echo:latest")]
        );
    }

    #[test]
    fn accept_yes_sockets_instantiate_their_template() {
        let files = vec![
            unit("echo.socket", "[Socket]\nListenStream=3000\nAccept = Yes\n"),
            unit("plain.socket", "[Socket]\nListenStream=3001\nAccept=no\n"),
            unit("other.socket", "[Socket]\nListenStream=3002\n"),
            unit("echo@.service", "[Service]\nExecStart=/bin/true\n"),
        ];
        assert_eq!(accepting_sockets(&files), vec!["echo.socket".to_string()]);
    }

    #[test]
    fn templates_and_instances() {
        assert!(is_template("echo@.socket"));
        assert!(!is_template("echo@demo.socket"));
        assert!(!is_template("echo.socket"));
        assert_eq!(
            template_of("echo@demo.socket").as_deref(),
            Some("echo@.socket")
        );
        assert_eq!(template_of("echo@.socket"), None);
        assert_eq!(template_of("echo.socket"), None);
    }
}
