//! systemd unit files from typed values, so a scenario cannot write a unit by hand and get
//! the syntax wrong; the rendering is golden-tested.

use std::fmt::Write;

/// One `Listen*=` line of a socket unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub datagram: Option<String>,
    #[serde(default)]
    pub seqpacket: Option<String>,
}

impl Listen {
    pub fn line(&self) -> Result<String, String> {
        match (&self.stream, &self.datagram, &self.seqpacket) {
            (Some(a), None, None) => Ok(format!("ListenStream={a}")),
            (None, Some(a), None) => Ok(format!("ListenDatagram={a}")),
            (None, None, Some(a)) => Ok(format!("ListenSequentialPacket={a}")),
            _ => Err("each listen entry needs exactly one of stream, datagram, seqpacket".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketUnit {
    pub description: String,
    pub listen: Vec<Listen>,
    /// More `[Socket]` settings (`BindToDevice=`, `FileDescriptorName=`, ...).
    pub options: Vec<(String, String)>,
}

impl SocketUnit {
    pub fn render(&self) -> Result<String, String> {
        if self.listen.is_empty() {
            return Err("a socket unit needs at least one listen entry".into());
        }
        let mut s = String::new();
        writeln!(s, "[Unit]\nDescription={}\n\n[Socket]", self.description).unwrap();
        for l in &self.listen {
            writeln!(s, "{}", l.line()?).unwrap();
        }
        for (k, v) in &self.options {
            writeln!(s, "{k}={v}").unwrap();
        }
        writeln!(s, "\n[Install]\nWantedBy=sockets.target").unwrap();
        Ok(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUnit {
    pub description: String,
    /// `Requires=`/`After=` of the socket unit (with its `.socket` suffix).
    pub socket: Option<String>,
    pub unit_options: Vec<(String, String)>,
    pub service_options: Vec<(String, String)>,
    /// The argv of `ExecStart=`.
    pub exec_start: Vec<String>,
}

/// Quotes one argument for an `ExecStart=` line: systemd splits on whitespace, honours
/// double quotes with C-style escapes, and expands `%` specifiers and `$` variables.
pub fn exec_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return escaped;
    }
    let mut q = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

impl ServiceUnit {
    pub fn render(&self) -> Result<String, String> {
        if self.exec_start.is_empty() {
            return Err("a service needs a command".into());
        }
        let mut s = String::new();
        writeln!(s, "[Unit]\nDescription={}", self.description).unwrap();
        if let Some(sock) = &self.socket {
            writeln!(s, "Requires={sock}\nAfter={sock}").unwrap();
        }
        for (k, v) in &self.unit_options {
            writeln!(s, "{k}={v}").unwrap();
        }
        writeln!(s, "\n[Service]").unwrap();
        for (k, v) in &self.service_options {
            writeln!(s, "{k}={v}").unwrap();
        }
        let cmd: Vec<String> = self.exec_start.iter().map(|a| exec_quote(a)).collect();
        writeln!(s, "ExecStart={}", cmd.join(" ")).unwrap();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_unit_golden() {
        let u = SocketUnit {
            description: "echo".into(),
            listen: vec![
                Listen {
                    stream: Some("127.0.0.1:3000".into()),
                    datagram: None,
                    seqpacket: None,
                },
                Listen {
                    stream: None,
                    datagram: Some("[::1]:3000".into()),
                    seqpacket: None,
                },
                Listen {
                    stream: None,
                    datagram: None,
                    seqpacket: Some("%h/seq".into()),
                },
            ],
            options: vec![("BindToDevice".into(), "eth0".into())],
        };
        assert_eq!(
            u.render().unwrap(),
            "[Unit]\nDescription=echo\n\n[Socket]\nListenStream=127.0.0.1:3000\nListenDatagram=[::1]:3000\nListenSequentialPacket=%h/seq\nBindToDevice=eth0\n\n[Install]\nWantedBy=sockets.target\n"
        );
    }

    #[test]
    fn listen_needs_exactly_one_kind() {
        let l = Listen {
            stream: Some("1".into()),
            datagram: Some("2".into()),
            seqpacket: None,
        };
        assert!(l.line().is_err());
        let l = Listen {
            stream: None,
            datagram: None,
            seqpacket: None,
        };
        assert!(l.line().is_err());
    }

    #[test]
    fn service_unit_golden() {
        let u = ServiceUnit {
            description: "echo".into(),
            socket: Some("echo.socket".into()),
            unit_options: vec![],
            service_options: vec![
                ("Type".into(), "notify".into()),
                ("NotifyAccess".into(), "all".into()),
            ],
            exec_start: vec![
                "/usr/bin/podman".into(),
                "run".into(),
                "--label".into(),
                "a b".into(),
                "50%".into(),
            ],
        };
        assert_eq!(
            u.render().unwrap(),
            "[Unit]\nDescription=echo\nRequires=echo.socket\nAfter=echo.socket\n\n[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/bin/podman run --label \"a b\" 50%%\n"
        );
    }

    #[test]
    fn exec_quote_cases() {
        assert_eq!(exec_quote("plain"), "plain");
        assert_eq!(exec_quote(""), "\"\"");
        assert_eq!(exec_quote("$HOME"), "$$HOME");
        assert_eq!(exec_quote("say \"hi\""), "\"say \\\"hi\\\"\"");
    }
}
