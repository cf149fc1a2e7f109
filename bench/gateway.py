#!/usr/bin/python3
"""Gateway overhead: a trivial Python service measured in one run both directly (requests to its
replica's own port) and through runplane's gateway (/services/{project}/{name}/), with the same
load generator, connection count and duration. Reports p50/p99 latency and requests/s of each
and what the gateway adds.

Usage: bench/gateway.py RUNPLANE_BINARY LOADGEN_BINARY [CONNECTIONS,...] [SECONDS]
(default: 1 connection — latency without queueing — then 8).
"""
import json
import os
import subprocess
import sys

from benchlib import Server, call

CODE = "def handler(request):\n    return {'ok': True}\n"


def load(loadgen, url, connections, seconds):
    out = subprocess.run(
        [loadgen, "--url", url, "--connections", str(connections), "--duration", f"{seconds}s",
         "--warmup", "1s", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    results = json.loads(out)
    return results[0] if isinstance(results, list) else results


def main():
    binary, loadgen = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    counts = [int(c) for c in (sys.argv[3] if len(sys.argv) > 3 else "1,8").split(",")]
    seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    server = Server(binary)
    port = server.port
    api = f"{server.url}/api/v1/projects/bench"
    try:
        call("POST", f"{api}/functions", {"kind": "python", "metadata": {"name": "noop"},
                                          "spec": {"handler": "handler", "source": {"code": CODE}}})
        run = call("POST", f"{api}/runs", {"function": "noop", "action": "serve"})
        run = call("GET", f"{api}/runs/{run['metadata']['id']}?wait=60&until=running")
        assert run["status"]["state"] == "RUNNING", run["status"]
        endpoint = run["status"]["service"]["replicas"][0]["endpoint"]
        print(f"gateway benchmark: trivial Python handler, 1 replica, {seconds}s per measurement")
        print(f"{'':16} {'requests/s':>11} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'errors':>7}")
        for connections in counts:
            direct = load(loadgen, f"http://{endpoint}/", connections, seconds)
            gateway = load(loadgen, f"http://127.0.0.1:{port}/services/bench/noop/", connections, seconds)
            for name, r in ((f"direct   x{connections}", direct), (f"gateway  x{connections}", gateway)):
                print(f"{name:16} {r['rps']:11.0f} {r['p50_us']:8.0f} {r['p90_us']:8.0f} {r['p99_us']:8.0f} {r['errors']:7d}")
            print(f"  {connections} connection(s): the gateway adds {gateway['p50_us'] - direct['p50_us']:.0f} µs at p50, "
                  f"{gateway['p99_us'] - direct['p99_us']:.0f} µs at p99; requests/s gateway/direct {gateway['rps'] / direct['rps']:.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    main()
