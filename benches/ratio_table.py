#!/usr/bin/env python3
"""Render kiln-vs-ORC ratio tables from the JSON lines of orc_bench and
peer-workloads (one JSON object per line, the schema of the peer README).

Usage:
  ratio_table.py ORC.jsonl KILN.jsonl [--plan plan.tsv] [--env env.txt]

With --plan (written by benches/compare), line i of both files is row i of
the plan (a tab-separated file: label, note); a line may be an error
placeholder {"workload":..., "args":..., "error":...}. Without --plan, rows
are paired by (workload, params), ignoring kiln-only params.

Ratio = kiln ops/s / ORC ops/s (= ORC median wall / kiln median wall); the
targets are checked on it. "CPU ratio" = ORC / kiln median process CPU time
of the timed phase: on a busy machine it is the steadier of the two for
single-threaded (in-place) rows.
"""
import argparse
import json
import math
import sys

KILN_ONLY_PARAMS = {"pool_threads"}

# (workload, predicate on params, minimum ratio, description) -- the targets
# of docs/performance.md, checked on in-place rows.
TARGETS = [
    ("w1", lambda p: True, 6.0, ">= 6x"),
    ("w3", lambda p: p.get("n") == 10000, 10.0, ">= 10x"),
    ("w4", lambda p: p.get("n") == 10000, 100.0, ">= 100x"),
    ("w5", lambda p: p.get("n") == 10000, 100.0, ">= 100x"),
    ("w6", lambda p: True, 5.0, ">= 5x"),
]


def fmt_rate(x):
    if x is None:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k/s"
    return f"{x:.1f}/s"


def fmt_s(x):
    if x is None:
        return "n/a"
    if x >= 1:
        return f"{x:.3f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.2f} ms"
    return f"{x * 1e6:.1f} us"


def fmt_ratio(r):
    if r is None:
        return "n/a"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def load_lines(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def key(d):
    p = {k: v for k, v in d.get("params", {}).items() if k not in KILN_ONLY_PARAMS}
    return (d.get("workload"), json.dumps(p, sort_keys=True))


def ok(d):
    return d is not None and "error" not in d and "skipped" not in d


def config(d):
    p = d.get("params", {})
    w = d.get("workload")
    if w == "w1":
        s = f"N={p['n']}, B={p['b']}"
    elif w == "w2":
        s = f"{p['libs']}x{p['per_lib']} syms, {p['lookups']} lookups, B={p['b']}"
    elif w in ("w3", "w4", "w5"):
        s = f"N={p['n']}, {p['libs']} JD"
        if w == "w5":
            s += f", deps={p['deps']}, seed={p['seed']}"
    elif w == "w6":
        s = f"N={p['n']}, B=1"
    elif w == "w7":
        s = f"T={p['threads']} x {p['per_thread']}, B=1"
    elif w == "w8":
        s = f"{p.get('lazy', '?')} API, {p['n']} entries"
    else:
        s = json.dumps(p)
    disp = p.get("dispatcher", "?")
    if "pool_threads" in p:
        disp += f" (kiln pool {p['pool_threads']})"
    return f"{s}, {disp}"


def target_for(d):
    p = d.get("params", {})
    if p.get("dispatcher") != "inplace":
        return None
    for w, pred, minimum, text in TARGETS:
        if d.get("workload") == w and pred(p):
            return minimum, text
    return None


def rss(d):
    return f"{d['peak_rss_kb'] / 1024:.0f}" if ok(d) and "peak_rss_kb" in d else "n/a"


def load(d):
    if not ok(d):
        return "?"
    return f"{d.get('loadavg_1m_start', -1):.2f}"


def describe(d, side):
    if d is None:
        return f"{side}: not run"
    if "skipped" in d:
        return f"{side}: {d['skipped']}"
    if "error" in d:
        return f"{side} error: {d['error'].strip()}".replace("|", "\\|")
    return ""


def graph_notes(d):
    if not ok(d) or d.get("workload") not in ("w3", "w4", "w5"):
        return ""
    s = f"first MU #{int(d['first_materialized_index'])}, max concurrent {int(d['max_concurrent_materialize'])}"
    if "emits_after_deps_emitted" in d:
        s += f", emits after deps {int(d['emits_after_deps_emitted'])}/{int(d['ops'])}"
    return s


def w8_notes(o, k):
    """First-call and steady-state costs of a W8 row, ORC / kiln."""
    def side(d):
        if not ok(d) or d.get("workload") != "w8":
            return None
        return d
    o, k = side(o), side(k)
    if not (o or k):
        return ""
    def val(d, key, fmt):
        return fmt.format(d[key]) if d and key in d else "n/a"
    return ("first call " + val(o, "first_call_us", "{:.2f}") + " / " + val(k, "first_call_us", "{:.2f}") + " us; "
            "steady rr " + val(o, "steady_rr_call_ns", "{:.1f}") + " / " + val(k, "steady_rr_call_ns", "{:.1f}")
            + " ns (direct " + val(o, "direct_rr_call_ns", "{:.1f}") + " / " + val(k, "direct_rr_call_ns", "{:.1f}") + "); "
            "steady hot " + val(o, "steady_hot_call_ns", "{:.2f}") + " / " + val(k, "steady_hot_call_ns", "{:.2f}")
            + " ns (direct " + val(o, "direct_hot_call_ns", "{:.2f}") + " / " + val(k, "direct_hot_call_ns", "{:.2f}") + ")")


def w8_targets(o, k):
    """Issue 4's W8 targets: first call <= 2 us; steady state within 10% of ORC's stub."""
    parts = []
    fc = k.get("first_call_us")
    if fc is not None:
        parts.append(f"first call <= 2 us: {'met' if fc <= 2.0 else '**missed**'}")
    if ok(o):
        worst = max(k["steady_rr_call_ns"] / o["steady_rr_call_ns"], k["steady_hot_call_ns"] / o["steady_hot_call_ns"])
        parts.append(f"steady <= 1.1x ORC: {'met' if worst <= 1.1 else '**missed**'} ({worst:.2f}x)")
    return "; ".join(parts)


def row_label(o, k):
    d = o if ok(o) else k if ok(k) else (o or k or {})
    name = d.get("name", d.get("workload", "?")).split(" (")[0]
    cfg = config(d) if "params" in d else d.get("args", "")
    return name, cfg, d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("orc", help="orc_bench JSON lines")
    ap.add_argument("kiln", help="peer-workloads JSON lines")
    ap.add_argument("--plan", help="plan.tsv from benches/compare: pair rows by line number")
    ap.add_argument("--env", help="env.txt to print above the table")
    a = ap.parse_args()
    plan, env, rest = a.plan, a.env, [a.orc, a.kiln]
    orc_rows = load_lines(rest[0])
    kiln_rows = load_lines(rest[1])

    notes_by_row = []
    if plan:
        with open(plan) as f:
            for line in f:
                line = line.rstrip("\n")
                if line:
                    parts = line.split("\t")
                    notes_by_row.append(parts[1] if len(parts) > 1 else "")
        n = max(len(orc_rows), len(kiln_rows), len(notes_by_row))
        pairs = [
            (orc_rows[i] if i < len(orc_rows) else None,
             kiln_rows[i] if i < len(kiln_rows) else None,
             notes_by_row[i] if i < len(notes_by_row) else "")
            for i in range(n)
        ]
    else:
        by_key = {key(d): d for d in kiln_rows if ok(d)}
        used = set()
        pairs = []
        for o in orc_rows:
            k = by_key.get(key(o))
            if k is not None:
                used.add(key(o))
            pairs.append((o, k, ""))
        for d in kiln_rows:
            if ok(d) and key(d) not in used:
                pairs.append((None, d, ""))

    if env:
        with open(env) as f:
            print("```")
            print(f.read().rstrip())
            print("```")
            print()

    print("| # | Workload | Config | ORC median wall | kiln median wall | ORC ops/s | kiln ops/s "
          "| kiln/ORC | target | CPU ratio | peak RSS MiB ORC / kiln | load 1m ORC / kiln | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    missed = []
    for idx, (o, k, note) in enumerate(pairs, 1):
        name, cfg, d = row_label(o, k)
        ratio = None
        if ok(o) and ok(k) and o["ops_per_sec"] > 0:
            ratio = k["ops_per_sec"] / o["ops_per_sec"]
        cpu_ratio = None
        if ok(o) and ok(k) and (k.get("cpu_s") or 0) > 0 and (o.get("cpu_s") or 0) > 0:
            cpu_ratio = o["cpu_s"] / k["cpu_s"]
        tgt = target_for(d) if "params" in d else None
        tgt_txt = ""
        if tgt:
            minimum, text = tgt
            if ratio is None:
                tgt_txt = f"{text}: n/a"
            elif ratio >= minimum:
                tgt_txt = f"{text}: met"
            else:
                tgt_txt = f"{text}: **missed**"
                missed.append(f"row {idx} ({name}, {cfg}): {fmt_ratio(ratio)}, target {text}")
        notes = [x for x in (note, describe(o, "ORC") if not ok(o) else "",
                             describe(k, "kiln") if not ok(k) else "") if x]
        if ok(o) and ok(k) and o.get("reps") != k.get("reps"):
            notes.append(f"reps ORC {o.get('reps')} / kiln {k.get('reps')}")
        w8 = w8_notes(o, k)
        if w8:
            notes.append(w8)
            if ok(k) and d.get("params", {}).get("dispatcher") == "inplace":
                verdict = w8_targets(o, k)
                tgt_txt = verdict
                if "missed" in verdict:
                    missed.append(f"row {idx} ({name}, {cfg}): {verdict}")
        gn = graph_notes(k)
        if gn:
            notes.append("kiln " + gn)
        gn = graph_notes(o)
        if gn:
            notes.append("ORC " + gn)
        print(f"| {idx} | {name} | {cfg} | {fmt_s(o['wall_s']) if ok(o) else 'n/a'} | "
              f"{fmt_s(k['wall_s']) if ok(k) else 'n/a'} | {fmt_rate(o['ops_per_sec']) if ok(o) else 'n/a'} | "
              f"{fmt_rate(k['ops_per_sec']) if ok(k) else 'n/a'} | {fmt_ratio(ratio)} | {tgt_txt} | {fmt_ratio(cpu_ratio)} | "
              f"{rss(o)} / {rss(k)} | {load(o)} / {load(k)} | {'; '.join(notes)} |")

    # Secondary phases (untimed in the main table): define, warm-up,
    # re-lookup, second pass, teardown; and CPU time of the timed phase.
    main_keys = {"wall_s", "cpu_s", "wall_s_min", "wall_s_max"}
    sec = []
    for idx, (o, k, _) in enumerate(pairs, 1):
        if not (ok(o) and ok(k)):
            continue
        phases = [x for x in o if x.endswith("_s") and x not in main_keys and x in k]
        cells = [f"{x[:-2]} {fmt_s(o[x])} / {fmt_s(k[x])}" for x in phases]
        cells.append(f"timed-phase CPU {fmt_s(o['cpu_s'])} / {fmt_s(k['cpu_s'])}")
        name, cfg, _ = row_label(o, k)
        sec.append(f"| {idx} | {name} | {cfg} | {'; '.join(cells)} |")
    if sec:
        print()
        print("Secondary phases (medians, ORC / kiln):")
        print()
        print("| # | Workload | Config | phases |")
        print("|---|---|---|---|")
        print("\n".join(sec))

    # Scaling of the dependency-graph workloads: local exponents between
    # consecutive sizes (1.0 = linear), per side, from the median wall time
    # and from the timed phase's process CPU time (less sensitive to other
    # load on the machine; in-place runs are single-threaded).
    def exponents(pts):
        ns = sorted(pts)
        return "; ".join(f"{a}->{b}: {math.log(pts[b] / pts[a]) / math.log(b / a):.2f}"
                         for a, b in zip(ns, ns[1:]) if pts[a] > 0 and pts[b] > 0)

    scaling = []
    for w in ("w3", "w4", "w5"):
        for side, rows in (("ORC", [o for o, _, _ in pairs]), ("kiln", [k for _, k, _ in pairs])):
            wall, cpu = {}, {}
            for d in rows:
                if ok(d) and d["workload"] == w and d["params"].get("dispatcher") == "inplace":
                    wall[d["params"]["n"]] = d["wall_s"]
                    cpu[d["params"]["n"]] = d["cpu_s"]
            if len(wall) < 2:
                continue
            ns = sorted(wall)
            scaling.append(f"| {w.upper()} | {side} | {', '.join(f'{n}: {fmt_s(wall[n])}' for n in ns)} "
                           f"| {exponents(wall)} | {exponents(cpu)} |")
    if scaling:
        print()
        print("Scaling (in-place; exponent e between consecutive N: time ~ N^e, 1.0 = linear):")
        print()
        print("| Workload | side | N: median wall | exponents (wall) | exponents (CPU) |")
        print("|---|---|---|---|---|")
        print("\n".join(scaling))

    # W7: aggregate throughput by thread count.
    print()
    # Grouped by lookups per thread: the peer's K = 50 000 is a few
    # milliseconds of kiln work, where a late-scheduled thread dominates.
    for side, rows in (("ORC", [o for o, _, _ in pairs]), ("kiln", [k for _, k, _ in pairs])):
        for disp in ("inplace", "dynamic"):
            by_k = {}
            for d in rows:
                if ok(d) and d["workload"] == "w7" and d["params"].get("dispatcher") == disp:
                    k = d["params"].get("per_thread", 50000)
                    by_k.setdefault(k, {})[d["params"]["threads"]] = d["ops_per_sec"]
            for k, pts in sorted(by_k.items()):
                if len(pts) < 2:
                    continue
                ts = sorted(pts)
                growth = pts[ts[-1]] / pts[ts[0]] if pts[ts[0]] > 0 else float("nan")
                print(f"W7 {side} {disp} K={k}: " + ", ".join(f"T={t} {fmt_rate(pts[t])}" for t in ts)
                      + f" (T={ts[-1]} / T={ts[0]} = {growth:.2f}x)")
    if missed:
        print()
        print("Targets missed:")
        for m in missed:
            print(f"- {m}")


if __name__ == "__main__":
    main()
