"""Measurement records, the thread policy and the environment fingerprint: the one
place where dlprimer decides how a figure is timed and how sure it is.

* :mod:`.stats` -- :class:`Timing` records (median, 95% interval, n, spread),
  paired ratios, interleaved adaptive measurement, verdicts against a band;
* :mod:`.threads` -- ``set_num_threads`` / ``get_num_threads`` over every loaded
  thread pool, ``auto_threads`` from the load average;
* :mod:`.fingerprint` -- CPU, cores, load, thread pools, BLAS, GPU, versions;
* :mod:`.records` -- figures to plain JSON.
"""
from .fingerprint import describe, finish, fingerprint
from .records import to_json
from .stats import Measured, Timing, combine_verdicts, measure, median_ci, ratio, summarize, verdict
from .threads import (auto_threads, cpu_cores, get_num_threads, load_average, parse_threads,
                      set_num_threads, thread_pools)

__all__ = ["Timing", "Measured", "summarize", "ratio", "measure", "median_ci", "verdict",
           "combine_verdicts", "fingerprint", "finish", "describe", "to_json", "set_num_threads",
           "get_num_threads", "auto_threads", "parse_threads", "load_average", "cpu_cores",
           "thread_pools"]
