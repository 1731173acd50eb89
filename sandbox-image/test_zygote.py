"""Tests of sandbox-image/zygote.py, outside any jail.

They start zygote.py as a subprocess with a socketpair as its control socket
and drive the protocol of docs/protocol.md the way the Rust supervisor does:
ready, fork, hello with SCM_CREDENTIALS, exec/result, exited, shutdown. The
answer-hash vectors (tests/vectors/answer_hash.json) are checked against the
zygote's own normalize/answer_hash, and regenerated with

    python sandbox-image/test_zygote.py --write-vectors

Run with a Python that has the data stack:
    python -m unittest sandbox-image/test_zygote.py
"""

from __future__ import annotations

import ctypes
import datetime
import decimal
import errno
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ZYGOTE = HERE / "zygote.py"
VECTORS = HERE.parent / "tests" / "vectors" / "answer_hash.json"
sys.path.insert(0, str(HERE))

import zygote  # noqa: E402  (after the path is set)

HEADER = struct.Struct(">I")
TIMEOUT = 120.0  # generous: the first import of the data stack is slow on a cold cache
MAX_OUTPUT = 4096


# --------------------------------------------------------------------------
# A small, independent client of the protocol (deliberately not zygote's own
# framing code, so a symmetric bug in both cannot hide).
# --------------------------------------------------------------------------


class Frame:
    def __init__(self, message: dict[str, Any], fds: list[int], credentials: Optional[tuple[int, int, int]]):
        self.message = message
        self.fds = fds
        self.credentials = credentials


class Channel:
    """Reads frames from a stream socket together with their ancillary data.

    The kernel ends a recvmsg at a message that carries fds, so ancillary data
    belongs to the frame holding the last byte of the chunk it came with.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.buffer = bytearray()
        self.offset = 0  # stream offset of buffer[0]
        self.pending: list[tuple[int, list[int], Optional[tuple[int, int, int]]]] = []

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode("utf-8")
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def _fill(self) -> bool:
        space = socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12)
        data, ancdata, _, _ = self.sock.recvmsg(1 << 16, space)
        if not data:
            return False
        fds: list[int] = []
        credentials = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                credentials = struct.unpack("3i", payload[:12])
        self.buffer += data
        if fds or credentials:
            last_byte = self.offset + len(self.buffer) - 1
            self.pending.append((last_byte, fds, credentials))
        return True

    def read(self) -> Optional[Frame]:
        """The next frame, or None at end of stream."""
        while True:
            if len(self.buffer) >= HEADER.size:
                (length,) = HEADER.unpack(self.buffer[: HEADER.size])
                end = HEADER.size + length
                if len(self.buffer) >= end:
                    body = bytes(self.buffer[HEADER.size:end])
                    frame_end = self.offset + end - 1
                    del self.buffer[:end]
                    self.offset += end
                    fds: list[int] = []
                    credentials = None
                    while self.pending and self.pending[0][0] <= frame_end:
                        _, more_fds, creds = self.pending.pop(0)
                        fds.extend(more_fds)
                        credentials = creds or credentials
                    return Frame(json.loads(body.decode("utf-8")), fds, credentials)
            if not self._fill():
                if self.buffer:
                    raise AssertionError(f"stream ended inside a frame: {bytes(self.buffer)!r}")
                return None


class WorkerClient:
    def __init__(self, worker_id: int, pid: int, sock: socket.socket):
        self.worker_id = worker_id
        self.pid = pid
        # The supervisor's end must receive credentials: SO_PASSCRED was set
        # by the zygote before it passed the socket; check it really is.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
        self.channel = Channel(sock)
        self.cell = 0
        frame = self.channel.read()
        assert frame is not None, "worker closed its socket before hello"
        self.hello = frame.message
        self.credentials = frame.credentials

    def run(self, code: str) -> dict[str, Any]:
        self.cell += 1
        self.channel.send({"type": "exec", "cell": self.cell, "code": code})
        frame = self.channel.read()
        if frame is None:
            raise AssertionError("worker died during the cell")
        return frame.message

    def close(self) -> None:
        self.channel.sock.close()


class ZygoteProcess:
    def __init__(self, csv_path: str, **config: Any):
        supervisor_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = {
            "csv": csv_path,
            "control_fd": zygote_end.fileno(),
            "max_output": MAX_OUTPUT,
            "worker_scope": False,
            "threads": 1,
        }
        settings.update(config)
        if settings.get("worker_scope") and "worker_landlock" not in settings:
            settings["worker_landlock"] = WORKER_LANDLOCK
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-B", str(ZYGOTE), json.dumps(settings)],
            pass_fds=[zygote_end.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        zygote_end.close()
        self.control = Channel(supervisor_end)
        self.events: list[dict[str, Any]] = []  # exited messages read while waiting for others
        self.next_worker_id = 1

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def read(self) -> Optional[Frame]:
        return self.control.read()

    def expect(self, kind: str) -> Frame:
        """Read until a message of this type; exited messages are kept aside."""
        while True:
            frame = self.read()
            if frame is None:
                raise AssertionError(f"control closed while waiting for {kind}; log:\n{self.log_text()}")
            if frame.message["type"] == kind:
                return frame
            if frame.message["type"] == "exited":
                self.events.append(frame.message)
                continue
            raise AssertionError(f"expected {kind}, got {frame.message}")

    def wait_exited(self, worker_id: int) -> dict[str, Any]:
        while True:
            for event in self.events:
                if event["worker_id"] == worker_id:
                    self.events.remove(event)
                    return event
            frame = self.read()
            assert frame is not None, "control closed while waiting for exited"
            self.events.append(frame.message)

    def fork(self, limits: Optional[dict[str, Any]] = None) -> WorkerClient:
        worker_id = self.next_worker_id
        self.next_worker_id += 1
        self.control.send({"type": "fork", "worker_id": worker_id, "limits": limits or {}})
        frame = self.expect("forked")
        assert frame.message["worker_id"] == worker_id, frame.message
        assert len(frame.fds) == 1, f"forked carries one fd, got {frame.fds}"
        sock = socket.socket(fileno=frame.fds[0])
        return WorkerClient(worker_id, frame.message["pid"], sock)

    def stop(self) -> int:
        if self.process.poll() is None:
            try:
                self.control.send({"type": "shutdown"})
            except OSError:
                pass
        try:
            return self.process.wait(timeout=30)
        finally:
            self.control.sock.close()
            self.log.close()


def write_csv(directory: str, name: str, content: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(content)
    return path


COMMA_CSV = b"city,population,area\nOslo,709000,454.0\nLima,10719000,2672.3\nQuito,2011000,372.4\n"


# The per-worker Landlock rights for this kernel, computed by the Rust side
# (landlock::worker_rights_here) and passed in by tests/zygote_py.rs: the
# zygote keeps no table of rights, so its tests do not either.
WORKER_LANDLOCK: Optional[dict[str, int]] = json.loads(os.environ.get("CSV_AGENT_TEST_WORKER_LANDLOCK", "null"))


def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return int(libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


def process_state(pid: int) -> Optional[dict[str, str]]:
    try:
        with open(f"/proc/{pid}/status") as status:
            return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):  # gone before or during the read
        return None


# --------------------------------------------------------------------------
# Start-up: loading the dataset
# --------------------------------------------------------------------------


class LoadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def start(self, content: bytes, name: str = "data.csv") -> tuple[ZygoteProcess, dict[str, Any]]:
        process = ZygoteProcess(write_csv(self.tmp.name, name, content))
        self.addCleanup(process.stop)
        frame = process.read()
        self.assertIsNotNone(frame, process.log_text())
        return process, frame.message

    def test_comma_separated_ready(self) -> None:
        _, ready = self.start(COMMA_CSV)
        self.assertEqual(ready["type"], "ready")
        self.assertEqual(ready["version"], 1)
        self.assertEqual((ready["rows"], ready["columns"]), (3, 3))
        self.assertEqual((ready["separator"], ready["encoding"]), (",", "utf-8"))
        self.assertIn("pandas", ready["packages"])
        self.assertIn("scikit-learn", ready["packages"])
        self.assertGreater(ready["import_ms"], 0)
        self.assertGreaterEqual(ready["load_ms"], 0)
        self.assertTrue(ready["python"].startswith("3."))

    def test_tab_separated_file_named_csv(self) -> None:
        # Commas inside the values must not fool the sniffer.
        content = b"name\tnote\tscore\nAda\tfast, careful\t9.5\nBob\tslow, steady\t7.0\nCy\tok, fine\t8.25\n"
        process, ready = self.start(content)
        self.assertEqual((ready["separator"], ready["columns"], ready["rows"]), ("\t", 3, 3))
        worker = process.fork()
        self.addCleanup(worker.close)
        self.assertEqual(worker.run("df['note'].iloc[0]")["result"], "'fast, careful'")

    def test_latin1_file(self) -> None:
        content = "ville;pays\nZürich;Suisse\nSão Paulo;Brésil\n".encode("latin-1")
        process, ready = self.start(content)
        self.assertEqual((ready["separator"], ready["encoding"]), (";", "latin-1"))
        worker = process.fork()
        self.addCleanup(worker.close)
        self.assertEqual(worker.run("df['ville'].tolist()")["result"], "['Zürich', 'São Paulo']")

    def test_utf8_bom_and_pipe(self) -> None:
        process, ready = self.start("\ufeffa|b\n1|x\n2|y\n".encode("utf-8"))
        self.assertEqual((ready["separator"], ready["encoding"]), ("|", "utf-8"))
        worker = process.fork()
        self.addCleanup(worker.close)
        self.assertEqual(worker.run("list(df.columns)")["result"], "['a', 'b']")

    def test_utf16_with_bom_is_decoded(self) -> None:
        process, ready = self.start("a,b\n1,é\n2,ü\n".encode("utf-16"))
        self.assertEqual((ready["separator"], ready["encoding"], ready["columns"]), (",", "utf-16", 2))
        worker = process.fork()
        self.addCleanup(worker.close)
        self.assertEqual(worker.run("df['b'].tolist()")["result"], "['é', 'ü']")

    def load_error(self, content: bytes) -> str:
        path = os.path.join(self.tmp.name, "bad.csv")
        with open(path, "wb") as handle:
            handle.write(content)
        process = ZygoteProcess(path)
        frame = process.read()
        self.assertEqual(process.process.wait(timeout=30), 1)
        process.control.sock.close()
        process.log.close()
        self.assertEqual(frame.message["type"], "load_error")
        return frame.message["error"]

    def test_utf16_without_bom_is_refused_with_the_reason(self) -> None:
        error = self.load_error("a,b\n1,2\n3,4\n".encode("utf-16-le"))
        self.assertIn("UTF-16 text without a byte-order mark", error)

    def test_binary_file_is_refused_with_the_reason(self) -> None:
        error = self.load_error(bytes(range(256)) * 8)
        self.assertIn("binary file, not CSV", error)

    def test_missing_file_is_a_load_error(self) -> None:
        process = ZygoteProcess(os.path.join(self.tmp.name, "absent.csv"))
        frame = process.read()
        self.assertEqual(frame.message["type"], "load_error")
        self.assertIn("absent.csv", frame.message["error"])
        self.assertEqual(process.process.wait(timeout=30), 1)
        process.control.sock.close()
        process.log.close()

    def test_bad_config_exits_2(self) -> None:
        result = subprocess.run(
            [sys.executable, "-I", "-B", str(ZYGOTE), "{not json"], capture_output=True, timeout=60
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"bad config", result.stderr)


# --------------------------------------------------------------------------
# One zygote for the protocol and cell tests (each test forks its own worker)
# --------------------------------------------------------------------------


class ZygoteTestCase(unittest.TestCase):
    zygote: ZygoteProcess
    ready: dict[str, Any]
    config: dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        path = write_csv(cls.tmp.name, "data.csv", COMMA_CSV)
        cls.zygote = ZygoteProcess(path, **cls.config)
        frame = cls.zygote.read()
        assert frame is not None and frame.message["type"] == "ready", cls.zygote.log_text()
        cls.ready = frame.message

    @classmethod
    def tearDownClass(cls) -> None:
        cls.zygote.stop()
        cls.tmp.cleanup()

    def fork(self, limits: Optional[dict[str, Any]] = None) -> WorkerClient:
        worker = self.zygote.fork(limits)
        self.addCleanup(worker.close)
        return worker

    def ok(self, worker: WorkerClient, code: str) -> dict[str, Any]:
        result = worker.run(code)
        self.assertEqual(result["status"], "ok", result)
        return result


class ProtocolTests(ZygoteTestCase):
    def test_fork_two_workers_with_credentials(self) -> None:
        first = self.fork()
        second = self.fork()
        self.assertNotEqual(first.pid, second.pid)
        for worker in (first, second):
            self.assertEqual(worker.hello["type"], "hello")
            self.assertEqual(worker.hello["version"], 1)
            self.assertEqual(worker.hello["worker_id"], worker.worker_id)
            self.assertEqual(worker.hello["pid"], worker.pid)
            self.assertEqual(worker.hello["scope"], {"applied": False, "abi": None, "error": None})
            # The supervisor's source of truth for the host pid.
            self.assertIsNotNone(worker.credentials, "hello came without SCM_CREDENTIALS")
            pid, uid, gid = worker.credentials
            self.assertEqual((pid, uid, gid), (worker.pid, os.getuid(), os.getgid()))
        # Each worker leads its own process group, for killpg.
        self.assertEqual(os.getpgid(first.pid), first.pid)
        self.assertEqual(os.getpgid(second.pid), second.pid)

    def test_worker_stdout_is_not_the_zygote_log(self) -> None:
        # fd 1/2 of an idle worker already point at its capture files.
        worker = self.fork()
        zygote_stdout = os.readlink(f"/proc/{self.zygote.process.pid}/fd/1")
        for fd in (1, 2):
            self.assertNotEqual(os.readlink(f"/proc/{worker.pid}/fd/{fd}"), zygote_stdout)
            self.assertTrue(os.readlink(f"/proc/{worker.pid}/fd/{fd}").startswith("/memfd:cell-"))

    def test_worker_is_not_dumpable(self) -> None:
        worker = self.fork()
        self.assertEqual(self.ok(worker, "import ctypes; ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)")["result"], "0")

    def test_unexpected_control_message(self) -> None:
        self.zygote.control.send({"type": "exec", "code": "1"})
        frame = self.zygote.expect("error")
        self.assertEqual(frame.message["error"], "unexpected message type exec, expected fork or shutdown")

    def test_invalid_limits_fail_the_fork(self) -> None:
        self.zygote.control.send({"type": "fork", "worker_id": 999, "limits": {"cpu_seconds": -1}})
        frame = self.zygote.expect("fork_failed")
        self.assertEqual(frame.message["worker_id"], 999)
        self.assertIn("cpu_seconds", frame.message["error"])

    def test_unexpected_worker_message(self) -> None:
        worker = self.fork()
        worker.channel.send({"type": "fork"})
        frame = worker.channel.read()
        self.assertEqual(frame.message, {"type": "error", "error": "unexpected message type fork, expected exec or exit"})
        self.assertEqual(self.ok(worker, "1")["result"], "1")

    def test_exit_message_ends_worker_with_code_0(self) -> None:
        worker = self.fork()
        worker.channel.send({"type": "exit"})
        self.assertIsNone(worker.channel.read())
        exited = self.zygote.wait_exited(worker.worker_id)
        self.assertEqual((exited["exit_code"], exited["signal"], exited["pid"]), (0, None, worker.pid))

    def test_os_exit_reports_exit_code(self) -> None:
        worker = self.fork()
        worker.channel.send({"type": "exec", "cell": 1, "code": "import os; os._exit(3)"})
        self.assertIsNone(worker.channel.read())
        exited = self.zygote.wait_exited(worker.worker_id)
        self.assertEqual(exited, {"type": "exited", "worker_id": worker.worker_id, "pid": worker.pid,
                                  "exit_code": 3, "signal": None})

    def test_killed_worker_reports_signal(self) -> None:
        worker = self.fork()
        os.killpg(worker.pid, signal.SIGKILL)
        exited = self.zygote.wait_exited(worker.worker_id)
        self.assertEqual((exited["exit_code"], exited["signal"]), (None, signal.SIGKILL))

    def test_orphaned_grandchild_is_reaped(self) -> None:
        worker = self.fork()
        code = "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(1.5)\n    os._exit(0)\npid"
        grandchild = int(self.ok(worker, code)["result"])
        worker.channel.send({"type": "exit"})
        self.zygote.wait_exited(worker.worker_id)
        state = process_state(grandchild)
        self.assertIsNotNone(state, "the grandchild should still be sleeping")
        # Reparented to the zygote (subreaper here, PID 1 in the jail)...
        self.assertEqual(int(state["PPid"]), self.zygote.process.pid)
        # ...which reaps it: no zombie left behind, and no exited message.
        deadline = time.monotonic() + 15
        while process_state(grandchild) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIsNone(process_state(grandchild), f"grandchild left as {process_state(grandchild)}")
        self.assertFalse([event for event in self.zygote.events if event["pid"] == grandchild])

    def test_limits_are_applied(self) -> None:
        worker = self.fork({"cpu_seconds": 30, "address_space_extra": 512 * 2**20, "nofile": 64})
        limits = worker.hello["limits"]
        self.assertEqual((limits["cpu_seconds"], limits["nofile"], limits["error"]), (30, 64, None))
        self.assertGreater(limits["address_space"], 512 * 2**20)
        result = self.ok(worker, "import resource\n[resource.getrlimit(r) for r in "
                                 "(resource.RLIMIT_CPU, resource.RLIMIT_NOFILE, resource.RLIMIT_AS)]")
        cpu, nofile, address_space = eval(result["result"])
        self.assertEqual((cpu, nofile), ((30, 31), (64, 64)))
        self.assertEqual(address_space, (limits["address_space"],) * 2)
        failed = worker.run("block = bytearray(1024 * 2**20)")
        self.assertEqual((failed["status"], failed["error"]["type"]), ("error", "MemoryError"))
        self.assertEqual(self.ok(worker, "len(bytearray(64 * 2**20))")["result"], str(64 * 2**20))

    def test_cpu_limit_kills_with_sigxcpu(self) -> None:
        worker = self.fork({"cpu_seconds": 1})
        worker.channel.send({"type": "exec", "cell": 1, "code": "while True:\n    pass"})
        self.assertIsNone(worker.channel.read())
        exited = self.zygote.wait_exited(worker.worker_id)
        self.assertIn(exited["signal"], (signal.SIGXCPU, signal.SIGKILL))


class CellTests(ZygoteTestCase):
    def test_expression_result(self) -> None:
        worker = self.fork()
        result = self.ok(worker, "1+1")
        self.assertEqual(result["type"], "result")
        self.assertEqual(result["cell"], 1)
        self.assertEqual(result["result"], "2")
        self.assertEqual((result["stdout"], result["stderr"]), ("", ""))
        self.assertEqual((result["stdout_truncated"], result["stderr_truncated"]), (0, 0))
        self.assertEqual((result["error"], result["submitted"], result["hooks"]), (None, None, []))
        self.assertGreaterEqual(result["elapsed_ms"], 0)

    def test_statement_has_no_result(self) -> None:
        self.assertIsNone(self.ok(self.fork(), "x = 1")["result"])
        self.assertIsNone(self.ok(self.fork(), "None")["result"])

    def test_state_lives_across_cells(self) -> None:
        worker = self.fork()
        self.ok(worker, "total = df['population'].sum()\ndef twice(v):\n    return 2 * v")
        self.assertEqual(self.ok(worker, "int(twice(total))")["result"], str(2 * (709000 + 10719000 + 2011000)))

    def test_namespace(self) -> None:
        worker = self.fork()
        names = "sorted(k for k in ['df', 'pd', 'np', 'scipy', 'stats', 'sklearn', 'sm', 'submit', 'hook'] if k in globals())"
        self.assertEqual(eval(self.ok(worker, names)["result"]),
                         sorted(['df', 'pd', 'np', 'scipy', 'stats', 'sklearn', 'sm', 'submit', 'hook']))
        self.assertEqual(self.ok(worker, "__name__")["result"], "'__main__'")
        self.assertEqual(self.ok(worker, "df.shape")["result"], "(3, 3)")
        # Annotations are evaluated: the zygote's __future__ import must not leak.
        self.assertEqual(self.ok(worker, "def f(x: int) -> int:\n    return x\nf.__annotations__['x'] is int")["result"], "True")

    def test_print_then_trailing_expression(self) -> None:
        result = self.ok(self.fork(), "print('hello')\nprint('warn', file=__import__('sys').stderr)\n40 + 2")
        self.assertEqual((result["stdout"], result["stderr"], result["result"]), ("hello\n", "warn\n", "42"))

    def test_exception_traceback_has_no_zygote_frames(self) -> None:
        worker = self.fork()
        self.ok(worker, "def divide(a, b):\n    return a / b")
        result = worker.run("x = 1\ndivide(x, 0)")
        self.assertEqual(result["status"], "error")
        error = result["error"]
        self.assertEqual((error["type"], error["message"]), ("ZeroDivisionError", "division by zero"))
        self.assertNotIn("zygote.py", error["traceback"])
        self.assertTrue(error["traceback"].startswith("Traceback (most recent call last):\n"))
        self.assertIn('File "<cell-2>", line 2, in <module>', error["traceback"])
        self.assertIn('File "<cell-1>", line 2, in divide', error["traceback"])
        self.assertIn("return a / b", error["traceback"])  # source lines come from linecache
        self.assertTrue(error["traceback"].endswith("ZeroDivisionError: division by zero\n"))

    def test_syntax_error(self) -> None:
        result = self.fork().run("x = (1,")
        self.assertEqual(result["error"]["type"], "SyntaxError")
        self.assertNotIn("zygote.py", result["error"]["traceback"])
        self.assertIn("<cell-1>", result["error"]["traceback"])

    def test_error_in_submit_hides_zygote_frames(self) -> None:
        class_code = "class Bad:\n    def __str__(self):\n        raise ValueError('no str')\nsubmit(Bad())"
        result = self.fork().run(class_code)
        self.assertEqual(result["error"]["type"], "ValueError")
        self.assertNotIn("zygote.py", result["error"]["traceback"])
        self.assertIn("<cell-1>", result["error"]["traceback"])

    def test_fd_level_output_is_captured(self) -> None:
        worker = self.fork()
        result = self.ok(worker, "import os, ctypes\nprint('py')\nos.write(1, b'x')\nos.write(2, b'err-fd\\n')\n"
                                 "ctypes.CDLL(None).printf(b'c-stdio\\n')")
        # Python-level first, then the fd level (where C stdio lands after fflush).
        self.assertEqual(result["stdout"], "py\nxc-stdio\n")
        self.assertEqual(result["stderr"], "err-fd\n")
        # Truncated between cells: the next cell starts empty.
        self.assertEqual(self.ok(worker, "1")["stdout"], "")

    def test_subprocess_output_is_captured(self) -> None:
        result = self.ok(self.fork(), "import subprocess\nsubprocess.run(['echo', 'from child'])\nNone")
        self.assertEqual(result["stdout"], "from child\n")

    def test_warnings_go_to_stderr(self) -> None:
        result = self.ok(self.fork(), "import warnings\nwarnings.warn('careful')")
        self.assertIn("UserWarning: careful", result["stderr"])

    def test_python_flood_is_capped(self) -> None:
        result = self.ok(self.fork(), "print('a' * 10000)\nprint('tail')")
        self.assertEqual(result["stdout_truncated"], 10006 - MAX_OUTPUT)
        self.assertEqual(result["stdout"], "a" * MAX_OUTPUT + f"\n[... {10006 - MAX_OUTPUT} bytes truncated]\n")

    def test_fd_flood_is_capped_after_python_output(self) -> None:
        result = self.ok(self.fork(), "import os\nprint('head')\nfor _ in range(100):\n    os.write(1, b'y' * 1000)")
        total = 5 + 100_000
        self.assertEqual(result["stdout_truncated"], total - MAX_OUTPUT)
        self.assertTrue(result["stdout"].startswith("head\nyyy"))
        self.assertTrue(result["stdout"].endswith(f"y\n[... {total - MAX_OUTPUT} bytes truncated]\n"))

    def test_cap_never_splits_a_character(self) -> None:
        # 'é' is two bytes: the cap falls in the middle of one.
        result = self.ok(self.fork(), f"print('a' + 'é' * {MAX_OUTPUT})")
        kept = result["stdout"].split("\n[...")[0]
        self.assertEqual(kept, "a" + "é" * ((MAX_OUTPUT - 1) // 2))
        self.assertEqual(result["stdout_truncated"], 1 + 2 * MAX_OUTPUT + 1 - len(kept.encode()))

    def test_result_repr_is_capped(self) -> None:
        result = self.ok(self.fork(), f"'z' * {2 * MAX_OUTPUT}")
        self.assertIn("bytes truncated]", result["result"])
        self.assertLess(len(result["result"]), MAX_OUTPUT + 100)

    def test_system_exit_does_not_end_the_worker(self) -> None:
        worker = self.fork()
        result = worker.run("import sys\nsys.exit(5)")
        self.assertEqual((result["status"], result["error"]["type"], result["error"]["message"]), ("error", "SystemExit", "5"))
        result = worker.run("raise KeyboardInterrupt")
        self.assertEqual(result["error"]["type"], "KeyboardInterrupt")
        self.assertEqual(self.ok(worker, "'alive'")["result"], "'alive'")

    def test_sigint_interrupts_the_cell(self) -> None:
        worker = self.fork()
        worker.channel.send({"type": "exec", "cell": 1, "code": "import time\nwhile True:\n    time.sleep(0.05)"})
        time.sleep(0.5)
        os.kill(worker.pid, signal.SIGINT)
        result = worker.channel.read().message
        self.assertEqual(result["error"]["type"], "KeyboardInterrupt")
        self.assertEqual(self.ok(worker, "2")["result"], "2")

    def test_closing_stdout_does_not_break_capture(self) -> None:
        worker = self.fork()
        worker.run("import sys, os\nsys.stdout.close()\nos.close(1)")
        self.assertEqual(self.ok(worker, "import os\nprint('a')\nos.write(1, b'b')")["stdout"], "a\nb")

    def test_logging_configured_in_an_earlier_cell_still_captured(self) -> None:
        worker = self.fork()
        self.ok(worker, "import logging\nlogging.basicConfig(level=logging.INFO, format='%(message)s')")
        self.assertEqual(self.ok(worker, "logging.info('later')")["stderr"], "later\n")

    def test_submit(self) -> None:
        worker = self.fork()
        result = self.ok(worker, "submit(3.0, unit='people')\nsubmit(df['population'].mean(), unit=np.str_('people'))")
        submitted = result["submitted"]
        expected = (709000 + 10719000 + 2011000) / 3
        self.assertAlmostEqual(submitted["value"], expected)
        self.assertEqual(submitted["hash"], zygote.answer_hash(expected))
        self.assertEqual(submitted["meta"], {"unit": "people"})
        self.assertIn("✓ Submitted: ", result["stdout"])
        self.assertIsNone(result["result"])  # submit returns None
        # Per cell: the next cell starts without a submission.
        self.assertIsNone(self.ok(worker, "1")["submitted"])

    def test_submit_series(self) -> None:
        result = self.ok(self.fork(), "submit(df.set_index('city')['area'])")
        self.assertEqual(result["submitted"]["value"], {"Oslo": 454.0, "Lima": 2672.3, "Quito": 372.4})

    def test_hook(self) -> None:
        worker = self.fork()
        code = ("m = hook(df['area'].max(), 'm = df[\"area\"].max()', name='m', description='largest', depends_on='df')\n"
                "hook(np.float64('nan'), 'n = nan')\nm")
        result = self.ok(worker, code)
        self.assertEqual(result["result"], "np.float64(2672.3)")  # hook returns the value unchanged
        first, second = result["hooks"]
        self.assertEqual(first, {"variable_name": "m", "code_line": 'm = df["area"].max()', "value": 2672.3,
                                 "value_hash": zygote.answer_hash(2672.3), "depends_on": ["df"],
                                 "description": "largest"})
        self.assertEqual((second["value"], second["variable_name"], second["depends_on"]), (None, None, []))
        self.assertEqual(second["value_hash"], zygote.answer_hash(None))
        self.assertEqual(self.ok(worker, "1")["hooks"], [])

    def test_huge_submission_becomes_an_error_not_a_bad_frame(self) -> None:
        result = self.fork().run("submit('x' * (65 * 2**20))")
        self.assertEqual((result["status"], result["error"]["type"], result["submitted"]), ("error", "ResultTooLarge", None))

    def test_result_over_the_worker_frame_limit_becomes_an_error(self) -> None:
        # The supervisor accepts at most worker_frame_limit(max_output) bytes
        # from a worker (4 MiB + 32 x 4096 here): a 5 MiB submission fits the
        # old 64 MiB ceiling but not this bound.
        limit = zygote.worker_frame_limit(MAX_OUTPUT)
        result = self.fork().run("submit('x' * (5 * 2**20))")
        self.assertEqual((result["status"], result["error"]["type"], result["submitted"]), ("error", "ResultTooLarge", None))
        self.assertIn(f"{limit}-byte frame limit", result["error"]["message"])
        self.assertLessEqual(len(json.dumps(result, ensure_ascii=False).encode()), limit)

    def test_huge_exception_message_is_capped_not_dropped(self) -> None:
        result = self.fork().run("raise ValueError('\u00e9' * 3_000_000)")
        self.assertEqual((result["status"], result["error"]["type"]), ("error", "ValueError"))
        for key in ("message", "traceback"):
            text = result["error"][key]
            self.assertLessEqual(len(text.encode()), MAX_OUTPUT + 64, key)
            self.assertRegex(text, r"\[\.\.\. \d+ bytes truncated\]\n$", key)

    def test_sklearn_with_two_jobs(self) -> None:
        code = ("from sklearn.ensemble import RandomForestClassifier\n"
                "from sklearn.model_selection import cross_val_score\n"
                "rng = np.random.default_rng(0)\nX = rng.random((200, 4))\ny = (X[:, 0] > 0.5).astype(int)\n"
                "float(cross_val_score(RandomForestClassifier(n_estimators=10, n_jobs=2, random_state=0), X, y, cv=3, n_jobs=2).mean())")
        result = self.ok(self.fork(), code)
        self.assertGreater(float(result["result"]), 0.8)

    def test_pickle_finds_functions_defined_in_cells(self) -> None:
        worker = self.fork()
        self.ok(worker, "def square(v):\n    return v * v")
        code = "import multiprocessing\nwith multiprocessing.get_context('fork').Pool(2) as pool:\n    out = pool.map(square, [1, 2, 3])\nout"
        self.assertEqual(self.ok(worker, code)["result"], "[1, 4, 9]")


@unittest.skipUnless(
    landlock_abi() >= 6 and WORKER_LANDLOCK is not None,
    "needs Landlock ABI 6 (scopes) and the rights from tests/zygote_py.rs",
)
class ScopeTests(ZygoteTestCase):
    config = {"worker_scope": True}

    def test_worker_cannot_signal_zygote_or_sibling(self) -> None:
        worker = self.fork()
        sibling = self.fork()
        self.assertTrue(worker.hello["scope"]["applied"], worker.hello)
        self.assertIsNone(worker.hello["scope"]["error"])
        self.assertGreaterEqual(worker.hello["scope"]["abi"], 6)
        for target in ("os.getppid()", str(sibling.pid)):
            result = worker.run(f"import os\nos.kill({target}, 0)")
            self.assertEqual(result["error"]["type"], "PermissionError", result)
        # Itself and its own children stay reachable.
        self.ok(worker, "os.kill(os.getpid(), 0)")
        code = "import subprocess, signal\nchild = subprocess.Popen(['sleep', '30'])\nchild.send_signal(signal.SIGTERM)\nchild.wait()"
        self.assertEqual(self.ok(worker, code)["result"], str(-signal.SIGTERM))
        self.assertEqual(self.ok(sibling, "1")["result"], "1")


class LandlockConfigTests(unittest.TestCase):
    """The per-worker Landlock rights are the supervisor's numbers, checked."""

    RIGHTS = {"abi": 7, "handled_fs": 0xFFFF, "file_rights": 0xC007, "scoped": 3}

    def config(self, rights: Any) -> Any:
        return zygote.parse_config(["zygote.py", json.dumps({"csv": "x.csv", "worker_landlock": rights})])

    def test_rights_come_from_the_config_and_are_checked(self) -> None:
        self.assertEqual(self.config(self.RIGHTS).worker_landlock, zygote.LandlockRights(**self.RIGHTS))
        self.assertIsNone(self.config(None).worker_landlock)
        for bad in (
            {**self.RIGHTS, "scoped": -1},
            {**self.RIGHTS, "handled_fs": True},
            {**self.RIGHTS, "file_rights": 1 << 20},
            {"abi": 7},
            [1, 2, 3, 4],
        ):
            with self.assertRaises(ValueError, msg=repr(bad)):
                self.config(bad)

    def test_without_rights_the_domain_is_not_applied_and_says_why(self) -> None:
        scope = zygote.apply_landlock_scope(None, "landlock is not available: ENOSYS")
        self.assertEqual(scope, {"applied": False, "abi": None, "error": "landlock is not available: ENOSYS"})


class WarmUpTests(unittest.TestCase):
    """What the zygote runs before freezing its heap leaves nothing a task
    could see: no random state drawn, no option or error setting changed, no
    warning filter or registry changed, no module attribute left."""

    @classmethod
    def setUpClass(cls) -> None:
        # As in the zygote: the stack is imported (scipy adds its warning
        # filters then) before the warm-up runs.
        zygote.import_data_stack()
        import scipy.stats  # noqa: F401

    def test_warm_up_leaves_no_state_behind(self) -> None:
        import random
        import types
        import warnings

        np, pd = zygote.np, zygote.pd
        version = zygote._filters_version()
        self.assertIsInstance(version, int)
        valid = types.ModuleType("csv_agent_warm_valid")
        valid.__warningregistry__ = {"version": version, ("shown once", UserWarning, 1): True}
        stale = types.ModuleType("csv_agent_warm_stale")
        stale.__warningregistry__ = {"version": version - 1, ("old", UserWarning, 2): True}
        emitter = types.ModuleType("csv_agent_warm_emitter")
        for module in (valid, stale, emitter):
            sys.modules[module.__name__] = module
            self.addCleanup(sys.modules.pop, module.__name__, None)
        original = zygote._warm_frame

        def warm_frame_that_warns() -> Any:
            # As a library warning would: into its module's registry.
            registry = emitter.__dict__.setdefault("__warningregistry__", {})
            warnings.warn_explicit("from the warm-up", UserWarning, "lib.py", 7, registry=registry)
            return original()

        zygote._warm_frame = warm_frame_that_warns
        self.addCleanup(setattr, zygote, "_warm_frame", original)
        options = {key: repr(pd.get_option(key)) for key in pd._config.config._registered_options}
        filters = list(warnings.filters)
        np_state = np.random.get_state()
        py_state = random.getstate()
        errors = np.geterr()
        module_names = set(vars(zygote))

        self.assertIsNone(zygote.warm_data_stack())

        self.assertEqual({key: repr(pd.get_option(key)) for key in pd._config.config._registered_options}, options)
        self.assertEqual(warnings.filters, filters)
        after_state = np.random.get_state()
        self.assertEqual(after_state[0], np_state[0])
        self.assertTrue(np.array_equal(after_state[1], np_state[1]))
        self.assertEqual(after_state[2:], np_state[2:])
        self.assertEqual(random.getstate(), py_state)
        self.assertEqual(np.geterr(), errors)
        self.assertEqual(set(vars(zygote)), module_names)
        self.assertNotIn("__warningregistry__", vars(emitter))
        now = zygote._filters_version()
        # Valid before, valid now (a warning shown once stays shown once);
        # stale before, stale now.
        self.assertEqual(valid.__warningregistry__, {"version": now, ("shown once", UserWarning, 1): True})
        self.assertEqual(stale.__warningregistry__, {"version": version - 1, ("old", UserWarning, 2): True})

    def test_the_filter_version_probe_reads_the_real_version(self) -> None:
        import warnings

        key = ("seen", UserWarning, 5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            registry = {"version": zygote._filters_version(), key: True}
            warnings.warn_explicit("seen", UserWarning, "x.py", 5, registry=registry)
            self.assertEqual(caught, [], "a registry of the probed version is valid")
            registry["version"] -= 1
            warnings.warn_explicit("seen", UserWarning, "x.py", 5, registry=registry)
            self.assertEqual(len(caught), 1, "one of another version is not")

    def test_holes_are_filled_and_malloc_tuned(self) -> None:
        zygote.tune_malloc()
        self.assertGreater(len(zygote._free_small_blocks()), 0, "the size-class table was parsed")
        zygote.fill_allocator_holes()
        self.assertLess(sum(zygote._free_small_blocks().values()), 2000)
        for size in (16, 32, 48, 512):
            self.assertLessEqual(sys.getsizeof(zygote._filler(size, 1)), size)

    def test_free_heap_pages_below_a_live_block_go_back_to_the_kernel(self) -> None:
        # What a worker does after every cell. 10 MiB of 64 kB blocks (under
        # the mmap threshold: on the heap), written so they are resident,
        # then freed, all but the topmost: the trim threshold cannot return
        # them, release_free_memory must.
        zygote.tune_malloc()
        libc = ctypes.CDLL(None)  # its own prototypes: the zygote's stay as they are
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        size, count = 64 * 1024, 160
        blocks = [libc.malloc(size) for _ in range(count)]
        self.assertTrue(all(blocks))
        for block in blocks:
            ctypes.memset(block, 1, size)
        top = max(blocks)
        for block in blocks:
            if block != top:
                libc.free(block)

        def rss() -> int:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        before = rss()
        zygote.release_free_memory()
        released = before - rss()
        libc.free(top)
        self.assertGreater(released, 8 * 1024 * 1024, f"only {released} bytes went back")


class FreshZygoteTests(unittest.TestCase):
    """Tests that end the zygote or need its control channel to themselves."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.zygote = ZygoteProcess(write_csv(self.tmp.name, "data.csv", COMMA_CSV))
        self.assertEqual(self.zygote.read().message["type"], "ready")

    def test_shutdown_kills_workers_and_exits_0(self) -> None:
        workers = [self.zygote.fork(), self.zygote.fork()]
        self.zygote.control.send({"type": "shutdown"})
        self.assertEqual(self.zygote.process.wait(timeout=30), 0)
        for worker in workers:
            self.assertIsNone(process_state(worker.pid))
            self.assertIsNone(worker.channel.read())  # its socket closed with it
            worker.close()
        self.zygote.control.sock.close()
        self.zygote.log.close()

    def test_control_eof_is_a_shutdown(self) -> None:
        worker = self.zygote.fork()
        self.zygote.control.sock.close()
        self.assertEqual(self.zygote.process.wait(timeout=30), 0)
        self.assertIsNone(process_state(worker.pid))
        worker.close()
        self.zygote.log.close()

    def test_forked_right_after_exited_keeps_its_socket(self) -> None:
        # A fresh zygote: no other worker's exited can come in between.
        # Regression guard for readers: queue an exited and then a forked
        # message before reading. One recvmsg returns both frames plus the fd
        # (the kernel stops after the message with SCM_RIGHTS), and the fd
        # belongs to forked, the frame holding the chunk's last byte.
        self.addCleanup(self.zygote.stop)
        worker = self.zygote.fork()
        worker.channel.send({"type": "exit"})
        self.assertIsNone(worker.channel.read())
        worker.close()
        deadline = time.monotonic() + 10
        while process_state(worker.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the zygote has reaped it and queued exited
        worker_id = self.zygote.next_worker_id
        self.zygote.next_worker_id += 1
        self.zygote.control.send({"type": "fork", "worker_id": worker_id, "limits": {}})
        time.sleep(1.0)  # forked is queued behind exited
        exited = self.zygote.read()
        forked = self.zygote.read()
        self.assertEqual((exited.message["type"], exited.fds), ("exited", []))
        self.assertEqual(forked.message["type"], "forked")
        self.assertEqual(len(forked.fds), 1)
        fresh = WorkerClient(worker_id, forked.message["pid"], socket.socket(fileno=forked.fds[0]))
        self.addCleanup(fresh.close)
        self.assertEqual(fresh.run("1 + 1")["result"], "2")

    def test_bad_frame_exits_2(self) -> None:
        self.zygote.control.sock.sendall(HEADER.pack(5) + b"nope!")
        self.assertEqual(self.zygote.process.wait(timeout=30), 2)
        self.assertIn("protocol error", self.zygote.log_text())
        self.zygote.control.sock.close()
        self.zygote.log.close()


# --------------------------------------------------------------------------
# Clean-up of finished tasks' scratch directories (Trash, TreeDeletion)
# --------------------------------------------------------------------------


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def build_nasty_tree(task: str, outside_dir: str, outside_file: str, depth: int) -> None:
    """What a task may leave behind: a chain `depth` directories deep (built
    with relative paths, as no absolute path that long exists), directories
    and files of mode 0000 and 0500, and symlinks pointing out of the tree."""
    os.mkdir(task, 0o700)
    here = os.open(task, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.symlink(outside_dir, "out-dir", dir_fd=here)
        os.symlink(outside_file, "out-file", dir_fd=here)
        locked = os.open("locked-file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=here)
        os.write(locked, b"x")
        os.close(locked)
        os.chmod("locked-file", 0, dir_fd=here)
        for level in range(depth):
            os.mkdir("d", dir_fd=here)
            if level % 100 == 0:
                with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=here), "wb") as handle:
                    handle.write(b"data")
                os.symlink("/", "root-link", dir_fd=here)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
            os.close(here)
            here = below
        os.mkdir("closed", dir_fd=here)
    finally:
        os.close(here)


def lock_down_tree(task: str) -> None:
    """Take the owner's rights away at a few places (0000 and 0500 dirs)."""
    here = os.open(task, os.O_RDONLY | os.O_DIRECTORY)
    to_lock: list[tuple[int, str, int]] = []
    level = 0
    try:
        while True:
            if level in (1, 700):
                to_lock.append((os.dup(here), "d", 0o000 if level == 1 else 0o500))
            try:
                below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
            except FileNotFoundError:
                break
            os.close(here)
            here = below
            level += 1
        to_lock.append((os.dup(here), "closed", 0))
    finally:
        os.close(here)
    # Deepest first: a 0000 directory cannot be walked through afterwards.
    for fd, name, mode in reversed(to_lock):
        os.chmod(name, mode, dir_fd=fd)
        os.close(fd)


class TrashTests(unittest.TestCase):
    DEPTH = 1500

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        os.chmod(self.tmp.name, 0o755)
        self.scratch = os.path.join(self.tmp.name, "scratch")
        os.mkdir(self.scratch, 0o711)
        self.outside_dir = os.path.join(self.tmp.name, "outside")
        os.mkdir(self.outside_dir, 0o755)
        self.outside_file = os.path.join(self.outside_dir, "keep.txt")
        with open(self.outside_file, "w") as handle:
            handle.write("keep me\n")

    def delete_task_tree(self) -> dict[str, Any]:
        """Build a nasty task tree, discard it, drain the trash; what we saw."""
        task = os.path.join(self.scratch, "task-1")
        build_nasty_tree(task, self.outside_dir, self.outside_file, self.DEPTH)
        lock_down_tree(task)
        trash = zygote.Trash(self.scratch)
        trash.prepare()
        baseline = open_fd_count()
        trash.discard(task, "task-1")
        seen = {"moved": not os.path.lexists(task), "slices": 0, "max_fds": 0}
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(200)  # whatever recursion there is would fail
        try:
            while trash.pending() and seen["slices"] < 100000:
                trash.work(0.002)
                seen["slices"] += 1
                seen["max_fds"] = max(seen["max_fds"], open_fd_count() - baseline)
        finally:
            sys.setrecursionlimit(old_limit)
        seen["failures"] = trash.failures
        seen["trash"] = os.listdir(trash.root)
        seen["scratch"] = sorted(os.listdir(self.scratch))
        return seen

    def check(self, seen: dict[str, Any]) -> None:
        self.assertTrue(seen["moved"], seen)
        self.assertEqual(seen["failures"], 0, seen)
        self.assertEqual(seen["trash"], [], seen)
        self.assertEqual(seen["scratch"], [zygote.TRASH_NAME], seen)
        self.assertGreater(seen["slices"], 1, "a deep tree takes more than one slice")
        # Between slices the deletion holds its root and one directory.
        self.assertLessEqual(seen["max_fds"], 2, seen)
        with open(self.outside_file) as handle:
            self.assertEqual(handle.read(), "keep me\n")
        self.assertTrue(os.path.isdir(self.outside_dir))

    def test_deep_tree_with_locked_dirs_and_symlinks_out(self) -> None:
        # As whoever runs the tests (root here: CAP_DAC_OVERRIDE, as a
        # zygote that deletes the directories of other uids).
        self.check(self.delete_task_tree())

    def test_same_uid_zygote_restores_its_own_rights(self) -> None:
        # The zygote and the task as one unprivileged uid: 0000 directories
        # must be chmod-ed back by their owner, nothing else helps.
        if os.geteuid() != 0:
            self.check(self.delete_task_tree())
            return
        os.chown(self.scratch, 65534, 65534)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                seen = self.delete_task_tree()
                os.write(write_end, json.dumps(seen).encode())
            except BaseException as exc:
                os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as handle:
            seen = json.loads(handle.read().decode() or "{}")
        os.waitpid(pid, 0)
        self.assertNotIn("error", seen, seen)
        self.check(seen)

    def test_huge_flat_directory_goes_in_bounded_slices(self) -> None:
        task = os.path.join(self.scratch, "task-2")
        os.mkdir(task)
        fd = os.open(task, os.O_RDONLY | os.O_DIRECTORY)
        for number in range(30000):
            os.close(os.open(f"f{number}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        os.close(fd)
        trash = zygote.Trash(self.scratch)
        trash.prepare()
        trash.discard(task, "task-2")
        started = time.monotonic()
        trash.work(0.005)
        self.assertLess(time.monotonic() - started, 0.5, "one slice stalls the zygote")
        self.assertTrue(trash.pending(), "30000 files are not deleted in one 5 ms slice")
        slices = 1
        while trash.pending():
            trash.work(0.005)
            slices += 1
        self.assertGreater(slices, 2)
        self.assertEqual(os.listdir(trash.root), [])

    def test_symlink_in_place_of_the_task_directory_is_not_followed(self) -> None:
        task = os.path.join(self.scratch, "task-3")
        os.symlink(self.outside_dir, task)
        trash = zygote.Trash(self.scratch)
        trash.prepare()
        trash.discard(task, "task-3")
        while trash.pending():
            trash.work()
        self.assertFalse(os.path.lexists(task))
        self.assertEqual(os.listdir(trash.root), [])
        self.assertTrue(os.path.isfile(self.outside_file))

    def test_leftovers_of_an_earlier_zygote_are_deleted(self) -> None:
        os.makedirs(os.path.join(self.scratch, zygote.TRASH_NAME, "task-9.1", "a", "b"))
        trash = zygote.Trash(self.scratch)
        trash.prepare()
        self.assertTrue(trash.pending())
        while trash.pending():
            trash.work()
        self.assertEqual(os.listdir(trash.root), [])


# --------------------------------------------------------------------------
# A failed hand-over (sending the worker's socket) is the fork's error only
# --------------------------------------------------------------------------


class FailingControl:
    """The zygote's control socket, whose next send with descriptors fails."""

    def __init__(self, sock: socket.socket, error: int):
        self._sock = sock
        self.error = error
        self.failures = 1

    def sendmsg(self, buffers: Any, ancdata: Any = (), *args: Any) -> int:
        if ancdata and self.failures > 0:
            self.failures -= 1
            raise OSError(self.error, os.strerror(self.error))
        return self._sock.sendmsg(buffers, ancdata, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HandOverTests(unittest.TestCase):
    """An in-process Zygote (no subprocess: the test swaps its socket)."""

    def make_zygote(self, error: int) -> tuple[zygote.Zygote, Channel]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        config = zygote.Config(csv="unused.csv", control_fd=theirs.fileno(), max_output=MAX_OUTPUT)
        z = zygote.Zygote(config, FailingControl(theirs, error), {"__name__": "__main__"})
        self.addCleanup(os.close, z.wake_read)
        self.addCleanup(os.close, z.wake_write)
        self.addCleanup(z.shutdown)
        return z, Channel(ours)

    def wait_reaped(self, z: zygote.Zygote, pid: int) -> None:
        deadline = time.monotonic() + 30
        while (pid in z.abandoned or pid in z.workers) and time.monotonic() < deadline:
            z.reap()
            time.sleep(0.01)

    def test_too_many_refs_is_a_retryable_fork_failure(self) -> None:
        z, channel = self.make_zygote(errno.ETOOMANYREFS)
        z.handle_fork({"type": "fork", "worker_id": 7, "limits": {}})
        failed = channel.read()
        self.assertEqual(failed.message["type"], "fork_failed", failed.message)
        self.assertEqual(failed.message["worker_id"], 7)
        self.assertTrue(failed.message["transient"], failed.message)
        self.assertIn("handing over", failed.message["error"])
        self.assertIn(os.strerror(errno.ETOOMANYREFS), failed.message["error"])
        self.assertEqual(failed.fds, [])
        # The child was killed and is reaped without an exited message.
        self.assertEqual(len(z.abandoned), 1)
        (child,) = z.abandoned
        self.wait_reaped(z, child)
        self.assertNotIn(child, z.abandoned)
        self.assertIsNone(process_state(child))
        channel.sock.setblocking(False)
        with self.assertRaises(BlockingIOError):
            channel.sock.recv(1)
        channel.sock.setblocking(True)
        # The zygote keeps serving: the next fork hands over a working worker.
        z.handle_fork({"type": "fork", "worker_id": 8, "limits": {}})
        forked = channel.read()
        self.assertEqual(forked.message["type"], "forked", forked.message)
        worker = WorkerClient(8, forked.message["pid"], socket.socket(fileno=forked.fds[0]))
        self.assertEqual(worker.run("6 * 7")["result"], "42")
        worker.close()
        self.wait_reaped(z, worker.pid)
        exited = channel.read()
        self.assertEqual((exited.message["type"], exited.message["worker_id"]), ("exited", 8))

    def test_broken_pipe_is_the_supervisor_gone(self) -> None:
        z, _ = self.make_zygote(errno.EPIPE)
        with self.assertRaises(zygote.ControlClosed):
            z.handle_fork({"type": "fork", "worker_id": 3, "limits": {}})
        (child,) = z.abandoned
        self.wait_reaped(z, child)
        self.assertIsNone(process_state(child))

    def test_an_error_while_cleaning_up_costs_nothing_but_a_log_line(self) -> None:
        z, channel = self.make_zygote(errno.ETOOMANYREFS)
        z.control.failures = 0
        z.config = zygote.Config(csv="unused.csv", max_output=MAX_OUTPUT, private_tmp=True)

        def broken(directory: str, label: str) -> None:
            raise RecursionError("maximum recursion depth exceeded")

        z.trash.discard = broken  # type: ignore[method-assign]
        z.handle_fork({"type": "fork", "worker_id": 5, "limits": {}})
        forked = channel.read()
        worker = WorkerClient(5, forked.message["pid"], socket.socket(fileno=forked.fds[0]))
        worker.close()
        self.wait_reaped(z, worker.pid)
        # The worker's end is still reported, and the zygote forks again.
        exited = channel.read()
        self.assertEqual((exited.message["type"], exited.message["worker_id"]), ("exited", 5))
        z.handle_fork({"type": "fork", "worker_id": 6, "limits": {}})
        forked = channel.read()
        self.assertEqual((forked.message["type"], forked.message["worker_id"]), ("forked", 6))
        os.close(forked.fds[0])


# --------------------------------------------------------------------------
# Normalization and answer hashing
# --------------------------------------------------------------------------

# (name, Python expression). Evaluated with pd, np, math, decimal, datetime.
VECTOR_CASES: list[tuple[str, str]] = [
    ("int", "42"),
    ("int_negative", "-7"),
    ("int_beyond_2_53", "2**60"),
    ("int_three", "3"),
    ("float_three_hashes_like_int", "3.0"),
    ("float_negative_zero", "-0.0"),
    ("float_tie_0_125_to_even", "0.125"),
    ("float_tie_0_375_to_even", "0.375"),
    ("float_2_675_binary_below", "2.675"),
    ("float_0_285_binary_below", "0.285"),
    ("float_0_005_binary_above", "0.005"),
    ("float_minus_0_005", "-0.005"),
    ("float_1_005_rounds_to_int", "1.005"),
    ("float_small_negative_to_zero", "-0.001"),
    ("float_point_one_plus_point_two", "0.1 + 0.2"),
    ("float_one_third", "1 / 3"),
    ("float_many_digits", "123456.789"),
    ("float_2_52_minus_half", "2.0**52 - 0.5"),
    ("float_2_53_stays_float", "2.0**53"),
    ("float_above_2_53", "float(2**53 + 2)"),
    ("float_1e16", "1e16"),
    ("float_1e20", "1e20"),
    ("float_minus_1_5e300", "-1.5e300"),
    ("float_nan", "float('nan')"),
    ("float_inf", "float('inf')"),
    ("bool_true", "True"),
    ("bools_and_zeros", "[False, 0, 0.0, True, 1, 1.0]"),
    ("none", "None"),
    ("string_unicode", "'Zürich — 東京 🚀'"),
    ("string_escapes", "'quote \" backslash \\\\ newline \\n tab \\t ctrl \\x01 del \\x7f nbsp \\xa0'"),
    ("string_empty", "''"),
    ("list_mixed", "[1, 2.5, 'x', None, [0.333, []]]"),
    ("dict_nested_sorted", "{'b': [1, 2.5, {'z': None, 'a': True}], 'a': {'y': 1.005, 'x': 's'}, 'é': 1, 'Z': 2}"),
    ("dict_int_keys_become_strings", "{2: 'two', 10: 'ten', 1: 'one'}"),
    ("tuple_and_set", "((1, 2), {3, 1, 2})"),
    ("decimal", "decimal.Decimal('2.675')"),
    ("numpy_int64", "np.int64(7)"),
    ("numpy_float32", "np.float32(0.1)"),
    ("numpy_float64_nan", "np.float64('nan')"),
    ("numpy_bool", "np.bool_(True)"),
    ("numpy_array_2d", "np.array([[1.5, 2.0], [np.nan, 4.25]])"),
    ("numpy_int_array", "np.arange(4)"),
    ("series_default_index", "pd.Series([1.5, 2.25, 3.0])"),
    ("series_labelled_index", "pd.Series([10, 20], index=['a', 'b'])"),
    ("series_filtered_index", "pd.Series([1, 2, 3, 4]).iloc[[1, 3]]"),
    ("series_datetime_index", "pd.Series([1.25, None], index=pd.to_datetime(['2024-01-01', '2024-01-02']))"),
    ("series_size_one", "pd.Series([4.5], index=['only'])"),
    ("series_value_counts", "pd.Series(['x', 'y', 'x', 'x']).value_counts()"),
    ("frame_1x1", "pd.DataFrame({'mean': [12.345]})"),
    ("frame_one_column", "pd.DataFrame({'n': [1, 2]}, index=['p', 'q'])"),
    ("frame_two_columns", "pd.DataFrame({'city': ['Oslo', 'Lima'], 'n': [3, 5.5]})"),
    ("frame_records", "pd.DataFrame({'a': [1, 2], 'b': [0.5, None], 'c': ['x', 'y']})"),
    ("frame_groupby_index", "pd.DataFrame({'g': ['x', 'y', 'x'], 'v': [1.0, 2.0, 3.0], 'w': [1, 1, 1]}).groupby('g').sum()"),
    ("timestamp", "pd.Timestamp('2024-03-01 12:30')"),
    ("timedelta", "pd.Timedelta(hours=36)"),
    ("date", "datetime.date(2024, 2, 29)"),
    ("nat", "pd.NaT"),
]


def vector_namespace() -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    return {"pd": pd, "np": np, "math": math, "decimal": decimal, "datetime": datetime}


def build_vectors() -> list[dict[str, Any]]:
    namespace = vector_namespace()
    vectors = []
    for name, expression in VECTOR_CASES:
        value = eval(expression, namespace)
        vectors.append({
            "name": name,
            "python": expression,
            "normalized": zygote.normalize(value),
            "canonical": zygote.canonical_json(value),
            "hash": zygote.answer_hash(value),
        })
    return vectors


def write_vectors() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(build_vectors(), ensure_ascii=False, indent=2, allow_nan=False)
    VECTORS.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(VECTOR_CASES)} vectors to {VECTORS}")


class NormalizeTests(unittest.TestCase):
    def test_vectors_file_is_current(self) -> None:
        stored = json.loads(VECTORS.read_text(encoding="utf-8"))
        self.assertGreaterEqual(len(stored), 25)
        self.assertEqual(stored, build_vectors(), "regenerate with: python sandbox-image/test_zygote.py --write-vectors")

    def test_hash_from_normalized_json_alone(self) -> None:
        # What the Rust side does: parse "normalized", canonicalize, hash.
        for vector in json.loads(VECTORS.read_text(encoding="utf-8")):
            self.assertEqual(zygote.answer_hash(vector["normalized"]), vector["hash"], vector["name"])

    def test_rounding_rules(self) -> None:
        self.assertEqual(zygote.answer_hash(3.0), zygote.answer_hash(3))
        self.assertEqual(zygote.answer_hash(3.004), zygote.answer_hash(3))
        self.assertNotEqual(zygote.answer_hash(3.006), zygote.answer_hash(3))
        self.assertNotEqual(zygote.answer_hash(True), zygote.answer_hash(1))
        self.assertEqual(zygote.canonical_json({"b": 0.125, "a": [2.675, 1e20]}), '{"a":[2.67,1e+20],"b":0.12}')

    def test_normalize_is_idempotent(self) -> None:
        for vector in build_vectors():
            self.assertEqual(zygote.normalize(vector["normalized"]), vector["normalized"], vector["name"])

    def test_fallback_is_str(self) -> None:
        self.assertEqual(zygote.normalize(complex(1, 2)), "(1+2j)")
        self.assertEqual(zygote.normalize(range(2)), "range(0, 2)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-vectors"]:
        write_vectors()
    else:
        unittest.main()
