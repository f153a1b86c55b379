"""The code sandbox: hostile and broken programs are fails, within their time limit, and leave the host alone.

Needs bubblewrap (`.ci/sandbox.sh` installs it); without it these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlvr.rewards import sandbox as sandbox_module
from rlvr.rewards.harness import decode, encode
from rlvr.rewards.sandbox import STARTUP_SECONDS, Sandbox, SandboxError

TIMEOUT = 1.5  # wall seconds per program (per input for stdin/stdout runs)
LIMITS = {"timeout_seconds": TIMEOUT, "cpu_seconds": 1, "memory_mb": 256, "max_processes": 8, "max_file_mb": 1, "tmp_mb": 8, "max_output_kb": 64}
# A run may take its time limit, the sandbox's start-up allowance, and a margin for a busy machine.
DEADLINE = TIMEOUT + STARTUP_SECONDS + 2.0
SANDBOX_UID = 65534


@pytest.fixture(scope="module")
def box():
    return Sandbox(**LIMITS)


def sandbox_processes() -> list[int]:
    """Host processes running as the sandbox's uid (none may outlive a run)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:")).split()[1]
            except (OSError, StopIteration):
                continue
            if int(uid) == SANDBOX_UID:
                pids.append(int(entry.name))
    return pids


def assert_none_left(before: set[int], what: str) -> None:
    """No process of the sandbox's uid that was not there before outlives the run (the kernel may take a moment)."""
    for _ in range(50):
        left = set(sandbox_processes()) - before
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} left processes behind: {sorted(left)}")


def observe(box: Sandbox, program: str, stdin: str = "") -> dict:
    """Run a probe that prints one JSON object of what it could see or do, and return that object."""
    run = box.run_stdio(program, [stdin])
    (case,) = run.cases
    assert case.returncode == 0, case.stderr
    return json.loads(case.stdout)


# ---------------------------------------------------------------- honest programs


def test_a_correct_program_passes_and_a_wrong_one_fails(box):
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
    assert box.run_asserts("def add(a, b):\n    return a + b\n", "", tests, [("add", "add")]).passed
    wrong = box.run_asserts("def add(a, b):\n    return a - b\n", "", tests, [("add", "add")])
    assert not wrong.passed and "AssertionError" in wrong.detail and "tests line 1" in wrong.detail


def test_values_keep_their_types_and_exceptions_their_class(box):
    program = (
        "def echo(x):\n    return x\n"
        "def gen(n):\n    return (i * i for i in range(n))\n"
        "def boom():\n    raise KeyError('k')\n"
        "def sort_in_place(items):\n    items.sort()\n"
    )
    tests = (
        "value = [(1, 2.5), {3: frozenset({4})}, b'\\x00', None, True, 1 + 2j, 10 ** 30, float('inf'), 'é']\n"
        "assert echo(value) == value and type(echo((1,))) is tuple and echo(True) is True\n"
        "assert list(gen(4)) == [0, 1, 4, 9]\n"
        "try:\n    boom()\nexcept KeyError:\n    pass\nelse:\n    raise AssertionError('no KeyError')\n"
        "items = [3, 1, 2]\nsort_in_place(items)\nassert items == [1, 2, 3]\n"
    )
    outcome = box.run_asserts(program, "", tests, [(n, n) for n in ("echo", "gen", "boom", "sort_in_place")])
    assert outcome.passed, outcome.detail


def test_stdio_programs_get_their_input_and_their_exit_code_is_kept(box):
    run = box.run_stdio("import sys\nnums = sys.stdin.read().split()\nprint(sum(map(int, nums)))\nsys.exit(int(nums[0] == '0'))\n", ["1 2", "0 5\n"])
    assert [(c.stdout, c.returncode) for c in run.cases] == [("3\n", 0), ("5\n", 1)]


def test_the_codec_refuses_what_is_not_plain_data():
    value = {"a": [1, (2, {3})], (4, 5): b"x", "r": range(2, 8, 3), "c": 1j}
    assert decode(json.loads(json.dumps(encode(value)))) == value
    for odd in (object(), lambda: 0, type("Liar", (int,), {})(3), [1, {2: object()}]):
        with pytest.raises(TypeError, match="plain data"):
            encode(odd)
    for forged in ([1, 2], {"list": 3}, {"tuple": [1], "x": 2}, {"object": []}, {"dict": [[1]]}):
        with pytest.raises(ValueError):
            decode(forged)


# ---------------------------------------------------------------- the hostile battery: each one a fail, in time

HOSTILE = {
    "infinite loop at load": "while True:\n    pass\n",
    "infinite loop in the call": "def f():\n    while True:\n        pass\n",
    "sleeps past the deadline": "import time\ndef f():\n    time.sleep(600)\n    return 1\n",
    "fork bomb": "import os\ndef f():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    "memory hog": "def f():\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 24))\n",
    "huge output": "def f():\n    while True:\n        print('x' * 65536)\n",
    "huge file": "def f():\n    with open('/tmp/big', 'wb') as out:\n        while True:\n            out.write(bytes(1 << 20))\n    return 1\n",
    "exit(0) at load": "import sys\nsys.exit(0)\n",
    "os._exit(0) at load": "import os\nos._exit(0)\n",
    "exit(0) in the call": "import sys\ndef f():\n    sys.exit(0)\n",
    "os._exit(0) in the call": "import os\ndef f():\n    os._exit(0)\n",
    "kills its judge": "import os, signal\ndef f():\n    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):\n        os.kill(os.getppid(), sig)\n    return 0\n",
    "kills every process it can": "import os, signal\ndef f():\n    os.kill(-1, signal.SIGKILL)\n    return 0\n",
    "crashes the interpreter": "import ctypes\ndef f():\n    return ctypes.string_at(0)\n",
    "prints fake success markers": (
        "import json, os\n"
        "for fd in range(1, 64):\n"
        "    for line in ('PASSED\\n', json.dumps({'nonce': '0' * 32, 'event': 'result', 'passed': True}) + '\\n'):\n"
        "        try:\n            os.write(fd, line.encode())\n        except OSError:\n            pass\n"
        "def f():\n    return 0\n"
    ),
    "an object equal to everything": "class Anything:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Anything()\n",
    "an int equal to everything": "class Liar(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\ndef f():\n    return Liar(0)\n",
    "patches builtins and check": (
        "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\nbuiltins.abs = lambda x: 0\n"
        "def check(candidate):\n    return True\ndef f():\n    return 0\n"
    ),
    "overwrites the harness": "def f():\n    with open('/sandbox/harness.py', 'w') as out:\n        out.write('print(1)')\n    return 1\n",
}
# Passing needs f() == 1: the right answer here is the one the program cannot give honestly (it returns something else).
HOSTILE_TESTS = "def check(candidate):\n    assert abs(candidate() - 1) < 0.5\ncheck(f)\nassert f() == 1\n"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_fails_within_its_time_limit(box, name):
    before = set(sandbox_processes())
    start = time.monotonic()
    outcome = box.run_asserts(HOSTILE[name], "", HOSTILE_TESTS, [("f", "f")])
    elapsed = time.monotonic() - start
    assert not outcome.passed, f"{name} passed"
    assert elapsed < DEADLINE, f"{name} took {elapsed:.1f} s"
    assert_none_left(before, name)


def test_stdio_flood_is_cut_at_the_output_limit(box):
    start = time.monotonic()
    run = box.run_stdio("while True:\n    print('y' * 4096)\n", ["", ""])
    assert time.monotonic() - start < 2 * DEADLINE
    assert all(c.output_limited and c.returncode is None and len(c.stdout) <= LIMITS["max_output_kb"] * 1024 for c in run.cases)


def test_stdio_endless_program_times_out_per_input(box):
    run = box.run_stdio("import time\ntime.sleep(600)\n", ["", ""])
    assert [c.timed_out for c in run.cases] == [True, True] and not run.timed_out


def test_expected_output_never_enters_the_sandbox(box, tmp_path):
    # The caller compares outputs; a program that dumps everything it can read must not find the expected one.
    from rlvr.data.code import CodeTests
    from rlvr.rewards.code import CodeReward

    secret = secrets.token_hex(12)
    example = _example(CodeTests("stdio", cases=(("", secret),)))
    reward = CodeReward(box, workers=1)
    snoop = (
        "```python\nimport glob\n"
        "for path in glob.glob('/proc/[0-9]*/*') + glob.glob('/tmp/**', recursive=True) + glob.glob('/sandbox/*'):\n"
        "    try:\n        print(open(path, errors='replace').read(100000))\n    except Exception:\n        pass\n```"
    )
    rewards, correct, errors = reward([snoop], [example])
    assert rewards.tolist() == [0.0] and not correct.any() and errors == 0


# ---------------------------------------------------------------- what the program can see and do


def test_no_secret_from_the_environment_or_the_host_files(box, tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("hunter2")
    seen = observe(box, (
        "import json, os\nfound = {}\n"
        f"for path in ({str(secret_file)!r}, '/etc/shadow', '/etc/passwd', '/root', '/home', '/work', '{Path.cwd()}'):\n"
        "    try:\n        found[path] = os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
        "    except OSError as err:\n        found[path] = type(err).__name__\n"
        "print(json.dumps({'env': dict(os.environ), 'files': found, 'root': sorted(os.listdir('/'))}))\n"
    ))
    assert "hunter2" not in json.dumps(seen)
    assert set(seen["env"]) <= {"PATH", "HOME", "LANG", "PWD", "LC_CTYPE"}
    assert all(v in ("FileNotFoundError", "PermissionError") for v in seen["files"].values()), seen["files"]
    assert set(seen["root"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "tmp", "sandbox"}


def test_writes_outside_the_private_tmp_fail_and_reach_nothing(box, tmp_path):
    escaped = tmp_path / "escaped"
    seen = observe(box, (
        "import json\nresult = {}\n"
        f"for path in ({str(escaped)!r}, '/usr/lib/rlvr-escape', '/etc/rlvr-escape', '/sandbox/harness.py', '/tmp/allowed'):\n"
        "    try:\n        open(path, 'w').write('x')\n        result[path] = 'written'\n"
        "    except OSError as err:\n        result[path] = type(err).__name__\n"
        "print(json.dumps(result))\n"
    ))
    assert seen.pop("/tmp/allowed") == "written"
    assert "written" not in seen.values(), seen
    assert not escaped.exists() and not Path("/usr/lib/rlvr-escape").exists() and not Path("/etc/rlvr-escape").exists()


def test_no_network_not_even_the_hosts_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    seen = observe(box, (
        "import json, socket\nresult = {}\n"
        f"for host, port in (('127.0.0.1', {port}), ('1.1.1.1', 53), ('10.0.0.1', 80)):\n"
        "    try:\n        socket.create_connection((host, port), timeout=1).close()\n        result[host] = 'connected'\n"
        "    except OSError as err:\n        result[host] = type(err).__name__\n"
        "print(json.dumps(result))\n"
    ))
    assert "connected" not in seen.values(), seen
    with pytest.raises(socket.timeout):
        server.accept()  # nobody came
    server.close()


def test_the_host_and_the_judge_are_out_of_reach(box):
    # A host process of the sandbox's own uid, and the test process itself: neither may be signalled.
    sleeper = subprocess.Popen(["sleep", "60"], user=SANDBOX_UID, group=SANDBOX_UID, extra_groups=[])
    try:
        seen = observe(box, (
            "import ctypes, json, os, signal\nresult = {}\njudge = os.getppid()\n"
            f"for pid in ({os.getpid()}, {sleeper.pid}):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n        result[str(pid)] = 'killed'\n"
            "    except OSError as err:\n        result[str(pid)] = type(err).__name__\n"
            "for part in ('mem', 'environ', 'fd/0', 'fd/1'):\n"
            "    try:\n        open(f'/proc/{judge}/{part}', 'rb').read(1)\n        result[part] = 'read'\n"
            "    except OSError as err:\n        result[part] = type(err).__name__\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "result['ptrace'] = libc.ptrace(16, judge, 0, 0) == 0\n"  # PTRACE_ATTACH
            "result['new user namespace'] = libc.unshare(0x10000000) == 0\n"  # CLONE_NEWUSER
            "result['capabilities'] = open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n"
            "result['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "result['judge'] = judge\n"
            "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n    os.kill(judge, sig)\n"
            "try:\n    os.kill(-1, signal.SIGKILL)\n    result['kill -1'] = 'sent'\n"  # everyone it may signal but its init
            "except OSError as err:\n    result['kill -1'] = type(err).__name__\n"
            "print(json.dumps(result))\n"
        ))
        assert sleeper.poll() is None, "a host process was killed from inside the sandbox"
        os.kill(sleeper.pid, 0)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert seen[str(os.getpid())] == seen[str(sleeper.pid)] == "ProcessLookupError"  # not in its PID namespace
    assert {seen[p] for p in ("mem", "environ", "fd/0", "fd/1")} == {"PermissionError"}  # the judge is not dumpable
    assert seen["ptrace"] is False and seen["new user namespace"] is False
    assert int(seen["capabilities"], 16) == 0
    assert max(seen["pids"]) < 10  # its own namespace: the judge, the program
    assert seen["judge"] == 1  # the namespace's init: the kills above were ignored, and it still reported the output
    assert seen["kill -1"] == "ProcessLookupError"  # nobody else to signal: the host sleeper above is out of reach


def test_limits_are_applied_and_counted_per_sandbox(box):
    probe = (
        "import json, resource, subprocess\n"
        "limits = {n: resource.getrlimit(getattr(resource, n))[0] for n in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_NPROC')}\n"
        "children = []\n"
        "for _ in range(100):\n"
        "    try:\n        children.append(subprocess.Popen(['sleep', '5'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))\n"
        "    except OSError:\n        break\n"
        "try:\n    bytearray(512 << 20)\n    memory = 'allocated'\nexcept MemoryError:\n    memory = 'MemoryError'\n"
        "print(json.dumps({'limits': limits, 'children': len(children), 'memory': memory}))\n"
    )
    with ThreadPoolExecutor(2) as pool:  # two at once: each gets its own process budget
        first, second = pool.map(lambda _: observe(box, probe), range(2))
    mb = 1 << 20
    assert first["limits"] == {"RLIMIT_AS": 256 * mb, "RLIMIT_CPU": 1, "RLIMIT_FSIZE": 1 * mb, "RLIMIT_NPROC": 8}
    assert first["memory"] == "MemoryError"
    # 8 processes: the judge, the program and its children; both sandboxes get them all, at the same time
    assert first["children"] == second["children"] == 6


def test_the_process_limit_holds_in_the_tests_program_too(box):
    # The program's process is forked before the judge reads its job: it must get the limit all the same.
    program = (
        "import os, time\ndef spawned():\n    count = 0\n    for _ in range(100):\n        try:\n"
        "            if os.fork() == 0:\n                time.sleep(5)\n                os._exit(0)\n"
        "            count += 1\n        except OSError:\n            return count\n    return count\n"
    )
    outcome = box.run_asserts(program, "", "assert spawned() == 6\n", [("spawned", "spawned")])  # 8 = judge, program, 6
    assert outcome.passed, outcome.detail


def test_fork_bombs_do_not_starve_their_neighbours(box):
    bomb = HOSTILE["fork bomb"]
    with ThreadPoolExecutor(3) as pool:
        bombs = [pool.submit(box.run_asserts, bomb, "", HOSTILE_TESTS, [("f", "f")]) for _ in range(2)]
        time.sleep(0.3)
        honest = box.run_asserts("def f():\n    return 1\n", "", HOSTILE_TESTS, [("f", "f")])
        assert not any(b.result().passed for b in bombs)
    assert honest.passed, honest.detail


# ---------------------------------------------------------------- refusing to run unsafely


def test_without_bwrap_it_refuses_and_names_the_fix(monkeypatch):
    real_which = sandbox_module.shutil.which
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name, *a, **k))
    with pytest.raises(SandboxError, match=r"apt-get install -y bubblewrap.*isolation=none"):
        Sandbox()


def test_an_interpreter_outside_the_view_is_refused(tmp_path):
    python = tmp_path / "python3"
    python.symlink_to("/usr/bin/python3")  # a link into the view is fine...
    assert Sandbox(python=str(python), **LIMITS).python == os.path.realpath("/usr/bin/python3")
    copy = tmp_path / "copy"
    copy.write_bytes(b"#!/bin/sh\n")
    copy.chmod(0o755)  # ...a program outside the view is not
    with pytest.raises(SandboxError, match="readonly_paths"):
        Sandbox(python=str(copy))


def test_bad_limits_name_the_option():
    with pytest.raises(ValueError, match="reward.sandbox.memory_mb"):
        Sandbox(memory_mb=0)
    with pytest.raises(ValueError, match="reward.sandbox.isolation must be one of bwrap | none"):
        Sandbox(isolation="docker")


def test_isolation_none_is_an_opt_in_that_warns_and_still_limits(caplog):
    with caplog.at_level(logging.WARNING):
        box = Sandbox(isolation="none", **LIMITS)
    assert "WITHOUT a sandbox" in caplog.text
    assert box.run_asserts("def f():\n    return 1\n", "", HOSTILE_TESTS, [("f", "f")]).passed
    start = time.monotonic()
    assert not box.run_asserts(HOSTILE["sleeps past the deadline"], "", HOSTILE_TESTS, [("f", "f")]).passed
    assert time.monotonic() - start < DEADLINE
    if os.geteuid() == 0:  # root hands the program to an unprivileged uid even here
        assert observe(box, "import os\nprint(os.getuid())\n") == SANDBOX_UID


def _example(tests):
    from rlvr.batch import Example

    return Example(id="probe", prompt="", answer="", meta={"tests": tests})

