"""This process's own peak resident memory (shared by the benchmarks' child processes).

`getrusage(RUSAGE_SELF).ru_maxrss` is no good in a child started by a benchmark: Linux keeps the peak of
the process image that forked it across `exec`, so a child of a parent that built a large log reports the
parent's peak. `VmHWM` in /proc/self/status belongs to the current address space only.
"""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is
