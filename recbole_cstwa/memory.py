"""Memory a process uses: its peak resident size and its proportional set size (PSS).

``run_recbole_cstwa`` reports both for every rank (``peak_rss_mb``, ``pss_mb``).
"""


def peak_rss_mb():
    """This process's peak resident memory in MiB (``ru_maxrss``: KiB on Linux)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def pss_mb():
    """This process's proportional set size now, in MiB (Linux; ``nan`` elsewhere).

    Unlike the resident size, pages shared with other processes (a memory-mapped dataset read by
    every rank) count once over all of them, so the ranks' PSS add up to the memory they use.
    """
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
