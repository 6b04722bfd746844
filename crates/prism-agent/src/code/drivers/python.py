# Prism code-context driver for Python (and, with --shell, for bash). Written by prism-agent
# into the sandbox and started once per context. Protocol: JSON lines over fd 0, a unix socket
# shared with the agent. Commands: {"type":"run","code","env"} and {"type":"invoke",
# "code"|"path","handler","event"}. Events: stdout, stderr, result, display, error, end.
# A run's "env" is set for that run only and restored afterwards.
import ast, asyncio, base64, inspect, io, json, linecache, os, re, signal, socket, sys
import threading, traceback

_fd = os.dup(0)
_null = os.open(os.devnull, os.O_RDWR)
os.dup2(_null, 0)
_sock = socket.socket(fileno=_fd)
_rfile = _sock.makefile("rb")
_lock = threading.Lock()
os.environ.setdefault("MPLBACKEND", "Agg")


def _send(obj):
    data = (json.dumps(obj, default=str) + "\n").encode()
    with _lock:
        _sock.sendall(data)


class _Stream(io.TextIOBase):
    def __init__(self, name, fd):
        self._name, self._fd = name, fd

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if s:
            _send({"type": self._name, "text": s})
        return len(s)

    def fileno(self):
        return self._fd

    def isatty(self):
        return False


sys.stdin = open(os.devnull)
sys.stdout = _Stream("stdout", 1)
sys.stderr = _Stream("stderr", 2)

_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
)


def _bundle(val):
    try:
        data = {"text/plain": repr(val)}
    except Exception as e:  # a broken __repr__ must not kill the run
        data = {"text/plain": "<unrepresentable %s: %s>" % (type(val).__name__, e)}
    if isinstance(val, type):
        return data
    for mime, name in _REPRS:
        f = getattr(val, name, None)
        if not callable(f):
            continue
        try:
            r = f()
        except Exception:
            continue
        if isinstance(r, tuple):
            r = r[0]
        if r is None:
            continue
        if mime in ("image/png", "image/jpeg") and isinstance(r, (bytes, bytearray)):
            r = base64.b64encode(bytes(r)).decode()
        if mime == "application/json":
            try:
                json.dumps(r)
            except (TypeError, ValueError):
                continue
        data[mime] = r
    fig = sys.modules.get("matplotlib.figure")
    if fig is not None and isinstance(val, fig.Figure) and "image/png" not in data:
        buf = io.BytesIO()
        val.savefig(buf, format="png", bbox_inches="tight")
        data["image/png"] = base64.b64encode(buf.getvalue()).decode()
    return data


def display(*objs):
    """Shows objects as rich output (like IPython's display)."""
    for o in objs:
        _send({"type": "display", "data": _bundle(o)})


def _flush_figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        display(plt.figure(num))
    plt.close("all")


_ns = {"__name__": "__main__", "__builtins__": __builtins__, "display": display}
_count = 0


def _error(e, skip):
    tb = e.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    lines = traceback.format_exception(type(e), e, tb)
    _send({"type": "error", "name": type(e).__name__, "value": str(e),
           "traceback": "".join(lines)})


def _await(v):
    if inspect.iscoroutine(v):
        return asyncio.run(v)
    return v


def _run(code):
    global _count
    _count += 1
    name = "<cell-%d>" % _count
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        tree = ast.parse(code, name, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        _await(eval(compile(tree, name, "exec", flags=flags), _ns))
        val = None
        if last is not None:
            val = _await(eval(compile(last, name, "eval", flags=flags), _ns))
        _flush_figures()
        if val is not None:
            _ns["_"] = val
            _send({"type": "result", "data": _bundle(val)})
        return "ok"
    except SyntaxError as e:
        _send({"type": "error", "name": "SyntaxError", "value": str(e),
               "traceback": "".join(traceback.format_exception_only(type(e), e))})
    except BaseException as e:  # KeyboardInterrupt (interrupt) and SystemExit included
        _error(e, 1)
    return "error"


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _with_env(env, fn):
    """Calls fn() with env in os.environ (so also in the processes it starts), then puts back
    what was there before (or removes the names that were not set)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _invoke(msg):
    handler = msg.get("handler") or "handler"
    if not _IDENT.match(handler):
        _send({"type": "error", "name": "ValueError", "value": "handler must be an identifier",
               "traceback": ""})
        return "error"
    ns = {"__name__": "__prism_handler__", "__builtins__": __builtins__}
    try:
        path = msg.get("path")
        if path:
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
            with open(path) as f:
                code = f.read()
            name = path
        else:
            code, name = msg.get("code") or "", "<handler>"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        exec(compile(code, name, "exec"), ns)
        fn = ns.get(handler)
        if not callable(fn):
            raise NameError("no callable %r defined" % handler)
        result = _await(fn(msg.get("event")))
        try:
            json.dumps(result)
        except (TypeError, ValueError) as e:
            raise TypeError("the handler's result is not JSON: %s" % e) from None
        _send({"type": "result", "data": {"application/json": result,
                                          "text/plain": repr(result)}})
        return "ok"
    except SyntaxError as e:
        _send({"type": "error", "name": "SyntaxError", "value": str(e),
               "traceback": "".join(traceback.format_exception_only(type(e), e))})
    except BaseException as e:
        _error(e, 1)
    return "error"


class _Shell:
    """A persistent bash; each run sources a file and prints a marker with its status."""

    MARK = re.compile(rb"\x1fPRISM-END-(\d+)\x1f")

    def __init__(self):
        import queue, subprocess, tempfile
        self._dir = tempfile.mkdtemp(prefix="prism-shell-")
        self._done = queue.Queue()
        self._subprocess = subprocess
        self._start()

    def _start(self):
        sp = self._subprocess
        self.proc = sp.Popen(["bash", "--norc", "--noprofile"], stdin=sp.PIPE, stdout=sp.PIPE,
                             stderr=sp.PIPE, start_new_session=True)
        self.proc.stdin.write(b"trap 'return 130 2>/dev/null || :' INT\n")
        self.proc.stdin.flush()
        for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            threading.Thread(target=self._reader, args=(pipe, name), daemon=True).start()

    def _reader(self, pipe, name):
        buf = b""
        while True:
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                self._done.put((name, None))
                return
            buf += chunk
            while buf:
                m = self.MARK.search(buf)
                if m:
                    if m.start():
                        _send({"type": name, "text": buf[:m.start()].decode(errors="replace")})
                    self._done.put((name, int(m.group(1))))
                    buf = buf[m.end():]
                    continue
                i = buf.find(b"\x1f")
                keep = i if i != -1 and len(buf) - i < 64 else len(buf)
                if keep:
                    _send({"type": name, "text": buf[:keep].decode(errors="replace")})
                buf = buf[keep:]
                break

    def _env_files(self, env):
        """Two scripts around a cell: one exports env (remembering what each name held), one
        puts the old values back (or unsets the names that were not set)."""
        import shlex
        pre, post = [], []
        for k, v in env.items():
            if not _IDENT.match(k):
                raise ValueError("invalid environment variable name %r" % k)
            pre.append('if [ -n "${%s+x}" ]; then __prism_o_%s=$%s; else unset __prism_o_%s; fi; '
                       'export %s=%s' % (k, k, k, k, k, shlex.quote(v)))
            post.append('if [ -n "${__prism_o_%s+x}" ]; then %s=$__prism_o_%s; '
                        'unset __prism_o_%s; else unset %s; fi' % (k, k, k, k, k))
        paths = []
        for name, lines in (("pre.sh", pre), ("post.sh", post)):
            paths.append(os.path.join(self._dir, name))
            with open(paths[-1], "w") as f:
                f.write("\n".join(lines) + "\n")
        return paths

    def run(self, code, env):
        global _count
        _count += 1
        path = os.path.join(self._dir, "cell.sh")
        with open(path, "w") as f:
            f.write(code + "\n")
        try:
            pre, post = self._env_files(env)
        except ValueError as e:
            _send({"type": "error", "name": "ValueError", "value": str(e), "traceback": ""})
            return "error"
        m = "printf '\\037PRISM-END-%d\\037' \"$__prism_rc\""
        line = ". %s; . %s </dev/null; __prism_rc=$?; . %s; %s; %s >&2\n" % (pre, path, post, m, m)
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        rc, seen, interrupted = 0, 0, False
        while seen < 2:
            try:
                name, status = self._done.get()
            except KeyboardInterrupt:
                interrupted = True
                os.killpg(self.proc.pid, signal.SIGINT)
                continue
            seen += 1
            if status is None:
                self.proc.wait()
                self._drain()
                _send({"type": "error", "name": "ShellExited",
                       "value": "bash exited with status %s; a new shell was started (state lost)"
                       % self.proc.returncode, "traceback": ""})
                self._start()
                return "error"
            rc = status
        if interrupted:
            _send({"type": "error", "name": "KeyboardInterrupt", "value": "interrupted",
                   "traceback": ""})
            return "error"
        if rc != 0:
            _send({"type": "error", "name": "ExitStatus", "value": str(rc),
                   "traceback": "exit status %d" % rc})
            return "error"
        return "ok"

    def _drain(self):
        while not self._done.empty():
            self._done.get_nowait()


def main():
    shell = _Shell() if "--shell" in sys.argv else None
    _send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            line = _rfile.readline()
        except KeyboardInterrupt:
            continue
        if not line:
            return
        try:
            msg = json.loads(line)
            kind = msg.get("type")
            if kind == "run":
                code, env = msg.get("code", ""), msg.get("env") or {}
                if shell:
                    status = shell.run(code, env)
                else:
                    status = _with_env(env, lambda: _run(code))
            elif kind == "invoke" and shell is None:
                status = _invoke(msg)
            else:
                _send({"type": "error", "name": "ProtocolError",
                       "value": "unknown command %r" % kind, "traceback": ""})
                status = "error"
            _send({"type": "end", "status": status, "execution_count": _count})
        except KeyboardInterrupt:
            _send({"type": "end", "status": "error", "execution_count": _count})


main()
