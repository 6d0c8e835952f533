#!/bin/sh
# Builds the C loader of kiln images: build.sh x86_64|aarch64 OUTDIR
# -> OUTDIR/kiln-load. $CC overrides the compiler (default: gcc for x86_64,
# aarch64-linux-gnu-gcc for aarch64). See docs/images.md, "The C loader".
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 x86_64|aarch64 OUTDIR" >&2
    exit 2
fi
case "$1" in
x86_64) cc=${CC:-gcc} ;;
aarch64) cc=${CC:-aarch64-linux-gnu-gcc} ;;
*)
    echo "$0: unknown ISA '$1' (x86_64 or aarch64)" >&2
    exit 2
    ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$2"
# $CFLAGS: extra flags (e.g. sanitizers for the mutation test).
# -fPIC and -z nocopyreloc: the loader reaches libc's data (stderr,
# environ) through its GOT, so the process's canonical copies stay in the
# libraries, where images with PC32 imports (gcc -fPIE code reaching stdout)
# are placed within reach; a copy in the loader's executable would lie
# gigabytes away.
# shellcheck disable=SC2086
exec "$cc" -std=c11 -O2 -fPIC -Wl,-z,nocopyreloc ${CFLAGS:-} -Wall -Wextra -Wshadow -Wconversion -Wno-sign-conversion \
    -o "$2/kiln-load" "$here/kiln-load.c" -ldl -lgcc_s
