//! Progress of the long steps (downloads, image builds, boots, restores) as events;
//! reporters only consume them. Keeps progress printing out of the machinery. The lab's
//! trial events wrap these (`lab::events`); nothing here knows of trials.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Event {
    /// A long step started (download, mmdebstrap, boot, snapshot, trial).
    StepStart {
        target: String,
        what: String,
    },
    StepEnd {
        target: String,
        what: String,
        elapsed: Duration,
    },
    Note {
        target: String,
        text: String,
    },
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

/// A cheap handle the engine passes around.
#[derive(Clone)]
pub struct Events {
    reporters: Arc<Vec<Box<dyn Reporter>>>,
}

impl Events {
    pub fn new(reporters: Vec<Box<dyn Reporter>>) -> Events {
        Events {
            reporters: Arc::new(reporters),
        }
    }

    pub fn silent() -> Events {
        Events::new(Vec::new())
    }

    pub fn emit(&self, event: Event) {
        for r in self.reporters.iter() {
            r.event(&event);
        }
    }

    /// Announces a step; the guard announces its end with the elapsed time.
    pub fn step(&self, target: &str, what: &str) -> Step {
        self.emit(Event::StepStart {
            target: target.into(),
            what: what.into(),
        });
        Step {
            events: self.clone(),
            target: target.into(),
            what: what.into(),
            started: Instant::now(),
            done: false,
        }
    }
}

pub struct Step {
    events: Events,
    target: String,
    what: String,
    started: Instant,
    done: bool,
}

impl Step {
    pub fn done(mut self) -> Duration {
        self.done = true;
        let elapsed = self.started.elapsed();
        self.events.emit(Event::StepEnd {
            target: self.target.clone(),
            what: self.what.clone(),
            elapsed,
        });
        elapsed
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.done {
            self.events.emit(Event::Note {
                target: self.target.clone(),
                text: format!(
                    "{} failed after {:.1} s",
                    self.what,
                    self.started.elapsed().as_secs_f64()
                ),
            });
        }
    }
}

/// Line-oriented progress on stderr with time since the run started: readable in a
/// terminal and in CI logs alike.
pub struct ConsoleReporter {
    started: Instant,
}

impl ConsoleReporter {
    pub fn new() -> Self {
        ConsoleReporter {
            started: Instant::now(),
        }
    }
}

impl Default for ConsoleReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleReporter {
    /// Seconds since the run started, as every console line begins.
    pub fn clock(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The console line of `event` at `t` seconds into the run.
pub fn console_line(t: f64, event: &Event) -> String {
    match event {
        Event::StepStart { target, what } => format!("[{t:6.1}s] {target}: {what} ..."),
        Event::StepEnd {
            target,
            what,
            elapsed,
        } => format!(
            "[{t:6.1}s] {target}: {what} done in {:.1} s",
            elapsed.as_secs_f64()
        ),
        Event::Note { target, text } => format!("[{t:6.1}s] {target}: {text}"),
    }
}

impl Reporter for ConsoleReporter {
    fn event(&self, event: &Event) {
        eprintln!("{}", console_line(self.clock(), event));
    }
}
