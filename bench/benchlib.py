"""What the benchmark scripts share: a throwaway runplane server and JSON calls to its API."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


class Server:
    """`runplane server` on a free port with a temporary home, healthy once constructed."""

    def __init__(self, binary, extra_args=()):
        self.home = tempfile.mkdtemp(prefix="runplane-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [binary, "server", "--listen", f"127.0.0.1:{self.port}", "--home", self.home, *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUNPLANE_LOG="warn"),
        )
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

    def close(self):
        """Stops the server and everything that runs under its home."""
        self.process.terminate()
        self.process.wait(timeout=30)
        for leftover in subprocess.run(["pgrep", "-f", self.home], capture_output=True, text=True).stdout.split():
            subprocess.run(["kill", "-KILL", leftover])
        shutil.rmtree(self.home, ignore_errors=True)
