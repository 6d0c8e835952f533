//! The usual `kiln run` command lines, read without clap. Building clap's
//! model of the whole CLI and matching ~40 arguments against it was
//! ~0.26 M instructions of a ~1.85 M-instruction cache hit; this reads the
//! plain forms only — separate option values, no `=`, no bundling, no
//! option given twice, no value starting with `-` — and leaves everything
//! else (help, errors, every other form) to clap, which reads those lines
//! as this does (`tests::plain_run_lines_read_as_clap_reads_them`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::RunArgs;

/// `kiln run`'s arguments from `argv` (program name first) if it is a
/// plain `kiln run` line; `None` to let clap read it.
pub(crate) fn parse_run(argv: &[OsString]) -> Option<RunArgs> {
    let mut rest = argv.get(1..)?.iter();
    if rest.next()?.to_str()? != "run" {
        return None;
    }
    let mut args = RunArgs::of_inputs(Vec::new());
    let mut entry_given = false;
    while let Some(token) = rest.next() {
        if !token.as_encoded_bytes().starts_with(b"-") {
            args.inputs.push(PathBuf::from(token));
            continue;
        }
        // Options are ASCII: anything else starting with `-` is clap's.
        let t = token.to_str()?;
        let mut value = || {
            let v = rest.next()?;
            (!v.as_encoded_bytes().starts_with(b"-")).then_some(v)
        };
        match t {
            "--" => {
                for a in rest.by_ref() {
                    args.args.push(a.to_str()?.to_string());
                }
            }
            "--cache" if args.cache.is_none() => args.cache = Some(PathBuf::from(value()?)),
            "--entry" if !entry_given => {
                args.entry = value()?.to_str()?.to_string();
                entry_given = true;
            }
            "-l" => args.libs.push(value()?.to_str()?.to_string()),
            "-L" => args.lib_dirs.push(PathBuf::from(value()?)),
            "--stats" => set_once(&mut args.stats)?,
            "--noexec" => set_once(&mut args.noexec)?,
            "--lazy" => set_once(&mut args.lazy)?,
            "--gdb" => set_once(&mut args.gdb)?,
            "--perf-map" => set_once(&mut args.perf_map)?,
            "--jitdump" => set_once(&mut args.jitdump)?,
            _ => return None,
        }
    }
    (!args.inputs.is_empty()).then_some(args)
}

/// A flag: given twice is clap's error to report.
fn set_once(flag: &mut bool) -> Option<()> {
    (!*flag).then(|| *flag = true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn argv(line: &str) -> Vec<OsString> {
        std::iter::once("kiln")
            .chain(line.split(' ').filter(|w| !w.is_empty()))
            .map(OsString::from)
            .collect()
    }

    /// Every line this reads, clap reads to the same arguments; the others
    /// are left to clap.
    #[test]
    fn plain_run_lines_read_as_clap_reads_them() {
        for line in [
            "run a.o",
            "run a.o b.o -- x y",
            "run --cache /tmp/c -l m -l dl main.o obj/a.o obj/b.o -- script.lua",
            "run -L lib -l lua main.o --entry start --stats",
            "run --noexec --lazy --gdb --perf-map --jitdump a.o",
            "run a.kimg -- --cache -l --",
            "run run.o --",
        ] {
            let quick = parse_run(&argv(line)).unwrap_or_else(|| panic!("reads {line:?}"));
            let clap = match crate::Cli::try_parse_from(argv(line)) {
                Ok(crate::Cli {
                    command: Some(crate::Command::Run(a)),
                }) => a,
                other => panic!("clap reads {line:?} as {other:?}"),
            };
            assert_eq!(format!("{quick:?}"), format!("{clap:?}"), "{line}");
        }
        for line in [
            "",
            "run",
            "run --help",
            "run -lm a.o",
            "run --cache=/tmp/c a.o",
            "run --threads 2 a.o",
            "run --cache a --cache b a.o",
            "run --stats --stats a.o",
            "run --entry -x a.o",
            "run -l",
            "run - a.o",
            "image info a.kimg",
            "run --stats",
        ] {
            assert!(parse_run(&argv(line)).is_none(), "{line:?} is clap's");
        }
        // Paths need not be UTF-8; an unknown option that is not is clap's.
        use std::os::unix::ffi::OsStrExt as _;
        let odd = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
        let mut line = argv("run");
        line.push(odd(b"caf\xe9.o"));
        let quick = parse_run(&line).expect("reads a non-UTF-8 path");
        match crate::Cli::try_parse_from(&line) {
            Ok(crate::Cli {
                command: Some(crate::Command::Run(a)),
            }) => assert_eq!(format!("{quick:?}"), format!("{a:?}")),
            other => panic!("clap reads a non-UTF-8 path as {other:?}"),
        }
        line.push(odd(b"-\xe9"));
        assert!(parse_run(&line).is_none());
    }
}
