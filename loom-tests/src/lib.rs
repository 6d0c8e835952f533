//! Model checks of kiln's protocols, run on the real engine code. They live
//! in `tests/` (this crate has no library code). Under `--cfg kiln_loom`:
//! `engine_models.rs` (readiness of cycles, failure, one materialization,
//! serialized generators, tracker removal racing emit), `lazy_model.rs`
//! (lazy reexports' first call), `generator_queue_model.rs` (a serialized
//! generator's queue advances past lookups that no longer need it),
//! `fast_path_model.rs` (the lock-free lookup path agrees with the actor)
//! and `qualified_model.rs` (the `QualifiedNames` generator: a lookup racing
//! a module's registration and a cancel), and `pool_model.rs` (the worker
//! pool's waits: helping, a stand-in for an awaiting task, a wait too deep
//! to help). Each runs its models through `tests/runner` (loom's builder,
//! preemptions bounded).
//! Under `--cfg kiln_shuttle`: `fast_path_shuttle.rs`, the same fast path
//! with the real Ready index under shuttle's randomized scheduler. The
//! models' sessions dispatch in place (`InPlaceDispatcher`); their
//! concurrency is the threads each model spawns. Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" cargo test -p kiln-loom-tests --release`
//! and `RUSTFLAGS="--cfg kiln_shuttle" cargo test -p kiln-loom-tests --release --test fast_path_shuttle`.
