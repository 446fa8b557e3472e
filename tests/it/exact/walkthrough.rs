//! The usage guide's walkthrough in a fresh `init` project: schemas that resolve, triggers named after what they trigger, a data directory per environment, logs without escapes or duplicates.
