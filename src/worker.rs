//! A thread of its own for one kind of blocking work, for the whole life of its owner: jobs
//! run one after another, off tokio's workers like a `spawn_blocking` each, but always on the
//! same thread. With `spawn_blocking` each job landed on whichever blocking thread was idle (six
//! of them in a backlog), each with cold caches and its own allocator heap holding memory. The
//! core and the flushes run on one each (`daemon.rs`), the model fits on a third
//! (`model/trainer.rs`). A worker's thread ends when the worker is dropped.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// What [`catch_expected`] runs on this thread now, if anything.
    static EXPECTED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs `f` and catches a panic that is expected of it: a library that panics on input it
/// cannot handle, where the caller has a fallback (linfa's LOBPCG on a near-singular history).
/// With [`install_panic_hook`] in place such a panic is logged at debug level as `what`, instead
/// of being printed as a crash. The caller vouches that nothing `f` leaves half-done is used.
pub fn catch_expected<R>(what: &'static str, f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let outer = EXPECTED.replace(Some(what));
    let result = catch_unwind(AssertUnwindSafe(f));
    EXPECTED.set(outer);
    result
}

/// The message a panic was raised with (`panic!` with a literal or a formatted string), if it
/// has one: for the log line or error that reports a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Installs the process's panic hook: a panic inside [`catch_expected`] is one line of debug
/// log, without a backtrace; every other panic goes to the hook that was in place (Rust's own
/// prints it, with a backtrace when `RUST_BACKTRACE` asks). Printing a backtrace loads the
/// binary's symbols and keeps them: 38 MiB of resident memory for the rest of the run, for a
/// panic that was handled.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match EXPECTED.get() {
        Some(what) => tracing::debug!(what, panic = %info, "expected panic caught; its fallback runs"),
        None => previous(info),
    }));
}

/// A thread that runs jobs one after another.
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Worker {
    pub fn start(name: &str) -> std::io::Result<Worker> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            for job in queue {
                job();
            }
        })?;
        Ok(Worker { jobs })
    }

    /// Starts `f` on the thread; the job's result is what it returns. A panic in it is a bug:
    /// it is passed on where the job is awaited, and the daemon ends (systemd restarts it).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Job<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        // The thread lives as long as `self`, and a job never ends it: a panic is caught.
        if self.jobs.send(job).is_err() {
            unreachable!("a worker thread ended while its owner runs");
        }
        Job(result)
    }
}

/// The result of a job on a [`Worker`], to come.
pub struct Job<T>(tokio::sync::oneshot::Receiver<std::thread::Result<T>>);

impl<T> std::future::Future for Job<T> {
    type Output = T;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match std::pin::Pin::new(&mut self.0).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(Ok(value))) => std::task::Poll::Ready(value),
            std::task::Poll::Ready(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            std::task::Poll::Ready(Err(_)) => unreachable!("a worker thread dropped a job without running it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expected_panic_is_caught_and_the_marker_is_cleared_after_it() {
        install_panic_hook();
        let outer = catch_expected("outer", || {
            let inner = catch_expected("inner", || -> u32 { panic!("linalg gave up") });
            assert!(inner.is_err());
            // Back in the outer scope: its marker again.
            assert_eq!(EXPECTED.get(), Some("outer"));
            7
        });
        assert_eq!(outer.ok(), Some(7));
        let literal = catch_expected("literal", || panic!("gave up")).unwrap_err();
        assert_eq!(panic_message(&*literal), Some("gave up"));
        let formatted = catch_expected("formatted", || panic!("gave up after {} tries", 3)).unwrap_err();
        assert_eq!(panic_message(&*formatted), Some("gave up after 3 tries"));
        let other = catch_expected("other", || std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_message(&*other), None);
        assert_eq!(EXPECTED.get(), None, "a later panic on this thread is not taken for an expected one");
    }
}
