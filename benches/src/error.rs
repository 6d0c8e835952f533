//! Errors of the benchmark harness.

use thiserror::Error;

/// A command-line error (the program exits with status 2, like the peer).
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// No workload name was given.
    #[error("missing workload name (w1..w8)")]
    MissingWorkload,
    /// The workload name is not one of w1..w8.
    #[error("unknown workload `{0}` (expected w1..w8)")]
    UnknownWorkload(String),
    /// An argument clap could not take (a malformed argument or value), with
    /// clap's explanation.
    #[error("{0}")]
    Invalid(String),
    /// `--help` or `--version` was asked for: the text to print.
    #[error("{0}")]
    Help(String),
    /// The key is not an option of the peer benchmark.
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    /// The option exists in the peer but has no meaning for kiln.
    #[error("option --{0} is specific to the ORC peer and does not apply to kiln")]
    NotApplicable(String),
    /// The value of an option is invalid.
    #[error("bad value `{value}` for --{key}: expected {expected}")]
    BadValue {
        /// Option name without the leading dashes.
        key: String,
        /// The value as given.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
}

impl UsageError {
    pub(crate) fn bad(key: &str, value: &str, expected: &'static str) -> Self {
        UsageError::BadValue {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        }
    }
}

/// A failure while running a workload (the program exits with status 1).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The engine returned an error.
    #[error("{workload}: engine error during {during}: {message}")]
    Engine {
        /// The workload (`w1`..`w8`).
        workload: &'static str,
        /// The operation that failed (e.g. "define", "lookup").
        during: String,
        /// The engine's error, rendered.
        message: String,
    },
    /// A result did not match what the workload definition requires.
    #[error("{workload}: check failed: {what}")]
    Check {
        /// The workload (`w1`..`w8`).
        workload: &'static str,
        /// What was expected and what was found.
        what: String,
    },
    /// The workload's parameters are inconsistent.
    #[error("{workload}: invalid parameters: {what}")]
    Params {
        /// The workload (`w1`..`w8`).
        workload: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A benchmark thread panicked.
    #[error("{workload}: benchmark thread {thread} panicked: {message}")]
    ThreadPanicked {
        /// The workload (`w1`..`w8`).
        workload: &'static str,
        /// Index of the thread.
        thread: usize,
        /// The panic payload, if it was a string.
        message: String,
    },
}

impl BenchError {
    pub(crate) fn check(workload: &'static str, what: impl Into<String>) -> Self {
        BenchError::Check {
            workload,
            what: what.into(),
        }
    }
}
