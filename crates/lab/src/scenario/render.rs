//! The units a TOML scenario declares, rendered: its socket, its service (a `podman
//! run` under systemd), its quadlet file and its helpers.

use crate::scenario::schema::Scenario;
use crate::units::{ServiceUnit, SocketUnit, exec_quote};

impl Scenario {
    pub fn socket_unit(&self) -> Option<SocketUnit> {
        self.socket.as_ref().map(|sock| SocketUnit {
            description: format!("socket-activation-lab {}", self.name),
            listen: sock.listen.clone(),
            options: sock.options.clone().into_iter().collect(),
        })
    }

    pub fn service_unit(&self, runtime: &str) -> Option<ServiceUnit> {
        let spec = self.service.as_ref()?;
        let mut exec = podman_run_exec(&self.unit, runtime);
        exec.extend(spec.podman_args.iter().cloned());
        exec.push(spec.image.clone());
        exec.extend(spec.args.iter().cloned());
        let mut service_options = notify_service_options();
        // A service option may run podman itself (an ExecStartPre= that proves a
        // restriction): it names the trial's runtime as ExecStart= does.
        service_options.extend(
            spec.options
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{runtime}", runtime))),
        );
        Some(ServiceUnit {
            description: format!("socket-activation-lab {}", self.name),
            socket: self.socket_name(),
            unit_options: spec.unit_options.clone().into_iter().collect(),
            service_options,
            exec_start: exec,
        })
    }

    /// The quadlet `.container` file text.
    pub fn quadlet_file(&self, runtime: &str) -> Option<String> {
        let q = self.quadlet.as_ref()?;
        let mut s = format!("[Unit]\nDescription=socket-activation-lab {}\n", self.name);
        if let Some(sock) = self.socket_name() {
            s += &format!("Requires={sock}\nAfter={sock}\n");
        }
        s += &format!(
            "\n[Container]\nImage={}\nContainerName={}\nPodmanArgs=--runtime {runtime}\n",
            q.image, self.unit
        );
        if !q.args.is_empty() {
            let args: Vec<String> = q.args.iter().map(|a| exec_quote(a)).collect();
            s += &format!("Exec={}\n", args.join(" "));
        }
        for (k, v) in &q.options {
            s += &format!("{k}={v}\n");
        }
        Some(s)
    }

    pub fn helper_units(&self) -> Vec<(String, ServiceUnit)> {
        self.helper
            .iter()
            .map(|h| {
                let mut options = vec![("Type".to_string(), h.r#type.clone())];
                if h.remain_after_exit {
                    options.push(("RemainAfterExit".into(), "yes".into()));
                }
                (
                    h.name.clone(),
                    ServiceUnit {
                        description: format!("socket-activation-lab helper {}", h.name),
                        socket: None,
                        unit_options: Vec::new(),
                        service_options: options,
                        exec_start: h.exec.clone(),
                    },
                )
            })
            .collect()
    }
}

/// The start of a socket-activated service's `ExecStart=`: `podman run` of a container
/// named `name` that replaces any leftover, with conmon relaying sd_notify.
pub fn podman_run_exec(name: &str, runtime: &str) -> Vec<String> {
    [
        "/usr/bin/podman",
        "run",
        "--rm",
        "--replace",
        "--name",
        name,
        "--cgroups=no-conmon",
        "--sdnotify=conmon",
        "--runtime",
        runtime,
    ]
    .map(String::from)
    .to_vec()
}

/// `Type=notify` with `NotifyAccess=all`: READY=1 comes from conmon, not the main PID.
pub fn notify_service_options() -> Vec<(String, String)> {
    vec![
        ("Type".into(), "notify".into()),
        ("NotifyAccess".into(), "all".into()),
    ]
}
