#!/usr/bin/env python3
"""internal_to_hidden.py - rewrite STV_INTERNAL symbols as STV_HIDDEN in ELF64 objects, in place.

  python3 internal_to_hidden.py a.o b.o ...

Lua 5.4 marks its internal functions `__attribute__((visibility("internal")))`
(LUAI_FUNC in luaconf.h). LLVM 22's JITLink ELF reader rejects that visibility
("Unrecognized symbol visibility 1"), so llvm-jitlink cannot link gcc's Lua
objects as they are. For a static link, internal and hidden mean the same thing
(the symbol stays inside the linked image); internal only adds a promise that
it is never called from outside, which no linker here uses. Only the
visibility bits of st_other change: code, relocations and sizes are gcc's.
Prints how many symbols changed per file.
"""
import struct
import sys

STV_INTERNAL, STV_HIDDEN = 1, 2
SHT_SYMTAB = 2


def patch(path):
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"{path}: not a little-endian ELF64 file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    changed = 0
    for i in range(shnum):
        sh = shoff + i * shentsize
        sh_type = struct.unpack_from("<I", data, sh + 4)[0]
        if sh_type != SHT_SYMTAB:
            continue
        off, size, _link, _info, _align, entsize = struct.unpack_from("<QQIIQQ", data, sh + 0x18)
        if entsize == 0 or off + size > len(data):
            raise SystemExit(f"{path}: malformed symbol table in section {i}")
        for s in range(off, off + size, entsize):
            other = data[s + 5]
            if other & 3 == STV_INTERNAL:
                data[s + 5] = (other & ~3) | STV_HIDDEN
                changed += 1
    with open(path, "wb") as fh:
        fh.write(data)
    return changed


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    total = 0
    for p in sys.argv[1:]:
        total += patch(p)
    print(f"internal_to_hidden: {total} symbols in {len(sys.argv) - 1} objects", file=sys.stderr)


if __name__ == "__main__":
    main()
