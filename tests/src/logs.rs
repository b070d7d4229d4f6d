//! Log lines captured from this thread's tracing events, and the check an outage test makes on
//! them.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::subscriber::DefaultGuard;

/// What tracing wrote on this thread since [`Logs::capture`], until this is dropped. A test that
/// reads the consumers' lines runs every task on its own thread (`#[tokio::test]`, or
/// `#[tokio::test(flavor = "current_thread")]`), so their events reach this subscriber.
///
/// ```no_run
/// # async fn f() {
/// let logs = millrace_tests::Logs::capture("millrace=info");
/// let mark = logs.mark();
/// // … an outage …
/// logs.wait_for("reading from the server resumed", std::time::Duration::from_secs(20)).await;
/// assert_eq!(logs.count_since(mark, "reading from the server stopped"), 1);
/// # }
/// ```
pub struct Logs {
    text: Sink,
    _guard: DefaultGuard,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Logs({} lines)", self.mark())
    }
}

/// The bytes written so far.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("a writer panicked"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures the events `filter` lets through (an env-filter directive: `info`,
    /// `millrace=info`, `trace`), without colours.
    pub fn capture(filter: &str) -> Logs {
        let text = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer({
                let text = text.clone();
                move || text.clone()
            })
            .finish();
        Logs {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything captured.
    pub fn text(&self) -> String {
        let text = self.text.0.lock().expect("no writer panicked");
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The captured lines.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// A place in the log: [`since`](Self::since) it gives the lines written after now.
    pub fn mark(&self) -> usize {
        self.lines().len()
    }

    /// The lines written after `mark`.
    pub fn since(&self, mark: usize) -> Vec<String> {
        self.lines().split_off(mark)
    }

    /// How many lines written after `mark` contain `text`.
    pub fn count_since(&self, mark: usize, text: &str) -> usize {
        self.since(mark).iter().filter(|l| l.contains(text)).count()
    }

    /// Waits until a line contains `text`; panics after `timeout`.
    pub async fn wait_for(&self, text: &str, timeout: Duration) {
        millrace_testkit::eventually(timeout, &format!("a log line with `{text}`"), || {
            let found = self.lines().iter().any(|l| l.contains(text));
            async move { found }
        })
        .await;
    }
}

/// `n` stream names, one tenant each, in their own hash tag: `tenant:{0}:events` ….
pub fn tenant_streams(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant:{{{i}}}:events")).collect()
}

/// Checks the lines logged over one outage of one server (or cluster node) whose reads served
/// `streams` streams: no read was taken for a cut-off reply (`mid-reply`), `stopped` was logged
/// once and `reading from the server resumed` once, with `streams=<streams>`, and fewer WARN
/// lines than streams (the outage is told for the server, not per stream).
pub fn assert_one_outage(lines: &[String], stopped: &str, streams: usize) {
    let count = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count("mid-reply"), 0, "{lines:#?}");
    assert_eq!(count(stopped), 1, "{lines:#?}");
    assert_eq!(count("reading from the server resumed"), 1, "{lines:#?}");
    let resumed = lines
        .iter()
        .find(|l| l.contains("reading from the server resumed"))
        .expect("counted above");
    assert!(
        resumed.contains(&format!("streams={streams}")),
        "{streams} streams: {resumed}"
    );
    let warnings = count(" WARN ");
    assert!(
        warnings < streams.max(2),
        "{warnings} WARN lines for one outage of one server with {streams} streams: {lines:#?}"
    );
}
