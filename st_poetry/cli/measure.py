"""`python measure.py RESULT COMMAND...`: run COMMAND, then write its exit code, wall seconds and peak RSS to RESULT.

The pipeline starts each stage through this small process, run by path so that it imports nothing of ours: a
program started by exec keeps the peak memory of the address space it replaced (Linux), so a stage started
straight from the pipeline, which holds torch after checking every section, would count the pipeline's memory as
its own.
"""

import json
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    result, command = sys.argv[1], sys.argv[2:]
    signal.signal(signal.SIGINT, lambda *_: None)  # Ctrl-C is the stage's to answer; (reset to default on exec)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    figures = {
        "exit_code": process.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # KiB on Linux
    }
    with open(result, "w", encoding="utf-8") as handle:
        json.dump(figures, handle)


if __name__ == "__main__":
    main()
