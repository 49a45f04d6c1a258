//! The lab's events: the guest machinery's progress ([`vm::events::Event`]) and the
//! trials' starts and ends. Reporters (the console here) only consume them.

use std::sync::Arc;

use crate::trial::TrialResult;

#[derive(Debug, Clone)]
pub enum Event {
    /// Progress of a long step of the guest machinery (image, boot, restore, download).
    Machine(vm::events::Event),
    TrialStart {
        name: String,
    },
    TrialEnd(Box<TrialResult>),
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

type Reporters = Arc<Vec<Box<dyn Reporter>>>;

/// A cheap handle the lab passes around; [`Events::machine`] is the same reporters as the
/// `vm` crate's handle.
#[derive(Clone)]
pub struct Events {
    reporters: Reporters,
    machine: vm::events::Events,
}

/// Hands the machinery's events to the lab's reporters.
struct Forward(Reporters);

impl vm::events::Reporter for Forward {
    fn event(&self, event: &vm::events::Event) {
        let event = Event::Machine(event.clone());
        for r in self.0.iter() {
            r.event(&event);
        }
    }
}

impl Events {
    pub fn new(reporters: Vec<Box<dyn Reporter>>) -> Events {
        let reporters: Reporters = Arc::new(reporters);
        Events {
            machine: vm::events::Events::new(vec![Box::new(Forward(reporters.clone()))]),
            reporters,
        }
    }

    pub fn silent() -> Events {
        Events::new(Vec::new())
    }

    /// The console and nothing else, as the CLI and the tests use it.
    pub fn console() -> Events {
        Events::new(vec![Box::new(ConsoleReporter::new())])
    }

    pub fn emit(&self, event: Event) {
        for r in self.reporters.iter() {
            r.event(&event);
        }
    }

    /// The handle to give the `vm` crate's functions.
    pub fn machine(&self) -> &vm::events::Events {
        &self.machine
    }

    /// Announces a long step; the guard announces its end with the elapsed time.
    pub fn step(&self, target: &str, what: &str) -> vm::events::Step {
        self.machine.step(target, what)
    }

    pub fn note(&self, target: &str, text: String) {
        self.machine.emit(vm::events::Event::Note {
            target: target.into(),
            text,
        });
    }
}

/// Line-oriented progress on stderr with time since the run started: readable in a
/// terminal and in CI logs alike.
#[derive(Default)]
pub struct ConsoleReporter {
    clock: vm::events::ConsoleReporter,
}

impl ConsoleReporter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Reporter for ConsoleReporter {
    fn event(&self, event: &Event) {
        let t = self.clock.clock();
        match event {
            Event::Machine(e) => eprintln!("{}", vm::events::console_line(t, e)),
            Event::TrialStart { name } => eprintln!("[{t:6.1}s] {name} ..."),
            Event::TrialEnd(r) => {
                eprintln!("[{t:6.1}s] {}", r.summary_line());
                if !r.detail.is_empty() && r.outcome.is_bad() {
                    for line in r.detail.lines() {
                        eprintln!("           | {line}");
                    }
                }
            }
        }
    }
}
