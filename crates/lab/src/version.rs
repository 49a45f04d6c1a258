//! Versions as the tools print them (`1.1.15+ds1`, `1.21`, `1.0.0~rc93`, `5.4.2`) and
//! ranges over them (`<1.1.3`, `>=1.0,<1.5`), for known-bug expectations.

use std::cmp::Ordering;

/// Numeric components, then a pre-release flag: `1.0.0~rc93` < `1.0.0`.
#[derive(Debug, Clone)]
pub struct Version {
    parts: Vec<u64>,
    pre: Option<String>,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim().trim_start_matches('v');
        // Debian revision and build metadata do not order upstream versions.
        let text = text.split(['+', ' ']).next().unwrap_or(text);
        let (main, pre) = match text.split_once(['~', '-']) {
            Some((m, p)) => (m, Some(p.to_string())),
            None => (text, None),
        };
        let parts: Option<Vec<u64>> = main.split('.').map(|p| p.parse().ok()).collect();
        let parts = parts.filter(|p| !p.is_empty())?;
        Some(Version { parts, pre })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        for i in 0..n {
            let (a, b) = (
                self.parts.get(i).copied().unwrap_or(0),
                other.parts.get(i).copied().unwrap_or(0),
            );
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        }
    }
}

// Equality follows the ordering: `1.21` equals `1.21.0`.
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Whether `version` satisfies every comma-separated bound in `range` (`<1.1.3`,
/// `>=1.0,<1.5`, `=1.21`; `*` for any).
pub fn in_range(version: &str, range: &str) -> Result<bool, String> {
    let v = Version::parse(version).ok_or_else(|| format!("cannot read version {version:?}"))?;
    for bound in range.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        if bound == "*" {
            continue;
        }
        let (op, rest) = ["<=", ">=", "<", ">", "="]
            .iter()
            .find_map(|op| bound.strip_prefix(op).map(|r| (*op, r)))
            .ok_or_else(|| format!("version bound {bound:?} needs one of <, <=, >, >=, ="))?;
        let b = Version::parse(rest)
            .ok_or_else(|| format!("version bound {bound:?} has no version"))?;
        let ok = match op {
            "<" => v < b,
            "<=" => v <= b,
            ">" => v > b,
            ">=" => v >= b,
            _ => v == b,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `range` is a range [`in_range`] can read; the reason if not.
pub fn check_range(range: &str) -> Result<(), String> {
    if range.trim().is_empty() {
        return Err("an empty range (use \"*\" for any version)".into());
    }
    in_range("0", range).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("1.1.15+ds1", "<1.1.3", false)]
    #[case("1.1.2", "<1.1.3", true)]
    #[case("1.0.0~rc93", "<1.1.3", true)]
    #[case("1.0.0~rc93", ">=1.0.0", false)]
    #[case("1.21", ">=1.5", true)]
    #[case("0.17", "<1.5", true)]
    #[case("1.8.1", ">=1.0,<1.5", false)]
    #[case("1.3.6", "*", true)]
    #[case("5.4.2", ">=4.4", true)]
    #[case("4.3.1", ">=4.4", false)]
    #[case("1.21", "=1.21.0", true)]
    fn ranges(#[case] v: &str, #[case] range: &str, #[case] expected: bool) {
        assert_eq!(in_range(v, range).unwrap(), expected, "{v} in {range}");
    }

    #[test]
    fn errors_name_the_input() {
        assert!(
            in_range("garbage", "<1")
                .unwrap_err()
                .contains("\"garbage\"")
        );
        assert!(in_range("1.0", "~1").unwrap_err().contains("\"~1\""));
        assert!(check_range("=>4.4").is_err());
        assert!(check_range(">=4.4").is_ok());
        assert!(check_range("").is_err());
    }
}
