"""runplane's environment builder: installs a function's lock into its environment folder.

The python runtime writes this file next to `build.json` and `lock.txt`; the framework starts it
with that folder as working directory and `RUNPLANE_OUTPUTS` set to an empty folder.

`build.json`: `uv` (the executable), `python` (the interpreter runs use), `environments_dir`,
`hash` (the lock's sha256) and `lock` (the lock file's name here).

What it guarantees, and how:
- `<environments_dir>/<hash>` exists only once complete: packages are installed into a
  temporary sibling folder, `.tmp-<hash>-<pid>`, renamed into place in one `rename` (atomic on
  one filesystem). A failed or stopped build removes its temporary folder.
- One build per lock at a time: an exclusive `flock` on `<environments_dir>/<hash>.lock`, held
  until the process exits (the kernel releases it even on SIGKILL). A second build of the same
  lock waits for it, then finds the folder and reuses it. Holding the lock, a builder may also
  remove temporary folders of that hash that a killed build left.

Outputs: `results.json` `{"environment": hash, "reused": bool}` on success; on failure
`error.json` `{"type", "message", "where"}` and exit code 1. Progress and uv's own output go
to the run's log (stdout/stderr). Standard library only; Python 3.8 and later.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys

ERROR_TYPE = "EnvironmentBuildFailed"


class BuildFailed(Exception):
    pass


class Stopped(BaseException):
    """SIGTERM arrived: unwind so that the temporary folder is removed."""


def log(message):
    sys.stderr.write("runplane: %s\n" % message)
    sys.stderr.flush()


def write_output(name, value):
    outputs = os.environ.get("RUNPLANE_OUTPUTS")
    if not outputs:
        return
    with open(os.path.join(outputs, name), "w") as out:
        json.dump(value, out)


def on_sigterm(signum, frame):
    raise Stopped()


def remove_stale(environments_dir, digest):
    """Removes what killed builds of this lock left; only called with the lock held."""
    prefix = ".tmp-%s-" % digest
    for name in os.listdir(environments_dir):
        if name.startswith(prefix):
            log("removing %s, left by an interrupted build" % name)
            shutil.rmtree(os.path.join(environments_dir, name), ignore_errors=True)


def install(settings, environments_dir, digest, final):
    tmp = os.path.join(environments_dir, ".tmp-%s-%d" % (digest, os.getpid()))
    command = [
        settings["uv"], "pip", "install",
        "--target", tmp,
        "--no-deps",
        "--python", settings["python"],
        "-r", settings["lock"],
    ]
    log("installing the lock: %s" % " ".join(command))
    try:
        try:
            # uv's output goes to the log as it comes.
            code = subprocess.call(command, stdin=subprocess.DEVNULL)
        except OSError as error:
            raise BuildFailed("cannot start %s: %s" % (settings["uv"], error))
        if code != 0:
            raise BuildFailed("uv pip install exited with code %d; its output is in the run's log" % code)
        if not os.path.isdir(tmp):
            os.makedirs(tmp)
        # uv's own lock of the target folder (empty, world-writable): not part of the environment.
        try:
            os.remove(os.path.join(tmp, ".lock"))
        except FileNotFoundError:
            pass
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build(settings):
    environments_dir = settings["environments_dir"]
    digest = settings["hash"]
    final = os.path.join(environments_dir, digest)
    os.makedirs(environments_dir, exist_ok=True)
    lock_fd = os.open(os.path.join(environments_dir, digest + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another build of environment %s is running: waiting for it" % digest)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    if os.path.isdir(final):
        log("environment %s is already built: reusing it" % digest)
        return True
    remove_stale(environments_dir, digest)
    install(settings, environments_dir, digest, final)
    log("environment %s built" % digest)
    return False


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with open("build.json") as f:
            settings = json.load(f)
        reused = build(settings)
    except Stopped:
        log("stopped: the environment was not built")
        return 143
    except (BuildFailed, OSError, KeyError, ValueError) as error:
        message = str(error) if isinstance(error, BuildFailed) else "%s: %s" % (type(error).__name__, error)
        log("the environment build failed: " + message)
        write_output("error.json", {"type": ERROR_TYPE, "message": message, "where": None})
        return 1
    write_output("results.json", {"environment": settings["hash"], "reused": reused})
    return 0


if __name__ == "__main__":
    sys.exit(main())
