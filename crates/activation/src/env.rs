//! The `LISTEN_*` protocol of sd_listen_fds(3), parsed without touching any fd.
//!
//! Kept pure (values in, [`ListenEnv`] or [`EnvError`] out) so every malformed input is a
//! table test and a property test rather than a process spawn.

use std::fmt;

/// The first inherited fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// The largest `LISTEN_FDS` that still names valid fd numbers.
pub const MAX_LISTEN_FDS: usize = (i32::MAX - LISTEN_FDS_START) as usize + 1;

/// The three variables as found in the environment. `None` means unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenVars {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
    pub listen_fdnames: Option<String>,
}

/// What the variables promise: `count` fds starting at fd 3, with optional names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEnv {
    pub pid: u32,
    pub count: usize,
    /// One name per fd when `LISTEN_FDNAMES` was set.
    pub names: Option<Vec<String>>,
}

impl ListenEnv {
    /// The fd numbers this environment hands over: 3, 4, ...
    pub fn fds(&self) -> impl Iterator<Item = i32> + '_ {
        // `count <= MAX_LISTEN_FDS` is checked by `parse`, so this cannot overflow.
        (0..self.count).map(|i| LISTEN_FDS_START + i as i32)
    }

    pub fn name(&self, index: usize) -> Option<&str> {
        self.names
            .as_ref()
            .and_then(|n| n.get(index))
            .map(String::as_str)
    }
}

/// A malformed `LISTEN_*` environment. Every message names the variable and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{var}={} is not valid UTF-8", Quoted(value))]
    NotUtf8 { var: &'static str, value: String },
    #[error("LISTEN_FDS={} is not a number of file descriptors", Quoted(value))]
    FdsNotANumber { value: String },
    #[error(
        "LISTEN_FDS={} is too large: at most {MAX_LISTEN_FDS} fds can follow fd 3",
        Quoted(value)
    )]
    FdsTooLarge { value: String },
    #[error("LISTEN_PID={} is not a process id", Quoted(value))]
    PidNotANumber { value: String },
    #[error(
        "LISTEN_PID={} names another process (this is process {own_pid}): the sockets were passed to it, not to us",
        Quoted(value)
    )]
    PidOfAnotherProcess { value: String, own_pid: u32 },
    #[error("LISTEN_FDS={} is set but LISTEN_PID is not", Quoted(fds))]
    PidMissing { fds: String },
    #[error(
        "LISTEN_FDNAMES={} has {names} name(s) but LISTEN_FDS={} promises {count} fd(s)",
        Quoted(value),
        Quoted(fds)
    )]
    NamesMismatch {
        value: String,
        names: usize,
        fds: String,
        count: usize,
    },
}

/// Quotes a value in error messages so empty strings and spaces stay visible.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Parses the variables for process `own_pid`.
///
/// `Ok(None)` when `LISTEN_FDS` is unset: nothing was passed, which is not an error for
/// the library (the echo server turns it into its own message).
pub fn parse(vars: &ListenVars, own_pid: u32) -> Result<Option<ListenEnv>, EnvError> {
    let Some(fds) = vars.listen_fds.as_deref() else {
        return Ok(None);
    };
    let count = parse_count(fds)?;
    let Some(pid_text) = vars.listen_pid.as_deref() else {
        return Err(EnvError::PidMissing { fds: fds.into() });
    };
    let pid: u32 = pid_text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| EnvError::PidNotANumber {
            value: pid_text.into(),
        })?;
    if pid != own_pid {
        return Err(EnvError::PidOfAnotherProcess {
            value: pid_text.into(),
            own_pid,
        });
    }
    let names = match vars.listen_fdnames.as_deref() {
        None => None,
        Some(value) => {
            // An empty variable with zero fds is zero names, not one empty name.
            let names: Vec<String> = if value.is_empty() && count == 0 {
                Vec::new()
            } else {
                value.split(':').map(str::to_owned).collect()
            };
            if names.len() != count {
                return Err(EnvError::NamesMismatch {
                    value: value.into(),
                    names: names.len(),
                    fds: fds.into(),
                    count,
                });
            }
            Some(names)
        }
    };
    Ok(Some(ListenEnv { pid, count, names }))
}

fn parse_count(value: &str) -> Result<usize, EnvError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EnvError::FdsNotANumber {
            value: value.into(),
        });
    }
    match trimmed.parse::<usize>() {
        Ok(n) if n <= MAX_LISTEN_FDS => Ok(n),
        _ => Err(EnvError::FdsTooLarge {
            value: value.into(),
        }),
    }
}

/// Reads the three variables from this process's environment.
pub fn read_vars() -> Result<ListenVars, EnvError> {
    fn get(var: &'static str) -> Result<Option<String>, EnvError> {
        match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(EnvError::NotUtf8 {
                var,
                value: v.to_string_lossy().into_owned(),
            }),
        }
    }
    Ok(ListenVars {
        listen_pid: get("LISTEN_PID")?,
        listen_fds: get("LISTEN_FDS")?,
        listen_fdnames: get("LISTEN_FDNAMES")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn vars(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ListenVars {
        ListenVars {
            listen_pid: pid.map(Into::into),
            listen_fds: fds.map(Into::into),
            listen_fdnames: names.map(Into::into),
        }
    }

    #[rstest]
    #[case::unset(None, None, None, None)]
    #[case::pid_without_fds(Some("42"), None, None, None)]
    #[case::zero(Some("42"), Some("0"), None, Some((0, None)))]
    #[case::zero_with_empty_names(Some("42"), Some("0"), Some(""), Some((0, Some(vec![]))))]
    #[case::one(Some("42"), Some("1"), None, Some((1, None)))]
    #[case::padded(Some(" 42 "), Some(" 2\n"), None, Some((2, None)))]
    #[case::named(Some("42"), Some("2"), Some("web:admin"), Some((2, Some(vec!["web", "admin"]))))]
    #[case::empty_name(Some("42"), Some("2"), Some(":admin"), Some((2, Some(vec!["", "admin"]))))]
    #[case::one_empty_name(Some("42"), Some("1"), Some(""), Some((1, Some(vec![""]))))]
    #[case::max(Some("42"), Some("2147483645"), None, Some((MAX_LISTEN_FDS, None)))]
    fn accepts(
        #[case] pid: Option<&str>,
        #[case] fds: Option<&str>,
        #[case] names: Option<&str>,
        #[case] expected: Option<(usize, Option<Vec<&str>>)>,
    ) {
        let got = parse(&vars(pid, fds, names), 42).unwrap();
        let expected = expected.map(|(count, names)| ListenEnv {
            pid: 42,
            count,
            names: names.map(|n| n.into_iter().map(String::from).collect()),
        });
        assert_eq!(got, expected);
    }

    #[rstest]
    #[case::fds_word(
        Some("42"),
        Some("two"),
        None,
        "LISTEN_FDS=\"two\" is not a number of file descriptors"
    )]
    #[case::fds_negative(Some("42"), Some("-1"), None, "LISTEN_FDS=\"-1\" is not a number")]
    #[case::fds_empty(Some("42"), Some(""), None, "LISTEN_FDS=\"\" is not a number")]
    #[case::fds_hex(Some("42"), Some("0x3"), None, "LISTEN_FDS=\"0x3\" is not a number")]
    #[case::fds_huge(
        Some("42"),
        Some("99999999999999999999999"),
        None,
        "LISTEN_FDS=\"99999999999999999999999\" is too large"
    )]
    #[case::fds_over_fd_range(
        Some("42"),
        Some("2147483646"),
        None,
        "LISTEN_FDS=\"2147483646\" is too large"
    )]
    #[case::pid_missing(None, Some("1"), None, "LISTEN_FDS=\"1\" is set but LISTEN_PID is not")]
    #[case::pid_word(Some("me"), Some("1"), None, "LISTEN_PID=\"me\" is not a process id")]
    #[case::pid_zero(Some("0"), Some("1"), None, "LISTEN_PID=\"0\" is not a process id")]
    #[case::pid_other(
        Some("7"),
        Some("1"),
        None,
        "LISTEN_PID=\"7\" names another process (this is process 42)"
    )]
    #[case::fewer_names(
        Some("42"),
        Some("2"),
        Some("web"),
        "LISTEN_FDNAMES=\"web\" has 1 name(s) but LISTEN_FDS=\"2\" promises 2 fd(s)"
    )]
    #[case::more_names(
        Some("42"),
        Some("1"),
        Some("a:b"),
        "LISTEN_FDNAMES=\"a:b\" has 2 name(s) but LISTEN_FDS=\"1\" promises 1 fd(s)"
    )]
    #[case::names_without_fds(
        Some("42"),
        Some("0"),
        Some("a"),
        "LISTEN_FDNAMES=\"a\" has 1 name(s)"
    )]
    fn rejects(
        #[case] pid: Option<&str>,
        #[case] fds: Option<&str>,
        #[case] names: Option<&str>,
        #[case] message: &str,
    ) {
        let err = parse(&vars(pid, fds, names), 42).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(message),
            "{text:?} does not contain {message:?}"
        );
    }

    #[test]
    fn fd_numbers_start_at_three() {
        let env = parse(&vars(Some("42"), Some("3"), None), 42)
            .unwrap()
            .unwrap();
        assert_eq!(env.fds().collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the bytes, parsing never panics, and an accepted environment
            /// is internally consistent.
            #[test]
            fn never_panics(pid in proptest::option::of(".{0,12}"),
                            fds in proptest::option::of(".{0,24}"),
                            names in proptest::option::of(".{0,40}"),
                            own in 1u32..100) {
                let v = ListenVars { listen_pid: pid, listen_fds: fds, listen_fdnames: names };
                if let Ok(Some(env)) = parse(&v, own) {
                    prop_assert_eq!(env.pid, own);
                    prop_assert!(env.count <= MAX_LISTEN_FDS);
                    if let Some(n) = &env.names { prop_assert_eq!(n.len(), env.count); }
                }
            }

            /// Well-formed input round-trips: n fds named by n names.
            #[test]
            fn well_formed_round_trips(count in 0usize..64,
                                       name in "[a-z0-9._-]{1,16}",
                                       own in 1u32..u32::MAX) {
                let names = vec![name; count];
                let v = ListenVars {
                    listen_pid: Some(own.to_string()),
                    listen_fds: Some(count.to_string()),
                    listen_fdnames: Some(names.join(":")),
                };
                let env = parse(&v, own).unwrap().unwrap();
                prop_assert_eq!(env.count, count);
                prop_assert_eq!(env.names, Some(names));
            }

            /// Any other pid is refused with both pids in the message.
            #[test]
            fn other_pid_refused(listen in 1u32..u32::MAX, own in 1u32..u32::MAX) {
                prop_assume!(listen != own);
                let v = ListenVars {
                    listen_pid: Some(listen.to_string()),
                    listen_fds: Some("1".into()),
                    listen_fdnames: None,
                };
                let msg = parse(&v, own).unwrap_err().to_string();
                let listen_text = format!("\"{listen}\"");
                let own_text = format!("process {own}");
                prop_assert!(msg.contains(&listen_text));
                prop_assert!(msg.contains(&own_text));
            }
        }
    }
}
