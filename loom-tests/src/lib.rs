//! Loom models of kiln's protocols, run on the real engine code built with
//! `--cfg kiln_loom`. They live in `tests/` (this crate has no library
//! code): `engine_models.rs` (readiness of cycles, failure, one
//! materialization, serialized generators, tracker removal racing emit) and
//! `lazy_model.rs` (lazy reexports' first call). The models' sessions
//! dispatch in place (`InPlaceDispatcher`); their concurrency is the loom
//! threads each model spawns. Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" cargo test -p kiln-loom-tests --release`.
