"""Running untrusted programs: each in a bubblewrap sandbox of its own, with limits and a deadline.

One run = one `bwrap` process, started as an unprivileged user (`user`, when rlvr runs as root), with
- new user, PID, network, IPC, UTS and cgroup namespaces: no network at all (not even the host's
  loopback), no host process visible or signalable, no capabilities, no further user namespaces;
- a read-only view of the system holding only /usr (and /bin, /lib... as on the host), the loader cache
  and `readonly_paths`: no home directories, no project files, no host /tmp, no /proc of the host;
- a private tmpfs /tmp of `tmp_mb`, the working directory; an empty environment (PATH, HOME, LANG only);
- per process: RLIMIT_AS (`memory_mb`), RLIMIT_CPU (`cpu_seconds`), RLIMIT_FSIZE (`max_file_mb`), no core
  files; RLIMIT_NPROC (`max_processes`), which the kernel counts per user namespace, so per sandbox;
- a wall-clock deadline: past it the whole sandbox is killed (its init dies with bwrap, and the kernel
  kills every process of a PID namespace whose init dies), and the run is a fail.
Inside, the trusted judge of `rlvr.rewards.harness` is the PID namespace's init (signals from the program do not
reach it) and runs the tests and the program as separate processes.

isolation=none runs the same judge without bwrap (limits and a process group only): opt-in, loudly unsafe.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.options import check, choose
from rlvr.rewards.harness import communicate

log = logging.getLogger(__name__)

HARNESS = Path(__file__).with_name("harness.py")
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
STARTUP_SECONDS = 2.0  # allowed on top of the program's time for bwrap and two interpreters to start
_STDERR_BYTES = 64 << 10  # what is kept of the judge's stderr, for error messages


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start, or the test data broke the judge): never the program's fault."""


@dataclass(frozen=True)
class AssertOutcome:
    passed: bool
    timed_out: bool
    seconds: float
    detail: str  # why it failed ("" when it passed)


@dataclass(frozen=True)
class CaseRun:
    stdout: str
    returncode: int | None  # None: killed (time or output limit)
    timed_out: bool
    output_limited: bool
    stderr: str


@dataclass(frozen=True)
class StdioOutcome:
    cases: list[CaseRun]  # one per input; empty when the whole run was killed
    timed_out: bool
    seconds: float
    detail: str


class Sandbox:
    """Runs a program against tests (`run_asserts`) or inputs (`run_stdio`) in a fresh sandbox per call; thread-safe.

    Construction checks the sandbox works end to end (one tiny program must pass) and refuses otherwise,
    naming the fix. `timeout_seconds` is the wall time of a program's tests, or of each stdin input.
    """

    def __init__(
        self,
        isolation: str = "bwrap",
        python: str = "/usr/bin/python3",
        timeout_seconds: float = 5.0,
        cpu_seconds: int = 5,
        memory_mb: int = 512,
        max_processes: int = 8,
        max_file_mb: int = 16,
        tmp_mb: int = 64,
        max_output_kb: int = 1024,
        user: int | None = 65534,
        readonly_paths: tuple[str, ...] | list[str] = (),
    ):
        self.bwrap = choose("reward.sandbox.isolation", isolation, {"bwrap": True, "none": False})
        if not isinstance(python, str) or not python:
            raise ValueError(f"reward.sandbox.python must be the path of a Python interpreter, got {python!r}")
        if isinstance(readonly_paths, (str, bytes)) or not isinstance(readonly_paths, Sequence):
            raise ValueError(f"reward.sandbox.readonly_paths must be a list of paths, got {readonly_paths!r}")
        self.timeout = check("reward.sandbox.timeout_seconds", timeout_seconds, low=0, low_open=True)
        self.cpu_seconds = check("reward.sandbox.cpu_seconds", cpu_seconds, integer=True, low=1)
        self.memory_mb = check("reward.sandbox.memory_mb", memory_mb, integer=True, low=64)
        self.max_processes = check("reward.sandbox.max_processes", max_processes, integer=True, low=4)  # init, judge, program, one more
        self.max_file_mb = check("reward.sandbox.max_file_mb", max_file_mb, integer=True, low=1)
        self.tmp_mb = check("reward.sandbox.tmp_mb", tmp_mb, integer=True, low=1)
        self.max_output = check("reward.sandbox.max_output_kb", max_output_kb, integer=True, low=1) * 1024
        self.user = check("reward.sandbox.user", user, integer=True, low=1, optional=True) if os.geteuid() == 0 else None
        self.readonly_paths = tuple(str(p) for p in readonly_paths)
        self.python = self._interpreter(python)
        self._harness = HARNESS.read_bytes()
        if self.bwrap:
            self._bwrap = shutil.which("bwrap")
            if self._bwrap is None:
                raise SandboxError(
                    "reward=code runs programs in a bubblewrap sandbox and `bwrap` is not installed: `apt-get install -y "
                    "bubblewrap` (Debian/Ubuntu), or accept running model-written code with process limits only: "
                    "reward.sandbox.isolation=none (unsafe)")
        else:
            log.warning("!!! reward.sandbox.isolation=none: model-written programs run WITHOUT a sandbox (process limits "
                        "only): they can read your files, use the network, fork without limit and outlive their deadline. Install "
                        "bubblewrap. !!!")
        self._self_test()

    # ---- the two kinds of run ---------------------------------------------------------------
    def run_asserts(self, program: str, context: str, tests: str, bind: list[tuple[str, str]] | tuple = (),
                    timeout: float | None = None) -> AssertOutcome:
        """Run trusted `context` then trusted `tests` in the judge; each (test name, program name) of `bind` is the
        program's function, called in the program's own process. Passed = the tests ran to the end. `timeout`
        replaces timeout_seconds for this run."""
        timeout = self.timeout if timeout is None else timeout
        job = {"mode": "assert", "program": program, "context": context, "tests": tests, "bind": [list(b) for b in bind], "timeout": timeout}
        events, timed_out, seconds, stderr = self._run(job, timeout + STARTUP_SECONDS, 1 << 20)
        result = events.get("result")
        if result is not None:
            return AssertOutcome(result.get("passed") is True, result.get("timed_out") is True, seconds, str(result.get("error") or ""))
        return AssertOutcome(False, timed_out, seconds, f"timed out after {timeout:g} s" if timed_out else "the judge was killed")

    def run_stdio(self, program: str, inputs: list[str], timeout: float | None = None) -> StdioOutcome:
        """Run `program` once per input (its stdin); the output of each, for the caller to compare. `timeout` replaces
        timeout_seconds for this run."""
        timeout = self.timeout if timeout is None else timeout
        job = {"mode": "stdio", "program": program, "inputs": list(inputs), "timeout": timeout, "max_output": self.max_output}
        wall = len(inputs) * (timeout + 0.5) + STARTUP_SECONDS
        cap = len(inputs) * (6 * self.max_output + (16 << 10)) + (1 << 20)  # JSON escapes a byte to at most 6
        events, timed_out, seconds, _ = self._run(job, wall, cap)
        result = events.get("result")
        if result is None:
            return StdioOutcome([], timed_out, seconds, f"timed out after {wall:g} s" if timed_out else "the judge was killed")
        cases = result.get("cases")
        if not isinstance(cases, list) or len(cases) != len(inputs):
            raise SandboxError(f"the sandbox's judge returned a malformed result: {str(result)[:300]}")
        return StdioOutcome([CaseRun(str(c["stdout"]), c["returncode"], bool(c["timed_out"]), bool(c["output_limited"]), str(c["stderr"]))
                             for c in cases], False, seconds, "")

    # ---- one sandbox ---------------------------------------------------------------------------
    def _run(self, job: dict[str, Any], wall: float, max_bytes: int) -> tuple[dict[str, dict], bool, float, str]:
        """Start the judge on `job`; its events by name, whether the deadline passed, seconds, stderr tail."""
        nonce = secrets.token_hex(16)
        job = {**job, "nonce": nonce, "private_pids": self.bwrap, "memory_bytes": self.memory_mb << 20, "cpu_seconds": self.cpu_seconds,
               "file_bytes": self.max_file_mb << 20, "max_processes": self.max_processes}
        start = time.monotonic()
        workdir = None if self.bwrap else tempfile.mkdtemp(prefix="rlvr-sandbox-")
        try:
            proc = self._start(workdir)
            try:
                out, err, timed_out, over = communicate(proc, json.dumps(job).encode(), start + wall, max_bytes)
                if not (timed_out or over):
                    try:
                        proc.wait(timeout=max(0.0, start + wall - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        timed_out = True
            finally:
                self._kill(proc)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        seconds = time.monotonic() - start
        stderr = err[-_STDERR_BYTES:].decode("utf-8", "replace")
        if over:
            raise SandboxError(f"the sandbox's judge wrote more than {max_bytes} bytes; stderr: {stderr[-500:]}")
        events = {}
        for line in out.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("nonce") == nonce and isinstance(event.get("event"), str):
                events.setdefault(event["event"], event)
        if "harness_error" in events.get("result", {}):
            raise SandboxError(f"the sandbox's judge failed (a test-data or harness problem, not the program's): {events['result']['harness_error']}")
        if "started" not in events:
            why = f"did not start within {wall:g} s (machine overloaded?)" if timed_out else f"failed to start (exit code {proc.returncode})"
            raise SandboxError(f"the code sandbox {why}: {stderr.strip()[-1000:] or 'no error output'}")
        return events, timed_out, seconds, stderr

    def _start(self, workdir: str | None) -> subprocess.Popen:
        as_user = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        common = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "start_new_session": True, **as_user}
        if not self.bwrap:
            (Path(workdir) / "harness.py").write_bytes(self._harness)
            if self.user is not None:
                os.chown(workdir, self.user, self.user)
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"}
            return subprocess.Popen([self.python, "-I", "-S", "harness.py"], cwd=workdir, env=env, **common)
        read, write = os.pipe()  # the harness's source, copied by bwrap into the sandbox (no host path needed)
        try:
            os.write(write, self._harness)
        finally:
            os.close(write)
        try:
            return subprocess.Popen(self._command(read), pass_fds=(read,), env={}, **common)
        finally:
            os.close(read)

    def _command(self, harness_fd: int) -> list[str]:
        view = []
        for path in (*SYSTEM_PATHS, *self.readonly_paths):
            if os.path.islink(path):
                view += ["--symlink", os.readlink(path), path]
            elif os.path.exists(path):
                view += ["--ro-bind", path, path]
        return [
            # --as-pid-1: the judge is the namespace's init, so the program cannot signal it, and when it exits the
            # kernel ends the namespace and bwrap reaps it (bwrap's own init would be left to the host's to reap).
            self._bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            "--hostname", "sandbox", *view, "--dev", "/dev", "--proc", "/proc", "--size", str(self.tmp_mb << 20), "--tmpfs", "/tmp",
            "--ro-bind-data", str(harness_fd), "/sandbox/harness.py", "--remount-ro", "/", "--chdir", "/tmp",
            "--", self.python, "-I", "-S", "/sandbox/harness.py",
        ]

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """Kill bwrap's process group: the sandbox's init dies with it, and with the init every process inside."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    # ---- checks at construction -----------------------------------------------------------------
    def _interpreter(self, python: str) -> str:
        resolved = shutil.which(python)
        if resolved is None:
            raise SandboxError(f"reward.sandbox.python={python!r} is not an executable (the sandbox's Python 3, e.g. /usr/bin/python3)")
        real = os.path.realpath(resolved)
        if not self.bwrap:
            return real
        visible = [os.path.realpath(p) for p in (*SYSTEM_PATHS, *self.readonly_paths) if os.path.exists(p)]
        if not any(real == v or real.startswith(v.rstrip("/") + "/") for v in visible):
            raise SandboxError(f"reward.sandbox.python={python!r} ({real}) is outside the sandbox's read-only view "
                               f"({', '.join(SYSTEM_PATHS)}): add its installation folder to reward.sandbox.readonly_paths")
        return real

    def _self_test(self) -> None:
        """One tiny program must pass, or the sandbox cannot work here: say why, before any model is loaded."""
        try:
            outcome = self.run_asserts("def f(x):\n    return x + 1\n", "", "assert f(1) == 2\n", [("f", "f")])
        except SandboxError as err:
            raise SandboxError(f"{err}. {self._advice()}") from None
        if not outcome.passed:
            raise SandboxError(f"the code sandbox's self-test failed ({outcome.detail}). {self._advice()}")

    def _advice(self) -> str:
        who = f" as uid {self.user} (reward.sandbox.user)" if self.user is not None else ""
        return (f"Check that `{self.python}` runs{who}, that unprivileged user namespaces are enabled "
                "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0), "
                "or run without a sandbox: reward.sandbox.isolation=none (unsafe)")
