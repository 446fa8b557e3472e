//! Waiting without fixed sleeps: poll a probe until it gives a value, failing the test
//! with what was awaited once the deadline passes.

use std::time::{Duration, Instant};

/// The longest any single wait may take before the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `probe` until it gives a value, failing after the deadline.
#[track_caller]
pub(crate) fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`eventually`] with a deadline of its own, for waits known to take longer (or that must
/// end sooner) than [`DEADLINE`].
#[track_caller]
pub(crate) fn eventually_within<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
