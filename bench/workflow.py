#!/usr/bin/python3
"""Per-step overhead of workflows: a 40-step sequential pipeline of trivial Python steps
(fibonacci(10)), each step its own run and process, against 40 bare runs of /usr/bin/python3
doing the step's work (interpreter start, import of the module, the call, json.dumps of the
result into a file). Both measured in this one run, on this machine, taking turns: REPEAT
times the workflow then the bare runs; the overhead per step is the median over the
repetitions of (workflow - bare) / STEPS.

Also reports, from the stored transitions, how long the engine takes between one step's end
and the next step's creation (the workflow engine's own latency).

On ext4 without a journal (this project's VMs), each file created skips, one lookup each,
every inode freed nearby in the last one to six minutes: a run right after many deletions
(a previous run's teardown, the test suite) costs more per created file than one after a
quiet spell. The local framework keeps file creation off the path from one step to the next
for that reason (`crates/frameworks/src/local/spare.rs`); to compare binaries, interleave
them and report both a run after `sync; echo 3 > /proc/sys/vm/drop_caches` and one right
after another run.

Usage: bench/workflow.py BINARY [STEPS] [REPEAT]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

from benchlib import Server, bare_script, call

PYTHON = "/usr/bin/python3"
CODE = (
    "def fibonacci(n):\n"
    "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"
    "\n"
    "def handler(n=10):\n"
    "    return {'fibonacci': fibonacci(n)}\n"
)


def bare_runs(n, work):
    script = bare_script(work, CODE, 'main.handler(n=10)')
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([PYTHON, script], check=True)
    return time.perf_counter() - start


def pipeline(steps):
    return {
        "kind": "pipeline",
        "metadata": {"name": f"chain{steps}"},
        "spec": {
            "steps": [
                {
                    "name": f"s{i}",
                    "function": "fib",
                    "parameters": {"n": 10},
                    **({"depends_on": [f"s{i - 1}"]} if i else {}),
                }
                for i in range(steps)
            ]
        },
    }


def at(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def engine_gaps(base, workflow_id):
    """Seconds between each step's end and the creation of the step after it."""
    steps = call("GET", f"{base}/runs?step_of={workflow_id}&limit=1000")["items"]
    by_step = {run["status"]["step_of"]["step"]: run for run in steps}
    gaps = []
    for i in range(1, len(by_step)):
        before, after = by_step[f"s{i - 1}"], by_step[f"s{i}"]
        ended = next(t["at"] for t in before["status"]["transitions"] if t["to"] == "COMPLETED")
        gaps.append((at(after["metadata"]["created"]) - at(ended)).total_seconds())
    return gaps


def phases(base, workflow_id):
    """Per step, seconds spent in each phase, from the stored transitions: queued (created →
    PENDING: the dispatcher), starting (PENDING → RUNNING: the framework's spawn), running
    (RUNNING → COMPLETED: the process, and the collection of its outputs)."""
    steps = call("GET", f"{base}/runs?step_of={workflow_id}&limit=1000")["items"]
    out = {"queued": [], "starting": [], "running": []}
    for run in steps:
        when = {t["to"]: at(t["at"]) for t in run["status"]["transitions"]}
        created = at(run["metadata"]["created"])
        out["queued"].append((when["PENDING"] - created).total_seconds())
        out["starting"].append((when["RUNNING"] - when["PENDING"]).total_seconds())
        out["running"].append((when["COMPLETED"] - when["RUNNING"]).total_seconds())
    return out


def main():
    binary = os.path.abspath(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    server = Server(binary)
    base = f"{server.url}/api/v1/projects/bench"
    work = tempfile.mkdtemp(prefix="runplane-bare-")
    totals, bares, gaps = [], [], []
    phase_times = {"queued": [], "starting": [], "running": []}
    try:
        call("POST", f"{base}/functions", {
            "kind": "python", "metadata": {"name": "fib"},
            "spec": {"handler": "handler", "source": {"code": CODE}},
        })
        call("POST", f"{base}/workflows", pipeline(steps))
        # Warm-up: page cache, first connections; not measured.
        run = call("POST", f"{base}/runs", {"function": "fib", "parameters": {"n": 10}})
        call("GET", f"{base}/runs/{run['metadata']['id']}?wait=60")
        bare_runs(3, work)
        # The workflow and the bare runs take turns, so that a slower spell of the machine
        # weighs on both sides of each repetition's difference rather than on one.
        for _ in range(repeat):
            start = time.perf_counter()
            run = call("POST", f"{base}/runs", {"function": f"chain{steps}"})
            done = call("GET", f"{base}/runs/{run['metadata']['id']}?wait=600")
            totals.append(time.perf_counter() - start)
            assert done["status"]["state"] == "COMPLETED", done["status"]
            bares.append(bare_runs(steps, work))
            gaps.extend(engine_gaps(base, run["metadata"]["id"]))
            for name, values in phases(base, run["metadata"]["id"]).items():
                phase_times[name].extend(values)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    ms = lambda s: round(s * 1000.0, 2)
    overheads = [(total - bare) / steps for total, bare in zip(totals, bares)]
    print(json.dumps({
        "steps": steps,
        "repeat": repeat,
        "workflow_total_ms": {"median": ms(statistics.median(totals)), "all": [ms(t) for t in totals]},
        "bare_total_ms": {"median": ms(statistics.median(bares)), "all": [ms(b) for b in bares]},
        "ratio": round(statistics.median(t / b for t, b in zip(totals, bares)), 2),
        "overhead_per_step_ms": ms(statistics.median(overheads)),
        "overhead_per_step_ms_all": [ms(o) for o in overheads],
        "engine_gap_ms": {"median": ms(statistics.median(gaps)), "max": ms(max(gaps))} if gaps else None,
        "step_phase_median_ms": {name: ms(statistics.median(v)) for name, v in phase_times.items() if v},
    }, indent=2))


if __name__ == "__main__":
    main()
