//! The CPU features cranelift code needs, as kiln image header features.

use cranelift_codegen::isa::TargetIsa;
use kiln_linker::image_file::{CpuFeatures, UnknownCpuFeature};

/// The CPU features code compiled for `isa` may use (its enabled `has_*`
/// ISA flags), for [`kiln_linker::LinkOptions::cpu_features`] when that
/// code is saved in an image: loading the image on a CPU without them is
/// then refused instead of faulting. An ISA flag kiln has no header bit for
/// is an error (not left out); ISAs other than x86-64 need none.
pub fn required_cpu_features(isa: &dyn TargetIsa) -> Result<CpuFeatures, UnknownCpuFeature> {
    if isa.name() != "x64" {
        return Ok(CpuFeatures::NONE);
    }
    let mut all = CpuFeatures::NONE;
    for flag in isa.isa_flags() {
        let Some(name) = flag.name.strip_prefix("has_") else {
            continue;
        };
        if flag.as_bool() != Some(true) {
            continue;
        }
        let name = match name {
            "sse41" => "sse4.1",
            "sse42" => "sse4.2",
            "avx_vnni" => "avxvnni",
            other => other,
        };
        all = all.union(CpuFeatures::parse(name)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use cranelift_codegen::settings::{self, Configurable as _};

    use super::*;

    #[test]
    fn enabled_isa_flags_become_header_features() {
        let mut b = cranelift_codegen::isa::lookup_by_name("x86_64-unknown-linux-gnu").unwrap();
        for f in [
            "has_sse3",
            "has_ssse3",
            "has_sse41",
            "has_sse42",
            "has_avx",
            "has_avx2",
            "has_fma",
        ] {
            b.enable(f).unwrap();
        }
        let isa = b.finish(settings::Flags::new(settings::builder())).unwrap();
        let f = required_cpu_features(&*isa).unwrap();
        assert_eq!(f.to_string(), "sse4.2,avx,avx2,sse3,ssse3,sse4.1,fma");
    }

    #[test]
    fn the_native_isa_is_recorded_whole() {
        let b = cranelift_native::builder().unwrap();
        let isa = b.finish(settings::Flags::new(settings::builder())).unwrap();
        // This CPU has every flag cranelift detects: each has a bit.
        let f = required_cpu_features(&*isa).unwrap();
        assert!(f.to_string().contains("sse4.1"), "{f}");
    }
}
