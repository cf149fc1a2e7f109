#!/usr/bin/python3
"""Run creation throughput and claim latency: one server on SQLite (the embedded default, the
baseline), one server on PostgreSQL, three replicas on one PostgreSQL database, all measured
in this one run, on this machine.

- creation: N run requests (trivial Python jobs) sent by CLIENTS threads, round-robin over the
  replicas; runs created per second of wall time, and the requests' latency.
- claim latency: from a run's creation to its claim (READY → PENDING, by whichever replica's
  dispatcher won it), from the stored transitions: under load (the N runs above, which queue
  for execution slots) and idle (runs submitted one at a time).

Usage: bench/replicas.py BINARY [N] [CLIENTS]
Needs the PostgreSQL server of scripts/setup-postgres (or RUNPLANE_TEST_PG_URL).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from urllib.parse import urlparse, urlunparse

from benchlib import Server, call

PG_SERVER = os.environ.get("RUNPLANE_TEST_PG_URL", "postgres://runplane@127.0.0.1:55432/postgres")
CODE = "def handler():\n    return 1\n"
# Runs submitted one at a time for the idle claim latency.
SEQUENTIAL = 30


def fresh_database():
    name = f"rp_bench_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", PG_SERVER, "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    # The test cluster turns synchronous_commit off for speed; the benchmark compares durable
    # commits on both stores (SQLite runs with synchronous=FULL).
    subprocess.run(["psql", PG_SERVER, "-q", "-c", f"ALTER DATABASE {name} SET synchronous_commit = on"],
                   check=True)
    return name, urlunparse(urlparse(PG_SERVER)._replace(path=f"/{name}"))


def drop_database(name):
    subprocess.run(["psql", PG_SERVER, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                   check=False, capture_output=True)


def at(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(binary, replicas, store, n, clients):
    shared = tempfile.mkdtemp(prefix="runplane-bench-shared-")
    key = os.path.join(shared, "secret.key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    args = ["--shared-dir", shared, "--secret-key-file", key]
    if store:
        args += ["--store", store]
    servers = [Server(binary, [*args, "--replica-id", f"r{i}"]) for i in range(replicas)]
    try:
        bases = [f"{s.url}/api/v1/projects/bench" for s in servers]
        call("POST", f"{bases[0]}/functions", {
            "kind": "python", "metadata": {"name": "noop"},
            "spec": {"handler": "handler", "source": {"code": CODE}},
        })
        # Warm-up: connections, the function's first run.
        first = call("POST", f"{bases[0]}/runs", {"function": "noop"})
        call("GET", f"{bases[0]}/runs/{first['metadata']['id']}?wait=60")

        def create(i):
            start = time.perf_counter()
            run = call("POST", f"{bases[i % replicas]}/runs", {"function": "noop"})
            return run["metadata"]["id"], time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            created = list(pool.map(create, range(n)))
        wall = time.perf_counter() - start
        claims, owners = [], {}
        for run_id, _ in created:
            run = call("GET", f"{bases[0]}/runs/{run_id}?wait=120")
            assert run["status"]["state"] == "COMPLETED", run["status"]
            claimed = next(t["at"] for t in run["status"]["transitions"] if t["to"] == "PENDING")
            claims.append((at(claimed) - at(run["metadata"]["created"])).total_seconds())
            owner = run["status"].get("owner", "-")
            owners[owner] = owners.get(owner, 0) + 1
        # Claim latency on an idle cluster: one run at a time, each to its end, so that a slot
        # is always free and what is measured is the hand-off, not the queue.
        idle_claims = []
        for i in range(SEQUENTIAL):
            run = call("POST", f"{bases[i % replicas]}/runs", {"function": "noop"})
            run = call("GET", f"{bases[0]}/runs/{run['metadata']['id']}?wait=60")
            claimed = next(t["at"] for t in run["status"]["transitions"] if t["to"] == "PENDING")
            idle_claims.append((at(claimed) - at(run["metadata"]["created"])).total_seconds())
        latencies = [latency for _, latency in created]
        ms = lambda s: round(s * 1000.0, 2)
        return {
            "runs_created_per_second": round(n / wall, 1),
            "create_request_ms": {"median": ms(statistics.median(latencies)), "p95": ms(percentile(latencies, 0.95))},
            "claim_latency_under_load_ms": {"median": ms(statistics.median(claims)), "p95": ms(percentile(claims, 0.95))},
            "claim_latency_idle_ms": {"median": ms(statistics.median(idle_claims)), "p95": ms(percentile(idle_claims, 0.95))},
            "claimed_by": owners,
        }
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(shared, ignore_errors=True)


def main():
    binary = os.path.abspath(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    results = {"runs": n, "clients": clients}
    results["sqlite_1"] = measure(binary, 1, None, n, clients)
    for replicas in (1, 3):
        name, url = fresh_database()
        try:
            results[f"postgres_{replicas}"] = measure(binary, replicas, url, n, clients)
        finally:
            drop_database(name)
    base = results["sqlite_1"]["runs_created_per_second"]
    results["creation_ratio_vs_sqlite"] = {
        key: round(results[key]["runs_created_per_second"] / base, 2) for key in ("postgres_1", "postgres_3")
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
