//! The CLI's contracts: encoded path segments, missing or empty project directories, API errors shown with the same exit codes, closed pipes, output formats, completions and help.
