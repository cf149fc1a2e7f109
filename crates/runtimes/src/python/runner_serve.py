"""The serve half of runplane's Python runner (docs/formats.md, "Serving").

`runner.py` compiles this file into its own namespace when `run.json` says `"mode": "serve"`;
it is kept apart so that jobs, which never need it, do not pay for compiling it (several times
what the job runner costs). It uses what `runner.py` defines (`Context`, `_module`, `_function`,
`_awaited`, `_report`, `_fail`, `_message`, `_RUNNER_FILES`) and only the standard library.
Nothing is ever printed on stdout: it belongs to the user's code.
"""

# Contract
#
# `run.json` keys: `mode` ("serve"), `module`, `function`, `context` (the handler declares a
# `context` parameter), `init_function` (a name in the same module, or null), `init_parameters`
# (what init is called with), `run_id`, `project`, `readiness_path`, `max_json_body_bytes`.
# Environment: `RUNPLANE_LISTEN_FD` (an inherited socket, already bound and listening: accept on
# it) or else `RUNPLANE_PORT` (bind 0.0.0.0:PORT); `RUNPLANE_REPLICA` (this replica's index).
#
# 1. The socket is taken (or bound) first, so that a client that connects while the code loads
#    gets an answer: 503 until init returned.
# 2. The module is imported and `init(context, **init_parameters)` called once, in the main
#    thread. A failure prints its traceback on stderr, writes error.json and exits 1.
# 3. Then every request is `handler(request)` (plus `context=` when declared), each connection
#    in its own thread, HTTP/1.1 keep-alive. `readiness_path` answers 200 (the handler never
#    sees it).
# 4. SIGTERM (or SIGINT): readiness answers 503, no new connection is accepted, idle keep-alive
#    connections are closed, requests in flight (streams too) finish, then the process exits 0.
#
# What a handler receives is a `Request`; what it may return is described in `_render`.

# A keep-alive connection may wait this long (seconds) for its next request, and any single
# read or write on a connection may block this long, before the connection is closed.
SERVE_SOCKET_TIMEOUT = 300
# Request body bytes a handler left unread that are read and dropped to keep the connection
# alive; past this the connection is closed instead.
DRAIN_LIMIT = 1024 * 1024
# Size of the reads `Request.body` and draining make.
READ_SIZE = 64 * 1024


class BadRequest(ValueError):
    """The request cannot be understood (its JSON body is malformed, its chunked framing is
    broken). A handler that lets it propagate answers 400 with `{"error": "BadRequest"}`."""


class _LengthBody:
    """A body of `Content-Length` bytes (0 when the request has no body)."""

    __slots__ = ("_rfile", "_left", "started", "broken")

    def __init__(self, rfile, length):
        self._rfile = rfile
        self._left = length
        self.started = False
        self.broken = False

    def known_length(self):
        return self._left

    def done(self):
        return self._left == 0

    def read(self, size=-1):
        if self._left == 0:
            return b""
        self.started = True
        if size is None or size < 0:
            data = self._rfile.read(self._left)
            expected = self._left
        else:
            # read1: whatever is available (at most one read from the socket), so that a
            # handler reading a slow upload is not held until `size` bytes arrived.
            data = self._rfile.read1(min(size, self._left)) if size else b""
            expected = 1 if size else 0
        if len(data) < expected:
            self.broken = True
            raise ConnectionError("the client closed the connection in the middle of the request body")
        self._left -= len(data)
        return data


class _ChunkedBody:
    """A `Transfer-Encoding: chunked` body, read a chunk at a time (never all of it at once
    unless asked)."""

    __slots__ = ("_rfile", "_left", "_done", "started", "broken")

    def __init__(self, rfile):
        self._rfile = rfile
        self._left = 0  # bytes left in the current chunk
        self._done = False
        self.started = False
        self.broken = False

    def known_length(self):
        return None

    def done(self):
        return self._done

    def _fail(self, message):
        self.broken = True
        raise BadRequest("malformed chunked request body: " + message)

    def _next_chunk(self):
        line = self._rfile.readline(1024)
        if not line.endswith(b"\n"):
            if not line:
                self.broken = True
                raise ConnectionError("the client closed the connection in the middle of the request body")
            self._fail("a chunk size line is too long")
        size = line.split(b";", 1)[0].strip()
        try:
            self._left = int(size, 16)
        except ValueError:
            self._fail("%r is not a chunk size" % size[:40])
        if self._left < 0:
            self._fail("negative chunk size")
        if self._left == 0:
            # Trailer fields, if any, end with an empty line; they are not kept.
            for _ in range(100):
                trailer = self._rfile.readline(8192)
                if trailer in (b"\r\n", b"\n"):
                    self._done = True
                    return
                if not trailer:
                    break
            self._fail("the trailer section does not end")

    def _end_of_chunk(self):
        if self._rfile.read(2) != b"\r\n":
            self._fail("a chunk does not end with CRLF")

    def read(self, size=-1):
        if size == 0 or self._done:
            return b""
        self.started = True
        parts = []
        while not self._done:
            if self._left == 0:
                self._next_chunk()
                continue
            if size is None or size < 0:
                data = self._rfile.read(self._left)
            else:
                data = self._rfile.read1(min(size, self._left))
            if not data:
                self.broken = True
                raise ConnectionError("the client closed the connection in the middle of the request body")
            self._left -= len(data)
            if self._left == 0:
                self._end_of_chunk()
            parts.append(data)
            if size is not None and size >= 0:
                # Like a socket's recv: what is there now, at most `size` bytes.
                break
        return b"".join(parts)


class _Stream:
    """`request.stream`: the request body read incrementally.

    `read(n)` returns at least 1 and at most `n` bytes (fewer than `n` when that is what has
    arrived, as a socket's `recv` does), and b"" once the body ended; `read()` returns all that
    is left.
    """

    __slots__ = ("_body",)

    def __init__(self, body):
        self._body = body

    def read(self, size=-1):
        return self._body.read(size)

    def readable(self):
        return True

    def __iter__(self):
        while True:
            data = self._body.read(READ_SIZE)
            if not data:
                return
            yield data


class Headers:
    """The request's headers: a read-only mapping with case-insensitive names.

    A header sent several times is one value joined with ", " (as HTTP allows); `get_all(name)`
    gives each value. Iterating gives the names as the client spelt them.
    """

    __slots__ = ("_values", "_names", "_all")

    def __init__(self, items):
        self._values = {}
        self._names = {}
        self._all = {}
        for name, value in items:
            key = name.lower()
            if key in self._values:
                self._values[key] += ", " + value
                self._all[key].append(value)
            else:
                self._values[key] = value
                self._names[key] = name
                self._all[key] = [value]

    def __getitem__(self, name):
        if not isinstance(name, str):
            raise KeyError(name)
        return self._values[name.lower()]

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def get_all(self, name):
        return list(self._all.get(name.lower(), ())) if isinstance(name, str) else []

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self):
        return iter(self._names.values())

    def __len__(self):
        return len(self._values)

    def keys(self):
        return list(self._names.values())

    def values(self):
        return [self._values[key] for key in self._names]

    def items(self):
        return [(self._names[key], self._values[key]) for key in self._names]

    def __repr__(self):
        return "Headers(%r)" % dict(self.items())


def _is_json_type(content_type):
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


class Request:
    """What a serve handler is called with.

    - `method`: "GET", "POST", ...
    - `path`: the path of the request's target as the replica received it, without the query
      string and not percent-decoded, e.g. "/predict";
    - `query_string`: the raw query string ("" when none);
    - `query`: the query string decoded into a dict: name -> str, or name -> list of str when
      the name is repeated (`?a=1&a=2` gives `{"a": ["1", "2"]}`);
    - `headers`: a `Headers` mapping (case-insensitive names);
    - `body`: the whole body as bytes, read on first access;
    - `json`: the body decoded from JSON when the Content-Type is JSON (`application/json` or
      `...+json`), else None; an empty body is None. The runner decodes bodies of up to
      `max_json_body_bytes` with a Content-Length before calling the handler (malformed JSON
      answers 400 without calling it); others are decoded on first access, which raises
      `BadRequest` (answered 400 if the handler lets it propagate);
    - `stream`: the body as a file-like object to read incrementally (`read(n)`, iteration), for
      bodies too large to hold in memory; chunked request bodies are supported.
    `body` and `stream` read the same bytes: once `stream` was read from, `body` raises.
    """

    __slots__ = ("method", "path", "query_string", "query", "headers", "_reader", "_body", "_stream", "_json", "_decoded")

    def __init__(self, method, path, query_string, query, headers, reader):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.query = query
        self.headers = headers
        self._reader = reader
        self._body = None
        self._stream = None
        self._json = None
        self._decoded = False

    @property
    def body(self):
        if self._body is None:
            if self._reader.started:
                raise RuntimeError("request.body: the body was already read through request.stream")
            self._body = self._reader.read()
        return self._body

    @property
    def stream(self):
        if self._stream is None:
            if self._body is not None:
                import io

                self._stream = io.BytesIO(self._body)
            else:
                self._stream = _Stream(self._reader)
        return self._stream

    @property
    def json(self):
        if not self._decoded:
            self._json = _decode_json(self.headers.get("Content-Type"), self.body)
            self._decoded = True
        return self._json

    def __repr__(self):
        return "Request(%s %s)" % (self.method, self.path)


def _decode_json(content_type, body):
    if not _is_json_type(content_type) or not body:
        return None
    import json

    try:
        return json.loads(body)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest("the request body is not valid JSON: %s" % error) from None


def _query(text):
    from urllib.parse import parse_qsl

    query = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name not in query:
            query[name] = value
        elif isinstance(query[name], list):
            query[name].append(value)
        else:
            query[name] = [query[name], value]
    return query


class ResponseError(Exception):
    """The handler returned something that cannot be sent (answered 500)."""


_END = object()
_stderr_lock = None


def _log_exception(error, note=None):
    """Prints `error`'s traceback (without the runner's frames) on stderr, in one piece even when
    several threads fail at once."""
    import traceback

    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename in _RUNNER_FILES:
        frames = frames.tb_next
    text = "".join(traceback.format_exception(type(error), error, frames))
    if note:
        text = "runplane runner: %s\n%s" % (note, text)
    with _stderr_lock:
        sys.stderr.write(text)
        sys.stderr.flush()


def _encode_item(item, dumps):
    """One item of a streamed response as bytes: str as UTF-8, bytes as they are, a dict or a
    list as one line of JSON."""
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (dict, list)):
        return (dumps(item) + "\n").encode("utf-8")
    raise ResponseError(
        "a streamed response can yield str, bytes, dict or list, not %s" % type(item).__name__
    )


def _render(result, dumps):
    """What the handler returned, as `(status, headers, payload, iterator)`: `headers` a list of
    pairs, and exactly one of `payload` (bytes) and `iterator` (a streamed response) set.

    - dict or list (or a number or a bool) -> JSON, `application/json`;
    - str -> `text/plain; charset=utf-8`; bytes, bytearray -> `application/octet-stream`;
    - None -> 204 No Content;
    - an iterator or a generator -> a streamed response (`Transfer-Encoding: chunked`), each
      item sent as soon as it is produced: str as UTF-8, bytes as they are, dict/list as one
      JSON line (the Content-Type follows the first item: text/plain, octet-stream or
      application/x-ndjson);
    - `(status, body)` or `(status, body, headers)`: any of the above with that status (200 to
      599) and extra headers (a dict; they override Content-Type, while Content-Length,
      Transfer-Encoding and Connection are the runner's to set).
    """
    status, extra = 200, None
    if type(result) is tuple:
        if len(result) not in (2, 3):
            raise ResponseError(
                "a tuple return value is (status, body) or (status, body, headers), not %d items" % len(result)
            )
        if len(result) == 3:
            extra = result[2]
        status, result = result[0], result[1]
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ResponseError("the status must be an int from 200 to 599, not %r" % (status,))
    elif result is None:
        status = 204
    headers = _extra_headers(extra)

    iterator = None
    if result is None:
        payload, content_type = b"", None
    elif isinstance(result, str):
        payload, content_type = result.encode("utf-8"), "text/plain; charset=utf-8"
    elif isinstance(result, (bytes, bytearray, memoryview)):
        payload, content_type = bytes(result), "application/octet-stream"
    elif isinstance(result, (dict, list, int, float)):  # bool is an int
        try:
            payload = dumps(result).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as error:
            raise ResponseError("the handler's return value is not JSON-serializable: %s" % _message(error)) from None
        content_type = "application/json"
    elif hasattr(result, "__next__") and hasattr(result, "__iter__"):
        payload, content_type, iterator = None, None, result
    else:
        raise ResponseError(
            "cannot send a %s: return a dict, list, str, bytes, None, an iterator or a (status, body[, headers]) tuple"
            % type(result).__name__
        )
    if content_type and not any(name.lower() == "content-type" for name, _ in headers):
        headers.insert(0, ("Content-Type", content_type))
    return status, headers, payload, iterator


# Headers framing belongs to the runner: a handler's value would contradict the body it sends.
_FRAMING = ("content-length", "transfer-encoding", "connection")


def _extra_headers(extra):
    if extra is None:
        return []
    if not hasattr(extra, "items"):
        raise ResponseError("the headers of a (status, body, headers) return value must be a dict, not %s" % type(extra).__name__)
    headers = []
    for name, value in extra.items():
        value = str(value)
        if not isinstance(name, str) or not name or any(c in name for c in " \t\r\n:") or "\r" in value or "\n" in value:
            raise ResponseError("invalid response header %r: %r" % (name, value))
        if name.lower() not in _FRAMING:
            headers.append((name, value))
    return headers


def _error_payload(kind, message, dumps):
    return dumps({"error": kind, "message": message}).encode("utf-8")


def _listening_socket():
    """The socket to accept on: inherited (`RUNPLANE_LISTEN_FD`, already bound and listening)
    or bound here (`RUNPLANE_PORT`). `(socket, None)` or `(None, problem)`."""
    import socket

    fd = os.environ.get("RUNPLANE_LISTEN_FD")
    port = os.environ.get("RUNPLANE_PORT")
    try:
        if fd:
            listener = socket.socket(fileno=int(fd))
            # Not passed on to processes the handler starts: they must not hold the port.
            listener.set_inheritable(False)
            listener.setblocking(True)
            if not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                listener.listen(128)
            return listener, None
        if port:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("0.0.0.0", int(port)))
            listener.listen(128)
            return listener, None
    except (OSError, ValueError) as error:
        return None, "cannot listen (RUNPLANE_LISTEN_FD=%s, RUNPLANE_PORT=%s): %s" % (fd, port, error)
    return None, "neither RUNPLANE_LISTEN_FD nor RUNPLANE_PORT is set; the framework must set one"


def _exit(code):
    """Ends the process now: threads the user's code started must not keep a stopped replica
    alive until SIGKILL."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _serve(run, src, outputs, dumps):
    global _stderr_lock
    import signal
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    _stderr_lock = threading.Lock()
    listener, problem = _listening_socket()
    if listener is None:
        sys.stderr.write("runplane runner: %s\n" % problem)
        _fail(outputs, dumps, "RunnerError", problem, None)
        return 2

    readiness_path = run.get("readiness_path") or "/_runplane/ready"
    max_json = run.get("max_json_body_bytes")
    if not isinstance(max_json, int):
        max_json = 16 * 1024 * 1024
    try:
        replica = int(os.environ.get("RUNPLANE_REPLICA", "0"))
    except ValueError:
        replica = None
    init_parameters = dict(run.get("init_parameters") or {})
    # One context for init and every request; its `parameters` are init's (a copy, so that
    # init changing them does not change what it was called with).
    context = Context(run["run_id"], run["project"], dict(init_parameters), outputs, dumps, replica)

    class State:
        lock = threading.Lock()
        idle = set()  # connections waiting for their next request
        ready = False
        draining = False
        handler = None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = SERVE_SOCKET_TIMEOUT
        # Small responses and stream chunks leave at once.
        disable_nagle_algorithm = True

        def version_string(self):
            return "runplane"

        def log_message(self, format, *args):
            # No access log: the run's log belongs to the user's code.
            pass

        def handle_one_request(self):
            connection = self.connection
            with State.lock:
                if State.draining:
                    self.close_connection = True
                    return
                State.idle.add(connection)
            try:
                line = self.rfile.readline(65537)
            except OSError:  # a timeout, a reset, or the socket shut down while draining
                line = b""
            finally:
                with State.lock:
                    State.idle.discard(connection)
            if not line:
                self.close_connection = True
                return
            self.raw_requestline = line
            if len(line) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():
                return
            try:
                self._respond()
            except (ConnectionError, OSError):
                # The client went away (or timed out); nothing more can be said to it.
                self.close_connection = True

        def send_error(self, code, message=None, explain=None):
            # Used by `parse_request` for requests that cannot be parsed: answered in JSON, and
            # the connection closed since where the next request starts is unknown.
            self.close_connection = True
            phrase = self.responses.get(code, ("Error",))[0]
            kind = "BadRequest" if 400 <= code < 500 else phrase.replace(" ", "").replace("-", "")
            self._send(code, [("Content-Type", "application/json")], _error_payload(kind, message or phrase, dumps))

        def _send(self, status, headers, payload):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(payload)))
            if self.close_connection or State.draining:
                self.send_header("Connection", "close")
            self.end_headers()
            if payload and status not in (204, 304) and self.command != "HEAD":
                self.wfile.write(payload)

        def _send_error(self, status, kind, message):
            self._send(status, [("Content-Type", "application/json")], _error_payload(kind, message, dumps))

        def _body(self):
            """The request body's reader, or None after answering 400."""
            encoding = self.headers.get("Transfer-Encoding")
            length = self.headers.get("Content-Length")
            if encoding is not None:
                if encoding.split(",")[-1].strip().lower() != "chunked":
                    self.close_connection = True
                    self._send_error(400, "BadRequest", "unsupported Transfer-Encoding %r" % encoding)
                    return None
                if length is not None:
                    # Both framings at once is how requests are smuggled: serve this one by
                    # the chunked framing, as HTTP says, and trust nothing after it.
                    self.close_connection = True
                return _ChunkedBody(self.rfile)
            if length is None:
                return _LengthBody(self.rfile, 0)
            length = length.strip()
            if not length.isdigit() or len(self.headers.get_all("Content-Length") or ()) > 1:
                self.close_connection = True
                self._send_error(400, "BadRequest", "invalid Content-Length %r" % length)
                return None
            return _LengthBody(self.rfile, int(length))

        def _settle(self, body):
            """Reads what the handler left of the body, so that the next request on this
            connection starts where it should; closes the connection when that is too much."""
            if body.broken:
                self.close_connection = True
                return
            dropped = 0
            try:
                while not body.done() and dropped <= DRAIN_LIMIT:
                    dropped += len(body.read(READ_SIZE))
            except (ValueError, OSError):
                pass
            if not body.done():
                self.close_connection = True

        def _respond(self):
            target = self.path
            path, _, query_string = target.partition("?")
            body = self._body()
            if body is None:
                return
            if path == readiness_path:
                self._settle(body)
                if State.ready and not State.draining:
                    payload = dumps({"ready": True, "replica": replica}).encode("utf-8")
                    self._send(200, [("Content-Type", "application/json")], payload)
                else:
                    self._send_error(503, "NotReady", "draining" if State.draining else "the replica is starting")
                return
            if not State.ready:
                self._settle(body)
                self._send_error(503, "NotReady", "the replica is starting (its init function has not returned yet)")
                return

            request = Request(self.command, path, query_string, _query(query_string), Headers(self.headers.items()), body)
            length = body.known_length()
            if length and length <= max_json and _is_json_type(request.headers.get("Content-Type")):
                try:
                    request.json
                except BadRequest as error:
                    self._settle(body)
                    self._send_error(400, "BadRequest", str(error))
                    return
                except OSError:
                    self.close_connection = True
                    return

            try:
                if run["context"]:
                    result = State.handler(request, context=context)
                else:
                    result = State.handler(request)
                result = _awaited(result)
                status, headers, payload, iterator = _render(result, dumps)
            except BadRequest as error:
                self._settle(body)
                self._send_error(400, "BadRequest", str(error))
                return
            except Exception as error:
                _log_exception(error, "%s %s failed:" % (self.command, path))
                if body.broken:
                    self.close_connection = True
                else:
                    self._settle(body)
                self._send_error(500, type(error).__name__, _message(error))
                return
            if iterator is None:
                self._settle(body)
                self._send(status, headers, payload)
            else:
                self._stream(status, headers, iterator, body)

        def _stream(self, status, headers, iterator, body):
            try:
                try:
                    first = next(iterator, _END)
                    data = b"" if first is _END else _encode_item(first, dumps)
                except Exception as error:
                    # Nothing was sent yet: this is still a clean 500.
                    _log_exception(error, "%s %s failed:" % (self.command, self.path))
                    self._settle(body)
                    self._send_error(500, type(error).__name__, _message(error))
                    return
                if not any(name.lower() == "content-type" for name, _ in headers):
                    headers.append(("Content-Type", _stream_type(first)))
                chunked = self.request_version != "HTTP/1.0"
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                if not chunked or State.draining or self.close_connection:
                    # An HTTP/1.0 client learns where the body ends when the connection closes.
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                write = self.wfile.write
                item = first
                try:
                    while item is not _END:
                        if data:
                            try:
                                write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                            except OSError:  # the client went away
                                self.close_connection = True
                                return
                        item = next(iterator, _END)
                        if item is not _END:
                            data = _encode_item(item, dumps)
                except Exception as error:
                    # Headers and part of the body are out: the only honest signal left is a
                    # response that breaks off (no last chunk), so the client sees an error.
                    _log_exception(error, "%s %s failed while streaming its response:" % (self.command, self.path))
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if chunked:
                    write(b"0\r\n\r\n")
                self._settle(body)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception as error:
                        _log_exception(error, "closing the streamed response failed:")

    class Server(ThreadingHTTPServer):
        # Connection threads are joined on close, so that a stop lets requests in flight end.
        daemon_threads = False
        block_on_close = True

        def handle_error(self, request, client_address):
            _log_exception(sys.exc_info()[1], "error while serving a connection:")

    server = Server(listener.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.server_address = listener.getsockname()
    threading.Thread(target=server.serve_forever, name="runplane-accept", daemon=True).start()

    try:
        module = _module(run["module"], src)
        State.handler = _function(module, run["function"])
        if run.get("init_function"):
            init = _function(module, run["init_function"])
            _awaited(init(context, **init_parameters))
    except Exception as error:
        _report(error, outputs, dumps, src)
        _exit(1)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    State.ready = True
    stop.wait()

    with State.lock:
        State.draining = True
        idle = list(State.idle)
    for connection in idle:
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    server.shutdown()  # the accept loop ends (it checks every half second)
    server.server_close()  # the listening socket closes, then requests in flight are waited for
    _exit(0)


def _stream_type(first):
    if isinstance(first, str):
        return "text/plain; charset=utf-8"
    if isinstance(first, (dict, list)):
        return "application/x-ndjson"
    return "application/octet-stream"
