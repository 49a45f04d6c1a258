//! The Debian archive the host's own apt is configured with (`/etc/apt/sources.list` and
//! `sources.list.d/*.list` one-line entries, `*.sources` deb822 stanzas), so that a user
//! behind a local mirror, a proxy or a snapshot gets guests from it. Read by hand: the
//! two formats' few fields the lab needs take less code than a deb822 crate's API.

use std::path::Path;

/// Suite names and codenames of the Debian archive: an entry for one of them (not its
/// `-security`, `-updates` or `-backports` pocket) is the main archive. A third-party
/// repository (`nodistro`, `cloud-sdk-bookworm`) never names one.
const DEBIAN_SUITES: [&str; 14] = [
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
    "sid",
    "experimental",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "rc-buggy",
];

/// One `deb` source: its URI and suites, with the components it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// The file it came from, for messages.
    pub file: String,
}

impl Source {
    /// A source of the Debian main archive: `main`, and a Debian suite proper.
    fn is_debian_archive(&self) -> bool {
        self.components.iter().any(|c| c == "main")
            && self
                .suites
                .iter()
                .any(|s| DEBIAN_SUITES.contains(&s.trim_end_matches('/')))
            && ["http://", "https://", "file:/"]
                .iter()
                .any(|p| self.uri.starts_with(p))
    }
}

/// The `deb` entries of a one-line `sources.list` text (`deb [opts] URI SUITE COMP...`).
pub fn parse_list(text: &str, file: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            // Options in brackets: [arch=amd64 signed-by=...]
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1.trim_start(),
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.trim_end_matches('/').to_string();
            let suite = words.next()?.to_string();
            Some(Source {
                uri,
                suites: vec![suite],
                components: words.map(String::from).collect(),
                file: file.to_string(),
            })
        })
        .collect()
}

/// The `deb` stanzas of a deb822 `.sources` text (`Types:`, `URIs:`, `Suites:`,
/// `Components:`, `Enabled:`); a stanza with several URIs gives a source per URI.
pub fn parse_deb822(text: &str, file: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation line belongs to the field before it.
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |key: &str| -> Vec<String> {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        let enabled = get("enabled").first().is_none_or(|v| v != "no");
        if !enabled || !get("types").iter().any(|t| t == "deb") {
            continue;
        }
        for uri in get("uris") {
            sources.push(Source {
                uri: uri.trim_end_matches('/').to_string(),
                suites: get("suites"),
                components: get("components"),
                file: file.to_string(),
            });
        }
    }
    sources
}

/// Every `deb` source under an apt configuration directory (`/etc/apt`), in apt's order:
/// `sources.list`, then `sources.list.d/` by name (`.list` and `.sources` files only).
pub fn read(etc_apt: &Path) -> Vec<Source> {
    let mut sources = Vec::new();
    let main = etc_apt.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&main) {
        sources.extend(parse_list(&text, &main.display().to_string()));
    }
    let mut files: Vec<_> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.display().to_string();
        match f.extension().and_then(|e| e.to_str()) {
            Some("list") => sources.extend(parse_list(&text, &name)),
            Some("sources") => sources.extend(parse_deb822(&text, &name)),
            _ => {}
        }
    }
    sources
}

/// The first source of the Debian main archive among `sources`.
pub fn debian_archive(sources: &[Source]) -> Option<&Source> {
    sources.iter().find(|s| s.is_debian_archive())
}

#[cfg(test)]
mod tests {
    use super::*;

    // This host's /etc/apt/sources.list.d/debian.sources, as Debian 12 installs it.
    const BOOKWORM: &str = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

    #[test]
    fn the_main_archive_of_a_deb822_file() {
        let s = parse_deb822(BOOKWORM, "debian.sources");
        assert_eq!(s.len(), 2);
        let a = debian_archive(&s).unwrap();
        assert_eq!(a.uri, "http://deb.debian.org/debian");
        assert_eq!(a.suites, ["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn third_party_security_and_disabled_sources_are_not_the_archive() {
        let nodesource = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n";
        let security = "deb http://security.debian.org/debian-security bookworm-security main\n";
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://old.example/debian\nSuites: bookworm\nComponents: main\n";
        let src_only = "deb-src http://deb.debian.org/debian bookworm main\n";
        let mut all = parse_deb822(nodesource, "n.sources");
        all.extend(parse_list(security, "s.list"));
        all.extend(parse_deb822(disabled, "d.sources"));
        all.extend(parse_list(src_only, "src.list"));
        assert_eq!(debian_archive(&all), None);
        // A local mirror in the one-line format, with options, is taken.
        all.extend(parse_list(
            "# a comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.local/debian/ trixie main contrib\n",
            "m.list",
        ));
        let a = debian_archive(&all).unwrap();
        assert_eq!(
            (a.uri.as_str(), a.file.as_str()),
            ("http://mirror.local/debian", "m.list")
        );
    }

    #[test]
    fn files_are_read_in_apts_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sources.list.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("b.sources"), BOOKWORM).unwrap();
        std::fs::write(
            d.join("a.list"),
            "deb http://proxy.local:3142/debian bookworm main\n",
        )
        .unwrap();
        std::fs::write(d.join("c.list.disabled"), "deb http://x/debian sid main\n").unwrap();
        let all = read(dir.path());
        assert_eq!(all.len(), 3);
        assert_eq!(
            debian_archive(&all).unwrap().uri,
            "http://proxy.local:3142/debian"
        );
    }
}
