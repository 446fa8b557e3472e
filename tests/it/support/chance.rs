//! What the randomized reliability suites share: their size (20 trials, 200 with
//! `ORCHESTRATOR_TEST_LONG=1`), a seed from a variable or the clock (printed by the suite so
//! a failure can be replayed), and SplitMix64 to pick moments and victims from it.

/// Trials of a reliability suite: 20, or 200 with `ORCHESTRATOR_TEST_LONG=1`.
pub(crate) fn reliability_trials() -> usize {
    if std::env::var("ORCHESTRATOR_TEST_LONG").is_ok_and(|v| v == "1") {
        200
    } else {
        20
    }
}

/// The seed in the environment variable `var`, or one taken from the clock.
pub(crate) fn seed_from(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// SplitMix64: small, seedable, good enough to pick moments.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}
