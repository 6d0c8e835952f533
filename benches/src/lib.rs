//! Shared workload definitions for kiln's benchmarks.
