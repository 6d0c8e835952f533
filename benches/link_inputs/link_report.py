#!/usr/bin/env python3
"""link_report.py - turn benches/link-compare's runs into Markdown tables.

  python3 link_report.py RESULTS.tsv

RESULTS.tsv has one line per run: input, tool (kiln|jitlink|mold|lld), rep,
whole-process wall time in ns (or `TIMEOUT <seconds>` for a run that was
killed), and the path of that run's stderr (kiln's --stats block or
llvm-jitlink's -show-times table; nothing read for mold and lld). Next to it,
`<stderr>.time` holds that run's wall ns, user and system seconds and minor
page faults (benches/link_inputs/rusage_run.py), if measured. Prints three tables of medians:

1. The comparison. "link phase" is, for both tools, the time from object
   bytes in memory to every object linked and finalized (entry point Ready):
     kiln:         `read inputs` (ELF parse + graph build + defining the unit in
                   its dylib, since 2026-11-22 13:00) + `link (entry Ready)`
     llvm-jitlink: `time to load/add object files` + `time to link object files`
   Both rows are summed for llvm-jitlink because JITLink only scans symbol
   tables when objects are added and parses them into LinkGraphs during the
   link, while kiln parses in its read phase: only the sum covers the same
   work in both tools. kiln's own figure (`relocations / s`, prepare + fixup
   phases only) is shown next to relocations / link phase.
2. Each tool's phases (median, min-max), to see where the time goes.
3. The whole process of every tool: wall, user and system time, page faults,
   and kiln's wall over each other tool's (mold and lld write an executable;
   kiln and llvm-jitlink link in memory and do not run the program). mold
   forks by default and its parent exits once the output is written: its
   user/system/faults then miss the child that linked (the --no-fork row has
   them).
"""
import os
import re
import statistics
import sys
from collections import defaultdict

KILN_ROWS = {
    "read": r"^\s*read inputs\s+([\d.]+) ms",
    "prepare": r"^\s*prepare \(.*\)\s+([\d.]+) ms",
    "externals": r"^\s*look up externals\s+([\d.]+) ms",
    "fixup": r"^\s*fixup \+ finalize\s+([\d.]+) ms",
    "link": r"^\s*link \(entry Ready\)\s+([\d.]+) ms",
    "total": r"^\s*total\s+([\d.]+) ms",
    "relocs": r"^\s*relocations\s+(\d+)\s*$",
    "objects": r"^\s*objects linked\s+(\d+)",
    "mrps": r"^\s*relocations / s\s+([\d.]+) M",
}
JITLINK_ROWS = {
    "load": "time to load/add object files",
    "jlink": "time to link object files",
}


def parse_kiln(text, where):
    out = {}
    for key, pat in KILN_ROWS.items():
        m = re.search(pat, text, re.M)
        if not m:
            raise SystemExit(f"{where}: no '{key}' line in kiln's --stats output")
        out[key] = float(m.group(1))
    return out


def parse_jitlink(text, where):
    """Wall-time column (ms) of the first -show-times table's rows."""
    out = {}
    for key, label in JITLINK_ROWS.items():
        for line in text.splitlines():
            if line.rstrip().endswith(label):
                cols = re.findall(r"([\d.]+)\s+\(\s*[\d.]+%\)", line)
                if cols:
                    out[key] = float(cols[-1]) * 1e3  # seconds -> ms; wall is last
                    break
        if key not in out:
            raise SystemExit(f"{where}: no '{label}' row in llvm-jitlink's -show-times output")
    return out


LABELS = {"kiln": "kiln run --noexec", "jitlink": "llvm-jitlink -noexec",
          "mold": "gcc -fuse-ld=mold", "mold-nofork": "gcc -fuse-ld=mold -Wl,--no-fork",
          "lld": "clang -fuse-ld=lld"}
# The aarch64 inputs (name ending in -a64): kiln links them into an image file.
LABELS_A64 = {"kiln": "kiln image save (aarch64)",
              "jitlink": "llvm-jitlink -noexec -triple=aarch64-linux-gnu",
              "mold": "aarch64-linux-gnu-gcc -B/usr/libexec/mold",
              "mold-nofork": "aarch64-linux-gnu-gcc -B/usr/libexec/mold -Wl,--no-fork"}


def label_of(name, tool):
    if name.endswith("-a64") and tool in LABELS_A64:
        return LABELS_A64[tool]
    return LABELS.get(tool, tool)


def whole_process(order, runs, med):
    """Table 3: every tool's whole process, wall / user / system."""
    print()
    print("Whole process, median ms (user, system, page faults: the process and its children):")
    print()
    print("| input | tool | wall | user | system | page faults | kiln wall / this wall |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in order:
        kiln_wall = med(name, "kiln", "wall") if runs[(name, "kiln")]["wall"] else None
        for tool in ("kiln", "jitlink", "mold", "mold-nofork", "lld"):
            r = runs[(name, tool)]
            if not r["wall"]:
                continue
            w = med(name, tool, "wall")
            u = f"{med(name, tool, 'user'):.1f}" if r["user"] else "–"
            sy = f"{med(name, tool, 'sys'):.1f}" if r["sys"] else "–"
            pf = f"{int(med(name, tool, 'faults')):,}" if r["faults"] else "–"
            ratio = f"{kiln_wall / w:.2f}×" if kiln_wall else "–"
            print(f"| {name} | {label_of(name, tool)} | {w:.1f} | {u} | {sy} | {pf} | {ratio} |")


def ms(v):
    return f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def mrate(m):
    """Millions per second, with enough digits to tell small rates apart."""
    return f"{m:.1f} M" if m >= 1 else f"{m:.3f} M"


def spread(vals):
    m = statistics.median(vals)
    digits = 1 if m >= 10 else 2
    return f"{m:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    runs = defaultdict(lambda: defaultdict(list))
    timeouts = {}
    seen_rss = set()
    order = []
    with open(sys.argv[1]) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                raise SystemExit(f"{sys.argv[1]}:{n}: want 5 tab-separated fields")
            name, tool, _rep, wall_ns, err = parts
            if name not in order:
                order.append(name)
            if wall_ns.startswith("TIMEOUT"):
                timeouts[(name, tool)] = int(wall_ns.split()[1])
                continue
            with open(err) as e:
                text = e.read()
            if tool == "kiln":
                rec = parse_kiln(text, err)
            elif tool == "jitlink":
                rec = parse_jitlink(text, err)
            else:
                rec = {}
            rec["wall"] = int(wall_ns) / 1e6
            if os.path.exists(err + ".time"):
                with open(err + ".time") as t:
                    fields = t.read().split()
                if len(fields) == 4:
                    rec["user"] = float(fields[1]) * 1e3
                    rec["sys"] = float(fields[2]) * 1e3
                    rec["faults"] = int(fields[3])
            rss = os.path.join(os.path.dirname(err), f"{tool}.rss")
            if os.path.exists(rss) and (name, tool, "rss") not in seen_rss:
                seen_rss.add((name, tool, "rss"))
                with open(rss) as r:
                    kb = r.read().strip().splitlines()
                if kb and kb[-1].isdigit():
                    rec["rss"] = int(kb[-1]) / 1024
            for k, v in rec.items():
                runs[(name, tool)][k].append(v)
    if not order:
        raise SystemExit(f"{sys.argv[1]}: no runs")
    for (name, tool), t in sorted(timeouts.items()):
        label = label_of(name, tool)
        print(f"Note: {label} was killed after {t} s on {name}; its figures for {name} are missing.")
        print()

    med = lambda name, tool, key: statistics.median(runs[(name, tool)][key])
    print("| input | objects | relocations | kiln link phase | llvm-jitlink link phase | ratio "
          "| kiln relocs/s (link phase) | kiln relocs/s (its --stats) | kiln wall | llvm-jitlink wall | wall ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in order:
        if (name, "kiln") in timeouts and runs[(name, "jitlink")]:
            t = timeouts[(name, "kiln")]
            j = [a + b for a, b in zip(runs[(name, "jitlink")]["load"], runs[(name, "jitlink")]["jlink"])]
            jl, jw = statistics.median(j), med(name, "jitlink", "wall")
            print(f"| {name} | – | – | > {t} s (killed) | {ms(jl)} | < {jl / (t * 1e3):.4f}× | – | – "
                  f"| > {t} s | {ms(jw)} | < {jw / (t * 1e3):.4f}× |")
            continue
        if not runs[(name, "kiln")] or not runs[(name, "jitlink")]:
            continue
        k = [r + l for r, l in zip(runs[(name, "kiln")]["read"], runs[(name, "kiln")]["link"])]
        j = [a + b for a, b in zip(runs[(name, "jitlink")]["load"], runs[(name, "jitlink")]["jlink"])]
        kl, jl = statistics.median(k), statistics.median(j)
        relocs = int(med(name, "kiln", "relocs"))
        kw, jw = med(name, "kiln", "wall"), med(name, "jitlink", "wall")
        print(f"| {name} | {int(med(name, 'kiln', 'objects'))} | {relocs:,} | {ms(kl)} | {ms(jl)} "
              f"| {jl / kl:.2f}× | {mrate(relocs / kl / 1e3)} | {mrate(med(name, 'kiln', 'mrps'))} "
              f"| {ms(kw)} | {ms(jw)} | {jw / kw:.2f}× |")
    print()
    print("Phases, median (min–max) ms:")
    print()
    print("| input | tool | phase | time (ms) |")
    print("|---|---|---|---:|")
    kiln_rows = [("read", "read inputs (parse + graph + define)"), ("prepare", "prepare (prune, GOT, allocate, resolve)"),
                 ("externals", "look up externals"), ("fixup", "fixup + finalize"),
                 ("link", "link (entry Ready)"), ("total", "total (in-process)"), ("wall", "whole process wall"),
                 ("rss", "peak RSS (MB, one extra run)")]
    jl_rows = [("load", "time to load/add object files"), ("jlink", "time to link object files"),
               ("wall", "whole process wall"), ("rss", "peak RSS (MB, one extra run)")]
    for name in order:
        for tool, rows in (("kiln", kiln_rows), ("jitlink", jl_rows)):
            label = "kiln" if tool == "kiln" else "llvm-jitlink"
            for key, what in rows:
                vals = runs[(name, tool)].get(key)
                if vals:
                    print(f"| {name} | {label} | {what} | {spread(vals)} |")
    whole_process(order, runs, med)


if __name__ == "__main__":
    main()
