#!/usr/bin/python3
"""Containers and environments, each against a baseline measured in this same run:

1. A container job start-to-finish through runplane (`container` function on the engine
   framework: submit, then wait for COMPLETED) against `podman run --rm` of the same image and
   command, N times each, interleaved so that machine noise hits both alike.
2. A function with a requirement: its first run (the environment is built: resolve + install
   by a build run the job waits for) against its second run (the environment is reused).
   Repeated on fresh servers, so every first run really builds.

Usage: bench/containers.py BINARY [N]
"""
import os
import statistics
import subprocess
import sys
import time

from benchlib import Server, call

SOCKET = os.environ.get("RUNPLANE_ENGINE_SOCKET", "/run/runplane-podman.sock")
IMAGE = "localhost/runplane-busybox:latest"
COMMAND = ["/bin/sh", "-c", "echo hello from a container"]
REQUIREMENT = os.environ.get("BENCH_REQUIREMENT", "six==1.17.0")
CODE = "import six\n\ndef handler():\n    return {'six': six.__version__}\n"


def run_to_end(base, request):
    start = time.perf_counter()
    run = call("POST", f"{base}/runs", request)
    while True:
        done = call("GET", f"{base}/runs/{run['metadata']['id']}?wait=120")
        if done["status"]["state"] in ("COMPLETED", "ERROR", "STOPPED"):
            break
    elapsed = time.perf_counter() - start
    if done["status"]["state"] != "COMPLETED":
        raise SystemExit(f"run failed: {done['status']}")
    return elapsed


def podman_run():
    start = time.perf_counter()
    subprocess.run(["podman", "run", "--rm", IMAGE, *COMMAND], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_ms(values):
    return statistics.median(values) * 1000


def containers(binary, n):
    server = Server(binary, ["--engine-socket", SOCKET])
    base = f"{server.url}/api/v1/projects/bench"
    try:
        call("POST", f"{base}/functions", {
            "kind": "container", "metadata": {"name": "hello"},
            "spec": {"image": IMAGE, "command": COMMAND},
        })
        request = {"function": "hello", "framework": "engine"}
        run_to_end(base, request)  # warm-up
        podman_run()
        ours, theirs = [], []
        for _ in range(n):
            ours.append(run_to_end(base, request))
            theirs.append(podman_run())
    finally:
        server.close()
    print(f"container job, {n} runs each (median):")
    print(f"  podman run --rm           {median_ms(theirs):8.1f} ms")
    print(f"  runplane (engine)         {median_ms(ours):8.1f} ms")
    print(f"  ratio runplane/podman     {statistics.median(ours) / statistics.median(theirs):8.2f}x")


def environments(binary, repeats):
    firsts, seconds = [], []
    for _ in range(repeats):
        server = Server(binary)
        base = f"{server.url}/api/v1/projects/bench"
        try:
            call("POST", f"{base}/functions", {
                "kind": "python", "metadata": {"name": "needs-six"},
                "spec": {"handler": "handler", "source": {"code": CODE}, "requirements": [REQUIREMENT]},
            })
            firsts.append(run_to_end(base, {"function": "needs-six"}))
            seconds.append(run_to_end(base, {"function": "needs-six"}))
        finally:
            server.close()
    print(f"function requiring {REQUIREMENT}, {repeats} fresh servers (median):")
    print(f"  first run (builds env)    {median_ms(firsts):8.1f} ms")
    print(f"  second run (env cached)   {median_ms(seconds):8.1f} ms")
    print(f"  ratio first/second        {statistics.median(firsts) / statistics.median(seconds):8.2f}x")


def main():
    binary = os.path.abspath(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    containers(binary, n)
    environments(binary, max(3, n // 4))


if __name__ == "__main__":
    main()
