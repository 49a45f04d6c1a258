//! Connection workers: one single-threaded tokio runtime per core, each with its own
//! reactor, connections handed out round-robin.
//!
//! Measured with `cargo xtask bench echo` on 2 cores and 16 connections: one
//! multi-threaded runtime (a single epoll driver shared by its workers) reached 0.85-0.88x
//! of a blocking thread-per-connection echo, separate reactors 0.88-0.90x (this machine is
//! noisy: the difference is small).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` worker threads (at least one), each driving its own runtime forever.
    /// They end with the process.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("echo-worker-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `task` on the next worker. The task must create its I/O objects itself, so they
    /// register with that worker's reactor.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}
