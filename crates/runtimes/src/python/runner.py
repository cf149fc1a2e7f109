"""runplane's runner for Python handlers (docs/formats.md, "What a job handler gets").

The python runtime writes this file next to `run.json` and the function's code (under `src/`).
The framework starts it with that folder as working directory and `RUNPLANE_OUTPUTS` set to an
empty folder whose files it collects when the process ends.

Job mode (`run.json` has no `mode`): the runner imports the handler's module, calls the handler
with the run's parameters by name (plus `context=` when the handler declares it) and leaves the
outcome in that folder:

- `results.json`: the handler's return value as JSON (`null` for None);
- `error.json`: `{"type", "message", "where"}` when the import or the handler raised, or when
  the return value cannot be kept (`ResultNotSerializable`, `ResultTooLarge`); exit code 1;
- `metrics.jsonl`: one JSON object per `context.log_metric(...)` call;
- `artifacts/<name>/` and `artifacts.jsonl`: what `context.log_artifact(...)` copied, and one
  `{"name", "type", "labels"}` line per call (the server stores them when the run ends).

Serve mode (`"mode": "serve"`): the runner serves HTTP/1.1 until SIGTERM; that half of it is
`runner_serve.py`, beside this file in a service's working directory (see its comments).

Rules this file keeps, and why:
- Standard library only, and as little of it as possible: every run pays for these imports, and
  a hello-world handler should cost about as much as `python3 -c pass`. Up front it uses only
  `sys` and `os` (already loaded by the interpreter at start-up) and `_json`, the C core of
  `json`; importing `json` itself drags in `re`, `enum`, `functools` and `collections` (several
  milliseconds), so it is only the fallback when `_json` is missing or has changed. `traceback`
  is imported only once something failed and `asyncio` only for an `async def` handler. Serve
  mode's code and imports (`http.server`, `json`, `threading`, ...) are in `runner_serve.py`,
  which jobs never compile.
- Nothing is ever printed on stdout, and runplane never parses stdout or stderr: they belong to
  the user's code, which could print anything. A failure's traceback goes to stderr, as Python
  would print it.
- Compatible with Python 3.8 and later.
"""

import os
import sys

RESULTS = "results.json"
# The serve half of the runner, beside this file in a service's working directory.
SERVE_FILE = "runner_serve.py"
ERROR = "error.json"
METRICS = "metrics.jsonl"
ARTIFACTS = "artifacts"
ARTIFACTS_INDEX = "artifacts.jsonl"
# Longest exception message kept in error.json; the full text is in the traceback on stderr.
MESSAGE_LIMIT = 4000


# Files of the runner itself, whose frames tracebacks leave out.
_RUNNER_FILES = {__file__}


class HandlerNotFound(Exception):
    """The handler's module imported, but it is not the function's own code or has no handler."""


def _not_serializable(value):
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _nan_constant(name):
    raise ValueError("%s is not allowed in run.json" % name)


def _codec():
    """Returns `(loads, dumps)` with the semantics of `json.loads` / `json.dumps(allow_nan=False)`.

    Uses `_json` directly when it has the interface `json` itself relies on (CPython 3.8 to
    3.13), else falls back on `json`.
    """
    try:
        import _json

        class _Decoding:
            # The attributes `_json.make_scanner` reads, as `json.JSONDecoder` sets them.
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = staticmethod(_nan_constant)

        scan = _json.make_scanner(_Decoding())
        make_encoder = _json.make_encoder
        escape = _json.encode_basestring_ascii

        def loads(text):
            text = text.strip()
            try:
                value, end = scan(text, 0)
            except StopIteration as stop:
                raise ValueError("not valid JSON at character %s" % stop.value) from None
            if end != len(text):
                raise ValueError("extra data after the JSON value at character %d" % end)
            return value

        def dumps(value):
            # A fresh `markers` dict per call: it detects circular references, and an encoder
            # that raised may leave entries behind.
            encode = make_encoder({}, _not_serializable, escape, None, ":", ",", False, False, False)
            return "".join(encode(value, 0))

        # Fail here, not on the first real call, if `_json` changed its interface.
        if loads('{"a":[1,2.5,"\\u00e9",true,null]}') != {"a": [1, 2.5, "\u00e9", True, None]}:
            raise TypeError("unexpected _json behaviour")
        if dumps({"a": [1, 2.5, "\u00e9", True, None]}) != '{"a":[1,2.5,"\\u00e9",true,null]}':
            raise TypeError("unexpected _json behaviour")
        return loads, dumps
    except (ImportError, AttributeError, TypeError, ValueError):
        import json

        def dumps(value):
            return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_not_serializable)

        return json.loads, dumps


def _write_atomically(path, text):
    """Writes `path` so that a reader (the framework) never sees half a file."""
    temporary = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


class Context:
    """What a handler that declares a `context` parameter receives."""

    __slots__ = ("run_id", "project", "parameters", "replica", "_metrics", "_outputs", "_dumps")

    def __init__(self, run_id, project, parameters, outputs, dumps, replica=None):
        self.run_id = run_id
        self.project = project
        # Jobs: the handler's parameters; services: the init function's.
        self.parameters = parameters
        # Services: this replica's index (`RUNPLANE_REPLICA`); None for jobs.
        self.replica = replica
        self._metrics = os.path.join(outputs, METRICS)
        self._outputs = outputs
        self._dumps = dumps

    def log_metric(self, name, value, step=None):
        """Records a numeric metric (one JSON line in `$RUNPLANE_OUTPUTS/metrics.jsonl`)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a metric name must be a non-empty string, not %r" % (name,))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("metric %s: the value must be an int or a float, not %s" % (name, type(value).__name__))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("metric %s: the value must be finite, not %r" % (name, value))
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise TypeError("metric %s: the step must be an int, not %s" % (name, type(step).__name__))
        import time  # built into the interpreter: no file is read

        record = {"name": name, "value": value, "time": time.time()}
        if step is not None:
            record["step"] = step
        line = self._dumps(record) + "\n"
        with open(self._metrics, "a", encoding="utf-8") as file:
            file.write(line)

    def log_artifact(self, name, path, labels=None):
        """Copies the file or folder `path` into `$RUNPLANE_OUTPUTS/artifacts/<name>/` (a file
        keeps its base name there; a folder's content is copied) and records it in
        `artifacts.jsonl`. The server stores it as a version of the artifact `name` when the
        run ends. Logging `name` twice in one run keeps the last copy."""
        if not _is_artifact_name(name):
            raise ValueError(
                "artifact name %r: use lowercase letters, digits and '-' (at most 63 characters, "
                "starting and ending with a letter or a digit)" % (name,)
            )
        if labels is not None and (
            not isinstance(labels, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise TypeError("artifact %s: labels must be a dict of str to str" % name)
        path = os.fspath(path)
        if os.path.isdir(path):
            kind = "dir"
        elif os.path.isfile(path):
            kind = "file"
        else:
            raise FileNotFoundError("artifact %s: no file or folder at %r" % (name, path))
        import shutil  # only handlers that log artifacts pay for it

        target = os.path.join(self._outputs, ARTIFACTS, name)
        if os.path.lexists(target):
            shutil.rmtree(target)
        if kind == "dir":
            shutil.copytree(path, target, symlinks=True)
        else:
            os.makedirs(target)
            shutil.copy2(path, os.path.join(target, os.path.basename(path)))
        line = self._dumps({"name": name, "type": kind, "labels": labels or {}}) + "\n"
        with open(os.path.join(self._outputs, ARTIFACTS_INDEX), "a", encoding="utf-8") as file:
            file.write(line)

    def log(self, message):
        """Prints a line to the run's log (stdout), flushed at once."""
        print(message, flush=True)

    def __repr__(self):
        return "Context(run_id=%r, project=%r)" % (self.run_id, self.project)


def _is_artifact_name(name):
    """DNS-1123 label: what the server accepts as an artifact name."""
    if not isinstance(name, str) or not 0 < len(name) <= 63:
        return False
    if not (name[0].isalnum() and name[-1].isalnum()):
        return False
    return all(("a" <= c <= "z") or ("0" <= c <= "9") or c == "-" for c in name)


def _where(error, src):
    """`path:line` of the innermost place in the function's own code where `error` passed."""
    prefix = src + os.sep
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if filename.startswith(prefix):
            found = (filename, traceback.tb_lineno)
        traceback = traceback.tb_next
    # A syntax error's own location is more precise than the frame that imported the file.
    if isinstance(error, SyntaxError) and isinstance(error.filename, str) and error.filename.startswith(prefix):
        found = (error.filename, error.lineno)
    if found is None:
        return None
    return "%s:%s" % (found[0][len(prefix):], found[1])


def _message(error):
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not hide the original failure
        text = "<the exception's message cannot be shown>"
    if len(text) > MESSAGE_LIMIT:
        text = text[:MESSAGE_LIMIT] + "... (cut; the full message is in the log)"
    return text


def _fail(outputs, dumps, kind, message, where):
    record = {"type": kind, "message": message, "where": where}
    _write_atomically(os.path.join(outputs, ERROR), dumps(record))


def _report(error, outputs, dumps, src):
    """Prints the traceback to stderr (without the runner's own frames) and writes error.json."""
    import traceback

    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename in _RUNNER_FILES:
        frames = frames.tb_next
    traceback.print_exception(type(error), error, frames)
    sys.stderr.flush()
    _fail(outputs, dumps, type(error).__name__, _message(error), _where(error, src))


def _put_source_first(here, src):
    """Puts `src` first on sys.path, in place of the runner's own folder when Python put it there."""
    if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == os.path.realpath(here):
        sys.path[0] = src
    else:
        sys.path.insert(0, src)


def _module(name, src):
    """Imports the handler's module, which must be the function's own code."""
    __import__(name)
    module = sys.modules[name]
    origin = getattr(module, "__file__", None)
    if not origin or not os.path.abspath(origin).startswith(src + os.sep):
        raise HandlerNotFound(
            "module %s is not the function's own code: it resolves to %s; rename the module"
            % (name, origin or "a module built into Python")
        )
    return module


def _function(module, name):
    function = getattr(module, name, None)
    if function is None or not callable(function):
        raise HandlerNotFound("module %s has no function %s" % (module.__name__, name))
    return function


def _awaited(result):
    if hasattr(result, "cr_code") and hasattr(result, "send"):  # from an `async def`
        import asyncio

        result = asyncio.run(result)
    return result


def _call(run, src, outputs, dumps):
    function = _function(_module(run["module"], src), run["function"])
    arguments = dict(run["parameters"])
    if run["context"]:
        arguments["context"] = Context(run["run_id"], run["project"], dict(run["parameters"]), outputs, dumps)
    return _awaited(function(**arguments))


def main():
    outputs = os.environ.get("RUNPLANE_OUTPUTS")
    if not outputs:
        sys.stderr.write("runplane runner: RUNPLANE_OUTPUTS is not set; the framework must set it\n")
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(here, "src")
    loads, dumps = _codec()
    try:
        with open(os.path.join(here, "run.json"), encoding="utf-8") as file:
            run = loads(file.read())
    except Exception as error:
        sys.stderr.write("runplane runner: cannot read run.json: %s\n" % error)
        _fail(outputs, dumps, "RunnerError", "cannot read run.json: %s" % _message(error), None)
        return 2

    _put_source_first(here, src)
    # Relative paths in the handler's code resolve against its own source folder, as they do
    # when the user runs it from their project's folder.
    os.chdir(src)
    if run.get("mode") == "serve":
        serve = os.path.join(here, SERVE_FILE)
        with open(serve, encoding="utf-8") as file:
            code = compile(file.read(), serve, "exec")
        _RUNNER_FILES.add(serve)
        exec(code, globals())
        return _serve(run, src, outputs, dumps)  # noqa: F821 (defined by SERVE_FILE)
    try:
        result = _call(run, src, outputs, dumps)
    except Exception as error:
        _report(error, outputs, dumps, src)
        return 1

    try:
        text = dumps(result)
    except (TypeError, ValueError, RecursionError) as error:
        message = "the handler's return value is not JSON-serializable: %s" % _message(error)
        sys.stderr.write("runplane runner: %s\n" % message)
        _fail(outputs, dumps, "ResultNotSerializable", message, None)
        return 1
    limit = run.get("max_results_bytes")
    if isinstance(limit, int) and len(text) > limit:
        message = "the handler's return value is %d bytes of JSON, more than the %d allowed" % (len(text), limit)
        sys.stderr.write("runplane runner: %s\n" % message)
        _fail(outputs, dumps, "ResultTooLarge", message, None)
        return 1
    _write_atomically(os.path.join(outputs, RESULTS), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
