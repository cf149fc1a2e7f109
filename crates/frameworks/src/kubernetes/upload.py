"""runplane's outputs uploader for the kubernetes framework.

Run after the job's process ended (see the wrapper in manifests.rs): sends every file under
$RUNPLANE_OUTPUTS to $RUNPLANE_OUTPUTS_URL with the run-scoped token $RUNPLANE_TOKEN, as one
JSON document {"files": [{"path", "mode", "contents" (base64)}]}. Standard library only; prints
nothing on stdout (that belongs to the user's code); a failure is one line on stderr, which the
wrapper sends to the container's termination message.
"""

import base64
import json
import os
import sys
import time
import urllib.request

LIMIT = 64 * 1024 * 1024


def collect(root):
    files, total = [], 0
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                contents = handle.read(LIMIT - total + 1)
            total += len(contents)
            if total > LIMIT:
                raise RuntimeError("the outputs are larger than %d bytes" % LIMIT)
            files.append({
                "path": os.path.relpath(path, root),
                "mode": os.stat(path).st_mode & 0o777,
                "contents": base64.b64encode(contents).decode("ascii"),
            })
    return files


def main():
    root = os.environ["RUNPLANE_OUTPUTS"]
    body = json.dumps({"files": collect(root)}).encode("utf-8")
    request = urllib.request.Request(
        os.environ["RUNPLANE_OUTPUTS_URL"],
        data=body,
        method="PUT",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer " + os.environ["RUNPLANE_TOKEN"],
        },
    )
    # The API may be restarting (a rolling update of the server): a few tries with backoff.
    delay = 1.0
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if 200 <= response.status < 300:
                    return 0
        except Exception as error:  # noqa: BLE001 - every failure is retried, then reported
            last = error
        else:
            last = RuntimeError("status %d" % response.status)
        if attempt < 4:
            time.sleep(delay)
            delay *= 2
    sys.stderr.write("runplane: outputs not uploaded: %s\n" % last)
    return 1


if __name__ == "__main__":
    sys.exit(main())
