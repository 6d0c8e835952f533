#!/usr/bin/env python3
"""rusage_run.py OUT CMD [ARG ...] - run CMD, write its whole-process figures to OUT.

OUT gets one line: wall ns (monotonic clock from just before the spawn to just
after the child is reaped), user seconds, system seconds and minor page faults
of the child and every descendant it waited for (wait4's rusage, microsecond
resolution, unlike GNU time's 10 ms). Exits with CMD's status (128 + signal).
Used by benches/link-compare; Python's own start-up is outside the figures.
"""
import os
import sys
import time


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out, cmd = sys.argv[1], sys.argv[2:]
    t0 = time.monotonic_ns()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ)
    _, status, ru = os.wait4(pid, 0)
    t1 = time.monotonic_ns()
    with open(out, "w") as fh:
        fh.write(f"{t1 - t0} {ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_minflt}\n")
    code = os.waitstatus_to_exitcode(status)
    sys.exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
