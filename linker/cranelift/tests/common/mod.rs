//! The crate's shared test kit.
#![allow(dead_code, reason = "each test file uses part of the kit")]

#[allow(unreachable_pub, reason = "shared with the W9 bench, which uses it as a module of its own")]
pub mod program;

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::default_libcall_names;
use kiln_cranelift::{KilnBuilder, KilnModule};

/// A cranelift-jit module with `host_mix`.
pub fn cranelift_jit() -> JITModule {
    let mut builder = JITBuilder::new(default_libcall_names()).expect("JITBuilder");
    builder.symbol("host_mix", program::host_mix as *const u8);
    JITModule::new(builder)
}

/// A kiln-cranelift module with `host_mix` (`pic`: `is_pic = true`).
pub fn kiln(pic: bool) -> KilnModule {
    let flags: &[(&str, &str)] = if pic { &[("is_pic", "true")] } else { &[] };
    let mut builder = KilnBuilder::with_flags(flags, default_libcall_names()).expect("builder");
    builder.symbol("host_mix", program::host_mix as *const u8).threads(2);
    builder.build().expect("KilnModule")
}
