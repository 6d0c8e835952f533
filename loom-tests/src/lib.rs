//! Loom models of kiln's engine protocols live in `tests/`; this crate has no library code.
