//! Runs, reports and artifacts: from-failed re-runs, reports with the final status, artifacts kept per run, JUnit totals equal to the run's, read by a JUnit reader.
