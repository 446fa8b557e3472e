//! Waiting without fixed sleeps: poll a probe until it gives a value, failing the test
//! with what was awaited once the deadline passes.

use std::time::{Duration, Instant};

/// The longest any single wait may take before the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// How long a poll sleeps between two probes.
const INTERVAL: Duration = Duration::from_millis(20);

/// Polls `probe` until it gives a value, or gives `None` once `timeout` has passed (the
/// probe runs at least once, and once more after the deadline).
pub(crate) fn poll_for<T>(timeout: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(timeout, INTERVAL, probe)
}

/// [`poll_for`], sleeping `interval` between two probes (for probes that cost the server
/// something: a run of thousands of steps, every run of the store).
pub(crate) fn poll_every<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Polls `probe` until it gives a value, failing after [`DEADLINE`].
#[track_caller]
pub(crate) fn eventually<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, DEADLINE, probe)
}

/// [`eventually`] with a deadline of its own, for waits known to take longer (or that must
/// end sooner) than [`DEADLINE`].
#[track_caller]
pub(crate) fn eventually_within<T>(
    what: &str,
    timeout: Duration,
    probe: impl FnMut() -> Option<T>,
) -> T {
    match poll_for(timeout, probe) {
        Some(value) => value,
        None => panic!("timed out waiting for {what}"),
    }
}

/// [`eventually_within`], sleeping `interval` between two probes (see [`poll_every`]).
#[track_caller]
pub(crate) fn eventually_every<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    probe: impl FnMut() -> Option<T>,
) -> T {
    match poll_every(timeout, interval, probe) {
        Some(value) => value,
        None => panic!("timed out waiting for {what}"),
    }
}
