#!/usr/bin/python3
"""Per-job overhead of runplane: N sequential trivial Python jobs through the REST API, against
N bare runs of /usr/bin/python3 doing the same work the runner must do (import the handler's
module, call it, json.dumps the result into a file). Both measured in this one run, on this
machine. Also reports the server's RSS when idle (after start, and after the jobs).

Usage: bench/jobs.py BINARY [N]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import Server, bare_script, call

PYTHON = "/usr/bin/python3"
CODE = "def handler(x=1):\n    return {'y': x + 1}\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bare_runs(n, work):
    script = bare_script(work, CODE, 'main.handler(x=1)')
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([PYTHON, script], check=True)
        times.append(time.perf_counter() - start)
    return times


def main():
    binary = os.path.abspath(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    server = Server(binary)
    base = f"{server.url}/api/v1/projects/bench"
    try:
        time.sleep(0.5)
        idle_rss_start = rss_kib(server.pid)
        call("POST", f"{base}/functions", {
            "kind": "python", "metadata": {"name": "trivial"},
            "spec": {"handler": "handler", "source": {"code": CODE}},
        })
        # Warm-up (page cache, first connections), not measured.
        for _ in range(5):
            run = call("POST", f"{base}/runs", {"function": "trivial", "parameters": {"x": 1}})
            call("GET", f"{base}/runs/{run['metadata']['id']}?wait=60")
        job_times = []
        for _ in range(n):
            start = time.perf_counter()
            run = call("POST", f"{base}/runs", {"function": "trivial", "parameters": {"x": 1}})
            done = call("GET", f"{base}/runs/{run['metadata']['id']}?wait=60")
            job_times.append(time.perf_counter() - start)
            assert done["status"]["state"] == "COMPLETED", done["status"]
            assert done["status"]["results"] == {"y": 2}, done["status"]
        time.sleep(1.0)
        idle_rss_end = rss_kib(server.pid)
    finally:
        server.close()

    work = tempfile.mkdtemp(prefix="runplane-bare-")
    try:
        bare_runs(5, work)
        bare_times = bare_runs(n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = lambda s: s * 1000.0
    job_median, job_p95 = statistics.median(job_times), percentile(job_times, 0.95)
    bare_median, bare_p95 = statistics.median(bare_times), percentile(bare_times, 0.95)
    report = {
        "jobs": n,
        "runplane_job_ms": {"median": round(ms(job_median), 2), "p95": round(ms(job_p95), 2)},
        "bare_python_ms": {"median": round(ms(bare_median), 2), "p95": round(ms(bare_p95), 2)},
        "overhead_ms": {"median": round(ms(job_median - bare_median), 2), "p95": round(ms(job_p95 - bare_p95), 2)},
        "ratio_median": round(job_median / bare_median, 2),
        "server_idle_rss_mib": {"after_start": round(idle_rss_start / 1024, 1), "after_jobs": round(idle_rss_end / 1024, 1)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
