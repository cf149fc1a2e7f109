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
        # RUNPLANE_BENCH_LOG_FILE=PATH keeps the server's log at RUNPLANE_BENCH_LOG (a
        # RUNPLANE_LOG filter), e.g. to see where a phase's time goes; by default the log is
        # discarded, at level warn.
        level = os.environ.get("RUNPLANE_BENCH_LOG", "warn")
        path = os.environ.get("RUNPLANE_BENCH_LOG_FILE")
        output = open(path, "ab") if path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "server", "--listen", f"127.0.0.1:{self.port}", "--home", self.home, *extra_args],
            stdout=output, stderr=output, env=dict(os.environ, RUNPLANE_LOG=level),
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


def bare_script(work, code, call):
    """A script doing what the runner does for a job, without runplane: import the handler's
    module from a source folder, call it (`call`, e.g. `main.handler(x=1)`), json.dumps the
    result into a file. Returns its path."""
    module_dir = os.path.join(work, "src")
    os.makedirs(module_dir, exist_ok=True)
    with open(os.path.join(module_dir, "main.py"), "w") as f:
        f.write(code)
    script = os.path.join(work, "bare.py")
    with open(script, "w") as f:
        f.write(
            "import sys, json\n"
            f"sys.path.insert(0, {module_dir!r})\n"
            "import main\n"
            f"result = {call}\n"
            f"open({os.path.join(work, 'results.json')!r}, 'w').write(json.dumps(result))\n"
        )
    return script
