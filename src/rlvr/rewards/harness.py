"""What runs inside the code sandbox: a trusted judge and, in a process of its own, the untrusted program.

Standard library only, Python >= 3.8: it runs on the sandbox's interpreter, not in rlvr's environment.
`rlvr.rewards.sandbox` starts `python -I -S harness.py` (the judge) with a JSON job on stdin; the judge
answers with JSON lines on its stdout, each carrying the job's nonce.

Why two processes. The tests are never run in the program's process: a program can rewrite anything
in its own interpreter (builtins, `check`, the exit path, an `__eq__` that equals everything). The
judge holds the tests and the nonce, makes itself non-dumpable (so the program, same user, can neither
read its memory nor open its file descriptors), and forks the program's process before it reads the job,
leaving that process two pipes and nothing else.
- assert jobs: the judge runs the trusted context and tests; each name the tests call on the program
  is a proxy that sends the arguments to the worker and gets back the result as plain data (None, bool,
  numbers, str, bytes, list, tuple, dict, set, frozenset), so nothing the program makes can run in the
  judge. A pass is the judge reaching the end of the tests with the worker alive and well-behaved.
- stdio jobs: the judge runs the program once per input and reports its output; the caller compares
  it with the expected output, which never enters the sandbox.
"""

from __future__ import annotations

import builtins
import json
import os
import select
import selectors
import signal
import struct
import subprocess
import sys
import time
import traceback

MAX_MESSAGE = 16 << 20  # bytes of one request or reply between judge and worker
_HEADER = struct.Struct(">I")
_CHUNK = 4096  # bytes written to a pipe at a time: never blocks once select says it is writable
_DEPTH = 200  # nesting a value may have on its way between judge and worker


# ---------------------------------------------------------------- plain data across a pipe


def encode(value, depth=0):
    """`value` as JSON-ready data; containers are tagged so tuples, sets and dicts survive the trip."""
    if depth > _DEPTH:
        raise ValueError("value nested too deeply to pass between the tests and the program")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple, set, frozenset):
        items = sorted(value, key=repr) if kind in (set, frozenset) else value
        return {kind.__name__: [encode(v, depth + 1) for v in items]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind in (bytes, bytearray):
        return {kind.__name__: value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    if kind is range:
        return {"range": [value.start, value.stop, value.step]}
    if hasattr(kind, "__next__") and hasattr(kind, "__iter__"):  # a generator, map, filter...: its items
        return {"iterator": [encode(v, depth + 1) for v in value]}
    raise TypeError(f"a {kind.__name__} object cannot pass between the tests and the program (plain data only)")


_TAGS = {
    "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "iterator": iter,
}


def decode(data, depth=0):
    """The value `encode` made; anything else is a ValueError. Only builtin plain data comes out."""
    if depth > _DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"not an encoded value: {type(data).__name__}")
    (tag, body), = data.items()
    if tag in _TAGS:
        if type(body) is not list:
            raise ValueError(f"bad {tag}")
        return _TAGS[tag](decode(v, depth + 1) for v in body)
    if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    if tag in ("bytes", "bytearray") and type(body) is str:
        return (bytes if tag == "bytes" else bytearray).fromhex(body)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(*body)
    if tag == "range" and type(body) is list and len(body) == 3 and all(type(x) is int for x in body):
        return range(*body)
    raise ValueError(f"not an encoded value: tag {tag!r}")


def write_message(fd, message):
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    payload = memoryview(_HEADER.pack(len(data)) + data)
    while payload:
        payload = payload[os.write(fd, payload):]


def read_message(fd, deadline=None):
    """The next message, or None at end of file; a malformed one is a ValueError, none by `deadline`
    (time.monotonic) a TimeoutError."""
    header = _read_exactly(fd, _HEADER.size, deadline)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    body = _read_exactly(fd, size, deadline)
    if body is None:
        raise ValueError("message cut short")
    return json.loads(body)


def _read_exactly(fd, size, deadline):
    parts, left = [], size
    while left:
        if deadline is not None and not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError
        chunk = os.read(fd, left)
        if not chunk:
            if parts:
                raise ValueError("message cut short")
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------- a child's output, bounded in time and size


def communicate(proc, data, deadline, max_bytes):
    """Feed `data` to `proc`'s stdin (if piped) and collect its stdout and stderr, each up to `max_bytes`, until
    both close or `deadline` (time.monotonic) passes. Returns (stdout, stderr, timed_out, over_limit) and kills
    nothing: the caller stops the process when either flag is set."""
    selector = selectors.DefaultSelector()
    out = {}
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            out[stream.fileno()] = bytearray()
            selector.register(stream.fileno(), selectors.EVENT_READ)
    pending = memoryview(data)
    if proc.stdin is not None:
        if pending:
            selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
    stdout_fd = proc.stdout.fileno() if proc.stdout is not None else None
    stderr_fd = proc.stderr.fileno() if proc.stderr is not None else None

    def result(timed_out, over_limit):
        selector.close()
        return bytes(out.get(stdout_fd, b"")), bytes(out.get(stderr_fd, b"")), timed_out, over_limit

    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result(True, False)
        for key, _ in selector.select(remaining):
            fd = key.fd
            if fd in out:
                chunk = os.read(fd, 65536)
                if not chunk:
                    selector.unregister(fd)
                    continue
                out[fd] += chunk
                if len(out[fd]) > max_bytes:
                    del out[fd][max_bytes:]
                    return result(False, True)
            else:
                try:
                    pending = pending[os.write(fd, pending[:_CHUNK]):]
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    selector.unregister(fd)
                    proc.stdin.close()
    return result(False, False)


# ---------------------------------------------------------------- the worker: the untrusted program's process


class Worker:
    """The program's process. Forked from the judge before the job (and its nonce) is read, so its memory never
    holds them; it keeps only its two pipes, and serves the judge's requests until the judge hangs up."""

    def __init__(self):
        requests, self.requests = os.pipe()
        self.replies, replies = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                _serve(requests, replies)
            finally:
                os._exit(0)
        os.close(requests)
        os.close(replies)

    def reaped(self):
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            return True


def _serve(requests, replies):
    os.setsid()
    _die_with_parent()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the job's pipe and the judge's verdict channel among them; the program's prints go nowhere
        os.dup2(null, fd)
    keep = sorted({requests, replies})
    for low, high in zip([2, *keep], [*keep, os.sysconf("SC_OPEN_MAX")]):
        os.closerange(low + 1, high)
    namespace = {"__name__": "__program__", "__builtins__": builtins}
    while True:
        request = read_message(requests)
        if request is None:
            return
        try:
            if request["op"] == "load":
                _limiter(request["limits"])()
                exec(compile(request["source"], "<program>", "exec"), namespace)
                reply = {"ok": True}
            else:
                function = namespace.get(request["name"])
                if not callable(function):
                    raise NameError(f"the program defines no function {request['name']!r}")
                args, kwargs = decode(request["args"]), decode(request["kwargs"])
                value = function(*args, **kwargs)
                reply = {"ok": True, "value": encode(value), "args": encode(args)}
        except BaseException as exc:  # SystemExit and the like are the program's failures too
            reply = {"ok": False, "raise": type(exc).__name__, "message": _message(exc)}
        write_message(replies, reply)


# ---------------------------------------------------------------- the judge: trusted


class ProgramGone(BaseException):
    """The worker died, hung up or broke the protocol. A BaseException: a test's `except Exception` must not hide it."""


class ProgramError(Exception):
    """The program raised something with no builtin equivalent (or a BaseException such as SystemExit)."""


class Channel:
    def __init__(self, worker, deadline):
        self.worker, self.deadline, self.broken, self.calls, self.timed_out = worker, deadline, None, 0, False

    def request(self, message):
        if self.broken:
            raise ProgramGone(self.broken)
        try:
            write_message(self.worker.requests, message)
            reply = read_message(self.worker.replies, self.deadline)
        except BrokenPipeError:
            reply = None
        except TimeoutError:
            self.broken, self.timed_out = "the program ran out of time", True
            raise ProgramGone(self.broken) from None
        except (OSError, ValueError) as exc:
            self.broken = f"the program broke the protocol ({_text(exc)})"
            raise ProgramGone(self.broken) from None
        if reply is None:
            self.broken = "the program exited or was killed"
            raise ProgramGone(self.broken)
        if type(reply) is not dict or type(reply.get("ok")) is not bool:
            self.broken = "the program broke the protocol (a malformed reply)"
            raise ProgramGone(self.broken)
        return reply


class Proxy:
    """Stands for one of the program's functions in the tests."""

    def __init__(self, channel, name):
        self.channel, self.name = channel, name

    def __call__(self, *args, **kwargs):
        self.channel.calls += 1
        reply = self.channel.request({"op": "call", "name": self.name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        if not reply["ok"]:
            raise _exception(reply.get("raise"), reply.get("message"))
        try:
            value, after = decode(reply["value"]), decode(reply["args"])
        except (KeyError, ValueError, TypeError) as exc:
            self.channel.broken = f"the program broke the protocol ({_text(exc)})"
            raise ProgramGone(self.channel.broken) from None
        _write_back(args, after)
        return value

    def __repr__(self):
        return f"<the program's {self.name}>"


def _exception(name, message):
    message = str(message)[:1000]
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return ProgramError(f"{name}: {message}")


def _write_back(args, after):
    """Mutations the program made to list, dict, set and bytearray arguments, made to the tests' objects."""
    if type(after) is not list or len(after) != len(args):
        return
    for mine, theirs in zip(args, after):
        if type(mine) is type(theirs) and mine != theirs:
            if isinstance(mine, (list, bytearray)):
                mine[:] = theirs
            elif isinstance(mine, (dict, set)):
                mine.clear()
                mine.update(theirs)


def _message(exc):
    try:  # str() of a program's exception runs the program's code: it may raise too
        return str(exc)[:1000]
    except BaseException:
        return "(unprintable)"


def _text(exc):
    return f"{type(exc).__name__}: {_message(exc)}"


def _nondumpable():
    """No process of the same user may read this one's memory or open its file descriptors (PR_SET_DUMPABLE 0)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _die_with_parent():
    """PR_SET_PDEATHSIG: killed with the judge (what ends a program when there is no PID namespace to end it)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


def _limiter(limits):
    import resource

    def apply():
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))

    return apply


class Judge:
    def __init__(self, job):
        self.job = job
        self.limits = {"RLIMIT_AS": job["memory_bytes"], "RLIMIT_CPU": job["cpu_seconds"], "RLIMIT_FSIZE": job["file_bytes"], "RLIMIT_CORE": 0}
        own = {"RLIMIT_FSIZE": job["file_bytes"], "RLIMIT_CORE": 0}
        # RLIMIT_NPROC counts per user namespace only inside the sandbox; outside it would count the user's processes.
        # The program's own limits carry it too: its process was forked before this judge set its own.
        if job["private_pids"]:
            own["RLIMIT_NPROC"] = self.limits["RLIMIT_NPROC"] = job["max_processes"]
        _limiter(own)()

    def stop(self, pid, reaped):
        """End the program and everything it started; `reaped()` waits for the program without blocking."""
        private = self.job["private_pids"]
        if private:  # this judge is the PID namespace's init: kill(-1) reaches every other process in it
            for _ in range(1000):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
                if reaped():
                    _reap_orphans()
                time.sleep(0.001)
        else:  # its process group, and itself in case it has not made that group yet
            for kill, target in ((os.killpg, pid), (os.kill, pid)):
                try:
                    kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        while not reaped():
            time.sleep(0.001)
        if private:
            _reap_orphans()

    def run_asserts(self, worker):
        job = self.job
        channel = Channel(worker, time.monotonic() + job["timeout"])
        try:
            tests = {"__name__": "__tests__"}
            try:
                exec(compile(job["context"], "<context>", "exec"), tests)
            except BaseException as exc:  # trusted code that fails is a data problem, never the program's fail
                return {"harness_error": f"the tests' context failed: {_text(exc)}"}
            try:
                loaded = channel.request({"op": "load", "source": job["program"], "limits": self.limits})
                if not loaded["ok"]:
                    return {"passed": False, "error": f"the program failed to load: {loaded.get('raise')}: {str(loaded.get('message'))[:500]}"}
                for test_name, program_name in job["bind"]:
                    tests[test_name] = Proxy(channel, program_name)
                exec(compile(job["tests"], "<tests>", "exec"), tests)
            except BaseException as exc:
                return {"passed": False, "timed_out": channel.timed_out, "error": channel.broken or _text(exc) + _where(exc)}
            return {"passed": channel.broken is None, "timed_out": channel.timed_out, "error": channel.broken, "calls": channel.calls}
        finally:
            self.stop(worker.pid, worker.reaped)

    def run_stdio(self):
        job = self.job
        with open("main.py", "w", encoding="utf-8") as handle:
            handle.write(job["program"])
        limit = _limiter(self.limits)
        cases = []
        for text in job["inputs"]:
            deadline = time.monotonic() + job["timeout"]
            proc = subprocess.Popen([sys.executable, "-I", "main.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=lambda: (limit(), _die_with_parent()), start_new_session=True, close_fds=True)
            try:
                out, err, timed_out, over = communicate(proc, text.encode(), deadline, job["max_output"])
                if not (timed_out or over):
                    try:  # its output is complete: let it finish, within the same deadline
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        timed_out = True
            finally:
                self.stop(proc.pid, lambda: proc.poll() is not None)
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    stream.close()
            cases.append({"stdout": out.decode("utf-8", "replace"), "stderr": err[-2000:].decode("utf-8", "replace"),
                          "returncode": None if timed_out or over else proc.returncode, "timed_out": timed_out, "output_limited": over})
        return {"cases": cases}


def _reap_orphans():
    """As the namespace's init, collect the processes the program left behind (after the program itself is reaped
    by its owner, so its exit code is kept)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _where(exc):
    """The line of the tests that failed, e.g. ' (tests line 3: assert f(2) == 4)'."""
    for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if frame.f_code.co_filename == "<tests>":
            return f" (tests line {line})"
    return ""


def judge():
    _nondumpable()  # before the nonce is read
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a namespace's init, the only signal the program could send it
    worker = Worker()  # before the job is read: the program's process never holds it
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDWR)
    verdicts = os.fdopen(os.dup(1), "w")
    for fd in (0, 1):  # prints of the tests go nowhere; only this judge writes verdicts
        os.dup2(null, fd)
    nonce = job.pop("nonce")

    def emit(**event):
        verdicts.write(json.dumps({"nonce": nonce, **event}) + "\n")
        verdicts.flush()

    try:
        runner = Judge(job)
        emit(event="started")
        if job["mode"] == "assert":
            result = runner.run_asserts(worker)
        else:
            runner.stop(worker.pid, worker.reaped)  # stdin/stdout programs run as scripts of their own
            result = runner.run_stdio()
    except Exception as exc:  # a fault of the harness or its job, not of the program: the caller raises it
        result = {"harness_error": _text(exc) + "".join(traceback.format_tb(exc.__traceback__)[-2:])}
    emit(event="result", **result)


if __name__ == "__main__":
    judge()
