//! kiln-engine: the concurrent materialization engine.
