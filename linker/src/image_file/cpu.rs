//! The CPU features an image requires: what its input objects' GNU
//! property notes say their code needs or uses, and what the host declares
//! ([`crate::LinkOptions::cpu_features`], `kiln image save --cpu-features`).
//! The image header records their union; a load on a CPU without them is
//! refused naming the field and both values.

use object::elf;
use object::read::elf::SectionHeader as _;

use super::format::{self, CPU_AVX, CPU_AVX512F, CPU_X86_64_V2, CPU_X86_64_V3, CPU_X86_64_V4};

/// A set of CPU features an image requires (the image header's bit set).
/// Names are Rust `target_feature` names (`avx2`, `fma`, `bmi1`, `lzcnt`,
/// `avx512f`…) and the x86-64 psABI levels `x86-64-v2`, `x86-64-v3`,
/// `x86-64-v4` (a level: every feature of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CpuFeatures(u64);

/// A CPU feature name [`CpuFeatures::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CPU feature `{name}` (known: {})", format::CPU_FEATURES.join(","))]
pub struct UnknownCpuFeature {
    /// The name as given.
    pub name: String,
}

impl CpuFeatures {
    /// No feature.
    pub const NONE: CpuFeatures = CpuFeatures(0);

    /// The features of a comma-separated list of names (empty items are
    /// ignored; `none` is the empty set).
    pub fn parse(list: &str) -> Result<CpuFeatures, UnknownCpuFeature> {
        let mut bits = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "none" {
                continue;
            }
            let i = format::CPU_FEATURES
                .iter()
                .position(|f| *f == name)
                .ok_or_else(|| UnknownCpuFeature { name: name.into() })?;
            bits |= format::cpu_bit(i);
        }
        Ok(CpuFeatures(bits))
    }

    /// The features of both sets.
    pub fn union(self, other: CpuFeatures) -> CpuFeatures {
        CpuFeatures(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The header bits.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for CpuFeatures {
    /// Comma-separated names, `none` for the empty set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format::feature_names(self.0))
    }
}

/// The header bits one note section of an x86-64 object asks for:
/// `GNU_PROPERTY_X86_ISA_1_NEEDED` and `_USED` (levels v2/v3/v4; the
/// baseline is every x86-64 CPU) and `GNU_PROPERTY_X86_FEATURE_2_NEEDED`
/// and `_USED` (YMM registers: `avx`; ZMM or mask registers: `avx512f`).
/// "Used" counts as required: kiln cannot tell code behind a run-time CPU
/// check from code that always runs. A malformed note records nothing.
pub(crate) fn of_note_section(sh: &elf::SectionHeader64<object::LittleEndian>, data: &[u8]) -> u64 {
    let le = object::LittleEndian;
    let Ok(Some(mut notes)) = sh.notes(le, data) else {
        return 0;
    };
    let mut bits = 0;
    while let Ok(Some(note)) = notes.next() {
        let Some(mut props) = note.gnu_properties(le) else {
            continue;
        };
        while let Ok(Some(p)) = props.next() {
            let Ok(value) = p.data_u32(le) else {
                continue;
            };
            bits |= of_property(p.pr_type().0, value);
        }
    }
    bits
}

/// `GNU_PROPERTY_X86_FEATURE_2_USED` / `_NEEDED` (binutils' elf/common.h;
/// `object` names only the ISA properties).
const FEATURE_2_USED: u32 = 0xc001_0001;
const FEATURE_2_NEEDED: u32 = 0xc000_8001;
const FEATURE_2_YMM: u32 = 1 << 4;
const FEATURE_2_ZMM: u32 = 1 << 5;
const FEATURE_2_MASK: u32 = 1 << 11;

/// The header bits of one x86 GNU property.
fn of_property(pr_type: u32, value: u32) -> u64 {
    let when = |yes: bool, bit: u64| if yes { bit } else { 0 };
    match pr_type {
        t if t == elf::GNU_PROPERTY_X86_ISA_1_NEEDED.0
            || t == elf::GNU_PROPERTY_X86_ISA_1_USED.0 =>
        {
            // A level includes the ones below it (the assembler marks only
            // the levels of the instructions it saw).
            let v4 = value & elf::GNU_PROPERTY_X86_ISA_1_V4 != 0;
            let v3 = v4 || value & elf::GNU_PROPERTY_X86_ISA_1_V3 != 0;
            let v2 = v3 || value & elf::GNU_PROPERTY_X86_ISA_1_V2 != 0;
            when(v2, CPU_X86_64_V2) | when(v3, CPU_X86_64_V3) | when(v4, CPU_X86_64_V4)
        }
        FEATURE_2_USED | FEATURE_2_NEEDED => {
            when(value & FEATURE_2_YMM != 0, CPU_AVX)
                | when(value & (FEATURE_2_ZMM | FEATURE_2_MASK) != 0, CPU_AVX512F)
        }
        _ => 0,
    }
}

/// The features the objects of `graph` that keep live code or data ask for.
pub(crate) fn of_graph(graph: &crate::graph::LinkGraph) -> u64 {
    let mut live = vec![false; graph.objects.len()];
    for b in graph.blocks.iter().filter(|b| b.live) {
        if let Some(o) = b.object.and_then(|o| live.get_mut(o.index())) {
            *o = true;
        }
    }
    graph
        .objects
        .iter()
        .zip(live)
        .filter(|(_, live)| *live)
        .fold(0, |acc, (o, _)| acc | o.cpu_features)
}

/// The bits every note section of the object `data` asks for (tests).
#[cfg(test)]
fn of_object(data: &[u8]) -> u64 {
    use object::read::elf::FileHeader as _;
    let Ok(h) = elf::FileHeader64::<object::LittleEndian>::parse(data) else {
        return 0;
    };
    let Ok(sections) = h.sections(object::LittleEndian, data) else {
        return 0;
    };
    sections
        .iter()
        .fold(0, |acc, sh| acc | of_note_section(sh, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        let f = CpuFeatures::parse("avx2, fma,x86-64-v3").unwrap();
        assert_eq!(f.to_string(), "avx2,x86-64-v3,fma");
        assert_eq!(CpuFeatures::parse("none").unwrap(), CpuFeatures::NONE);
        let e = CpuFeatures::parse("avx2,avx9000").unwrap_err();
        assert_eq!(e.name, "avx9000");
        assert!(
            e.to_string().contains("unknown CPU feature `avx9000`"),
            "{e}"
        );
    }

    #[test]
    fn properties_map_to_bits() {
        let isa = elf::GNU_PROPERTY_X86_ISA_1_NEEDED.0;
        assert_eq!(of_property(isa, 0b0111), CPU_X86_64_V2 | CPU_X86_64_V3);
        assert_eq!(of_property(isa, 0b0001), 0);
        let used = elf::GNU_PROPERTY_X86_ISA_1_USED.0;
        let all = CPU_X86_64_V2 | CPU_X86_64_V3 | CPU_X86_64_V4;
        assert_eq!(of_property(used, 0b1000), all);
        assert_eq!(of_property(FEATURE_2_USED, 0x1 | 0x8 | 0x10), CPU_AVX);
        assert_eq!(of_property(FEATURE_2_USED, 0x20), CPU_AVX512F);
        assert_eq!(of_property(0xc000_0002, 0x3), 0); // FEATURE_1_AND (IBT/SHSTK)
        assert_eq!(of_object(b"not an object"), 0);
    }

    #[test]
    fn levels_need_every_feature() {
        let v2 = CpuFeatures::parse("sse3,ssse3,sse4.1,sse4.2,popcnt,cmpxchg16b").unwrap();
        assert_eq!(format::cpu_levels(v2.bits()), CPU_X86_64_V2);
        let almost = CpuFeatures::parse("sse3,ssse3,sse4.1,sse4.2,popcnt").unwrap();
        assert_eq!(format::cpu_levels(almost.bits()), 0);
    }
}
