//! "Await the event, never sleep a fixed time" helpers.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`eventually`] re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Blocks the current thread until `f` returns `true`, re-checking every
/// [`POLL_INTERVAL`] (~20 ms).
///
/// `f` is called at least once, even with a zero `timeout`.
///
/// # Panics
///
/// Panics with a message naming `what` if `f` has not returned `true` after
/// `timeout`.
///
/// ```
/// use std::time::Duration;
/// let start = std::time::Instant::now();
/// millrace_testkit::wait_until(Duration::from_secs(5), "50 ms to pass", || {
///     start.elapsed() >= Duration::from_millis(50)
/// });
/// ```
#[track_caller]
pub fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Asynchronously waits until the future returned by `f` resolves to `true`,
/// re-checking every [`POLL_INTERVAL`] (~20 ms). Needs a Tokio runtime with
/// the time driver enabled.
///
/// A single check that hangs past the deadline counts as a timeout too, so a
/// condition that awaits a dead connection cannot block the test forever.
///
/// # Panics
///
/// Panics with a message naming `what` if no check returned `true` within
/// `timeout`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// let calls = AtomicUsize::new(0);
/// millrace_testkit::eventually(Duration::from_secs(5), "the third call", || async {
///     calls.fetch_add(1, Ordering::SeqCst) >= 2
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_elapsed) => {
                panic!("timed out after {timeout:?} waiting for {what} (the last check was still pending)")
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep_until((now + POLL_INTERVAL).min(deadline)).await;
    }
}
