//! How every loom model file runs its models: loom's builder with a
//! preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` sets one (more
//! explodes the schedules of three-thread models past CI's time).

/// loom's model builder, bounded.
pub(crate) fn builder() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder
}

/// Runs `f` in every interleaving [`builder`] allows.
#[allow(dead_code)] // files that also count interleavings call `builder`
pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
    builder().check(f);
}
