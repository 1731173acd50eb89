"""Zygote and worker of the csv-agent sandbox (runs INSIDE the jail).

This file owns everything that happens in Python inside one jail:

* the **zygote**: sets the thread knobs, imports the data stack once, loads the
  dataset as ``df``, freezes the heap for copy-on-write sharing, then serves
  ``fork`` requests from the supervisor on the control socket and reaps every
  child (it is PID 1 of the jail's pid namespace);
* the **worker** (a fork of the zygote): applies its own rlimits and Landlock
  scope, then runs notebook-like cells in one namespace that lives across
  cells, capturing stdout/stderr at the Python and the fd level;
* ``submit()`` and ``hook()``, and the **normalization and hashing** of their
  values (``normalize``, ``answer_hash``) that the Rust side reimplements.

It must never trust the cells it runs: a BaseException raised by a cell never
ends the worker's loop, and nothing a cell does reaches the zygote except
through the kernel (which the jail and the per-worker scope restrict).

The wire protocol is written down in docs/protocol.md; keep both in step.
Only the standard library and the data stack (pandas, numpy, scipy,
scikit-learn, statsmodels) may be imported here.
"""

from __future__ import annotations

import ast
import builtins
import collections
import csv
import ctypes
import datetime
import decimal
import errno
import gc
import hashlib
import io
import json
import linecache
import math
import os
import re
import resource
import select
import signal
import socket
import stat as stat_module
import struct
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
FRAME_HEADER = struct.Struct(">I")
# Room in a result for what is not capped text (submitted, hooks, keys).
RESULT_VALUES_BUDGET = 4 * 1024 * 1024


def worker_frame_limit(max_output: int) -> int:
    """The supervisor's bound on a worker's frames (protocol.rs
    worker_frame_limit): five capped strings that JSON may escape 6x, plus
    the values budget, never above MAX_FRAME."""
    return min(32 * max_output + RESULT_VALUES_BUDGET, MAX_FRAME)

# Exit codes of the zygote and of workers (documented in docs/protocol.md).
EXIT_OK = 0
EXIT_LOAD_ERROR = 1
EXIT_PROTOCOL_ERROR = 2
EXIT_WORKER_INTERNAL = 70

SNIFF_BYTES = 64 * 1024
SEPARATORS = ",\t;|"

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)

# Packages whose versions the ready message reports.
REPORTED_PACKAGES = (
    "pandas",
    "numpy",
    "scipy",
    "scikit-learn",
    "statsmodels",
    "joblib",
    "threadpoolctl",
    "patsy",
)

# prctl(2) options and Landlock constants (linux/prctl.h, linux/landlock.h).
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
# struct sock_filter: u16 code, u8 jt, u8 jf, u32 k (native byte order).
SOCK_FILTER = struct.Struct("=HBBI")
# struct ucred (pid, uid, gid) of SCM_CREDENTIALS.
CREDENTIALS = struct.Struct("3i")
BPF_CLASS_MASK = 0x07
BPF_JMP = 0x05
# Highest capability number any kernel may know; dropping an unknown one
# fails with EINVAL, which is ignored.
CAP_LAST_POSSIBLE = 63
# Exit status of a worker that could not be set up (it never ran user code).
EXIT_WORKER_SETUP = 71
# Landlock syscalls have the same numbers on every architecture (asm-generic).
# The access rights are not kept here: the supervisor computes them for the
# kernel's ABI (src/sandbox/landlock.rs, `WorkerRights`) and hands them over
# in the configuration ("worker_landlock").
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446

# Frames from this file are cut from the tracebacks shown to the model.
_THIS_FILE = __file__
_THIS_FILE_ABS = os.path.abspath(__file__)

# The data stack, imported by import_data_stack() (lazily when this file is
# imported as a module by tests or tools).
np: Any = None
pd: Any = None


def log(message: str) -> None:
    """One line to the zygote's stderr, which is the supervisor's log."""
    print(f"zygote[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


class ProtocolError(Exception):
    """A frame that cannot be read: too long, truncated, or not a JSON object."""


def encode_frame(message: dict[str, Any]) -> bytes:
    # allow_nan=False: the Rust side parses strict JSON, so a NaN that slipped
    # through must fail here rather than there. "replace" only matters for lone
    # surrogates, which are not valid UTF-8.
    body = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    data = body.encode("utf-8", "replace")
    return FRAME_HEADER.pack(len(data)) + data


def send_frame(
    sock: socket.socket,
    message: dict[str, Any],
    ancillary: Optional[list[tuple[int, int, bytes]]] = None,
) -> None:
    data = encode_frame(message)
    if ancillary is None:
        sock.sendall(data)
        return
    # Ancillary data travels with the first byte of the frame; a stream socket
    # may accept only part of a large buffer, so finish with sendall.
    sent = sock.sendmsg([data], ancillary)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: socket.socket, size: int, at_start: bool) -> Optional[bytes]:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if at_start and not chunks:
                return None
            raise ProtocolError(f"connection closed inside a frame ({len(chunks)} of {size} bytes)")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> Optional[dict[str, Any]]:
    """The next message, or None on a clean end of stream."""
    header = _recv_exact(sock, FRAME_HEADER.size, at_start=True)
    if header is None:
        return None
    (length,) = FRAME_HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    body = _recv_exact(sock, length, at_start=False) or b""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("frame is not a JSON object with a string \"type\"")
    return message


# --------------------------------------------------------------------------
# Normalization and hashing of answers (reimplemented in src/answers.rs)
# --------------------------------------------------------------------------


def import_data_stack() -> None:
    """Bind the module globals np and pd (idempotent)."""
    global np, pd
    if np is None or pd is None:
        import numpy
        import pandas

        np = numpy
        pd = pandas


def _clean_str(text: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8; replace them so the value we
    # send and the value we hash are the same string.
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _clean_float(value: float) -> Optional[float]:
    if math.isnan(value) or math.isinf(value):
        return None
    return value


def _has_default_index(index: Any) -> bool:
    """True for the index a frame gets when nobody chose one: 0..n-1.

    A RangeIndex(0, n, 1) is the usual form, but some pandas operations hand
    back an integer Index holding the same labels, which means the same.
    """
    if isinstance(index, pd.RangeIndex):
        return index.start == 0 and index.step == 1
    if isinstance(index, pd.MultiIndex) or index.dtype.kind not in "iu":
        return False
    return bool(np.array_equal(index.to_numpy(), np.arange(len(index))))


def _normalize_array(array: Any) -> Any:
    array = np.asarray(array)  # also turns np.matrix into a plain ndarray
    if array.ndim == 0:
        return normalize(array[()])
    if array.dtype.kind in "mM":
        # tolist() would turn datetime64[ns] into bare integers.
        return [_normalize_array(item) for item in array]
    return normalize(array.tolist())


def _normalize_series(series: Any) -> Any:
    if series.size == 1:
        return normalize(series.iloc[0])
    values = [normalize(item) for item in series.tolist()]
    if _has_default_index(series.index):
        return values
    keys = [_clean_str(str(label)) for label in series.index.tolist()]
    return dict(zip(keys, values))


def _normalize_frame(frame: Any) -> Any:
    rows, columns = frame.shape
    if rows == 1 and columns == 1:
        return normalize(frame.iat[0, 0])
    if columns == 1:
        return _normalize_series(frame.iloc[:, 0])
    default_index = _has_default_index(frame.index)
    if columns == 2 and default_index:
        keys = [_clean_str(str(key)) for key in frame.iloc[:, 0].tolist()]
        values = [normalize(value) for value in frame.iloc[:, 1].tolist()]
        return dict(zip(keys, values))
    names = [_clean_str(str(column)) for column in frame.columns]
    records = [
        {name: normalize(value) for name, value in zip(names, row)}
        for row in frame.itertuples(index=False, name=None)
    ]
    if default_index:
        return records
    # A chosen index (a groupby result, say) carries meaning: keep it as the
    # key rather than dropping it, as a Series with such an index does.
    labels = [_clean_str(str(label)) for label in frame.index.tolist()]
    return dict(zip(labels, records))


def normalize(value: Any) -> Any:
    """Turn any value a cell may produce into plain JSON (see docs/protocol.md)."""
    import_data_stack()
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _clean_float(float(value))
    if isinstance(value, str):
        return _clean_str(str(value))
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (pd.Timedelta, datetime.timedelta)):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            return None
        return str(pd.Timedelta(value))
    if isinstance(value, decimal.Decimal):
        return _clean_float(float(value))
    if isinstance(value, pd.DataFrame):
        return _normalize_frame(value)
    if isinstance(value, pd.Series):
        return _normalize_series(value)
    if isinstance(value, (pd.Index, pd.api.extensions.ExtensionArray)):
        return [normalize(item) for item in value.tolist()]
    if isinstance(value, np.ndarray):
        return _normalize_array(value)
    if isinstance(value, Mapping):
        return {_clean_str(str(key)): normalize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [normalize(item) for item in sorted(value, key=repr)]
    return _clean_str(str(value))


def canonicalize(value: Any) -> Any:
    """Round floats to 2 decimals; integral results below 2**53 become ints.

    Input must already be normalized JSON (None, bool, int, float, str, list,
    dict with str keys).
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        rounded = round(value, 2)
        if rounded.is_integer() and abs(rounded) < 2**53:
            return int(rounded)
        return rounded
    if isinstance(value, list):
        return [canonicalize(item) for item in value]
    if isinstance(value, dict):
        return {key: canonicalize(item) for key, item in value.items()}
    raise TypeError(f"cannot canonicalize {type(value).__name__}: normalize it first")


def canonical_json(value: Any) -> str:
    return json.dumps(
        canonicalize(normalize(value)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def answer_hash(value: Any) -> str:
    """First 16 hex digits of sha256 over the canonical JSON of the value."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------
# Configuration and start-up
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LandlockRights:
    """struct landlock_ruleset_attr's numbers for one ABI, as the supervisor
    computed them (the landlock crate's sets): handled_fs for the ruleset and
    a directory rule, file_rights for a rule on a file, scoped for signals
    and abstract unix sockets."""

    abi: int
    handled_fs: int
    file_rights: int
    scoped: int


@dataclass(frozen=True)
class Config:
    csv: str
    control_fd: int = 3
    max_output: int = 65536
    worker_scope: bool = False
    # Give each worker its own scratch directory <TMPDIR>/task-<id>, and keep
    # the rest of TMPDIR out of its Landlock domain (needs worker_scope).
    private_tmp: bool = False
    # What the worker's domain allows (all access rights, still bounded by the
    # jail's own domain): the jail's Landlock paths minus the scratch root.
    worker_paths: tuple[str, ...] = ()
    # The rights of each worker's own Landlock domain, computed by the
    # supervisor for the kernel's ABI; None (with the supervisor's reason in
    # worker_landlock_error) when this host has no usable Landlock.
    worker_landlock: Optional[LandlockRights] = None
    worker_landlock_error: Optional[str] = None
    threads: int = 1
    # Per-worker uids: (first, count) of the ids inside the jail that workers
    # switch to, one each while it lives; None when every worker keeps the
    # zygote's uid (single-uid mode).
    worker_ids: Optional[tuple[int, int]] = None
    # The seccomp filter each worker adds (struct sock_filter bytes) and the
    # value in it that stands for the worker's own pid.
    worker_filter: Optional[bytes] = None
    worker_filter_placeholder: int = 0
    # Largest result frame the supervisor accepts from a worker; a bigger
    # result becomes a ResultTooLarge error.
    max_frame: int = worker_frame_limit(65536)


def parse_config(argv: list[str]) -> Config:
    if len(argv) != 2:
        raise ValueError(f"expected one argument (the config JSON), got {len(argv) - 1}")
    try:
        raw = json.loads(argv[1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"config is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("config is not a JSON object")
    csv_path = raw.get("csv")
    if not isinstance(csv_path, str) or not csv_path:
        raise ValueError("config needs \"csv\": the path of the dataset inside the jail")
    max_output = raw.get("max_output", 65536)
    config = Config(
        csv=csv_path,
        control_fd=raw.get("control_fd", 3),
        max_output=max_output,
        worker_scope=raw.get("worker_scope", False),
        private_tmp=raw.get("private_tmp", False),
        worker_paths=tuple(raw.get("worker_paths", ())),
        worker_landlock=_parse_worker_landlock(raw.get("worker_landlock")),
        worker_landlock_error=raw.get("worker_landlock_error"),
        threads=raw.get("threads", 1),
        worker_ids=_parse_worker_ids(raw.get("worker_ids")),
        **_parse_worker_filter(raw.get("worker_filter")),
        max_frame=raw.get("max_frame", worker_frame_limit(max_output) if isinstance(max_output, int) else 0),
    )
    if not isinstance(config.private_tmp, bool):
        raise ValueError(f"config \"private_tmp\" must be a boolean, got {config.private_tmp!r}")
    if not all(isinstance(p, str) and p.startswith("/") for p in config.worker_paths):
        raise ValueError("config \"worker_paths\" must be a list of absolute paths")
    for name in ("control_fd", "max_output", "threads", "max_frame"):
        number = getattr(config, name)
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"config \"{name}\" must be a non-negative integer, got {number!r}")
    if config.threads < 1 or config.max_output < 1 or config.max_frame < 1:
        raise ValueError("config \"threads\", \"max_output\" and \"max_frame\" must be at least 1")
    if config.worker_landlock_error is not None and not isinstance(config.worker_landlock_error, str):
        raise ValueError("config \"worker_landlock_error\" must be a string")
    if not isinstance(config.worker_scope, bool):
        raise ValueError(f"config \"worker_scope\" must be a boolean, got {config.worker_scope!r}")
    return config


def _parse_worker_ids(raw: Any) -> Optional[tuple[int, int]]:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("config \"worker_ids\" must be an object or null")
    first, count = raw.get("first"), raw.get("count")
    for name, number in (("first", first), ("count", count)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"config \"worker_ids.{name}\" must be a positive integer, got {number!r}")
    return (first, count)


def _parse_worker_landlock(raw: Any) -> Optional[LandlockRights]:
    if raw is None:
        return None
    fields = ("abi", "handled_fs", "file_rights", "scoped")
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise ValueError(f"config \"worker_landlock\" must be an object with exactly {', '.join(fields)}")
    for name in fields:
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise ValueError(f"config \"worker_landlock.{name}\" must be an unsigned 64-bit integer, got {value!r}")
    rights = LandlockRights(**{name: raw[name] for name in fields})
    if rights.file_rights & ~rights.handled_fs:
        raise ValueError("config \"worker_landlock.file_rights\" must be a subset of handled_fs")
    return rights


def _parse_worker_filter(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not isinstance(raw.get("bpf"), str):
        raise ValueError("config \"worker_filter\" must be an object with a hex \"bpf\"")
    try:
        program = bytes.fromhex(raw["bpf"])
    except ValueError as exc:
        raise ValueError(f"config \"worker_filter.bpf\" is not hex: {exc}") from None
    placeholder = raw.get("placeholder")
    if isinstance(placeholder, bool) or not isinstance(placeholder, int) or placeholder <= 0:
        raise ValueError("config \"worker_filter.placeholder\" must be a positive integer")
    if not program or len(program) % SOCK_FILTER.size:
        raise ValueError("config \"worker_filter.bpf\" is not a whole number of instructions")
    return {"worker_filter": program, "worker_filter_placeholder": placeholder}


def configure_environment(threads: int) -> None:
    """Set before the data stack is imported: BLAS/OpenMP read these once."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    # The supervisor sets both (the jail's /tmp, or a private work directory
    # when the host has no user namespaces); /tmp only if it did not.
    os.environ.setdefault("HOME", "/tmp")
    os.environ.setdefault("TMPDIR", "/tmp")
    os.environ["MPLBACKEND"] = "Agg"
    # joblib/loky: nothing to set. It sizes its pool from os.cpu_count(),
    # affinity and the cgroup quota, and keeps its semaphores in /dev/shm.


def import_full_stack() -> dict[str, Any]:
    """Import what cells use, plus the submodules analyses commonly reach for.

    Everything imported here is shared copy-on-write by every worker, so a
    warm import costs once per dataset instead of once per task.
    """
    import_data_stack()
    import scipy
    import scipy.optimize  # noqa: F401  (warm)
    import scipy.stats as stats
    import sklearn
    import sklearn.cluster  # noqa: F401  (warm)
    import sklearn.ensemble  # noqa: F401  (warm)
    import sklearn.linear_model  # noqa: F401  (warm)
    import sklearn.metrics  # noqa: F401  (warm)
    import sklearn.model_selection  # noqa: F401  (warm)
    import sklearn.preprocessing  # noqa: F401  (warm)
    import sklearn.tree  # noqa: F401  (warm)
    import statsmodels.api as sm
    import statsmodels.formula.api  # noqa: F401  (warm)

    return {"pd": pd, "np": np, "scipy": scipy, "stats": stats, "sklearn": sklearn, "sm": sm}


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class LoadError(Exception):
    """The dataset could not be read; the message is sent as load_error."""


def sniff_separator(sample: str, complete: bool) -> str:
    if not complete and "\n" in sample:
        # The sample ends mid-line; a partial last row confuses the sniffer.
        sample = sample[: sample.rfind("\n") + 1]
    try:
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        pass
    # The sniffer gives up on ragged or single-row files: the candidate seen
    # most often in the header is then a better guess than a bare comma.
    header = sample.split("\n", 1)[0]
    counts = {separator: header.count(separator) for separator in SEPARATORS}
    best = max(SEPARATORS, key=lambda separator: counts[separator])
    return best if counts[best] > 0 else ","


def wide_encoding(head: bytes) -> Optional[str]:
    """UTF-16/32 announced by a byte-order mark (spreadsheet "Unicode text" exports)."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return None


def binary_reason(path: str, head: bytes) -> str:
    """Why a file with NUL bytes (and no byte-order mark) is not loaded."""
    sample = head[:4096]
    even, odd = sample[0::2], sample[1::2]
    if sample and (odd.count(0) > 0.4 * len(odd) or even.count(0) > 0.4 * len(even)):
        return (
            f"{path} looks like UTF-16 text without a byte-order mark, which cannot be read "
            "reliably; save it as UTF-8 (or UTF-16 with a BOM)"
        )
    return f"{path} contains NUL bytes at offset {head.index(0)}: a binary file, not CSV text"


def load_csv(path: str) -> tuple[Any, str, str]:
    """Read the dataset: (frame, separator, encoding)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES + 1)
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head.strip():
        raise LoadError(f"{path} is empty")
    if head.startswith(b"SQLite format 3\x00"):
        # The typed store of an imported workbook, Parquet, JSON or SQLite
        # file (src/datasets/import/table.rs): one table `data` whose
        # declared column types give the dtypes back. Opened read-only and
        # immutable: no journal or lock file next to a read-only mount.
        import sqlite3
        import urllib.parse

        try:
            con = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro&immutable=1", uri=True)
            try:
                declared = {row[1]: (row[2] or "").upper() for row in con.execute("PRAGMA table_info(data)")}
                frame = pd.read_sql_query("SELECT * FROM data", con)
            finally:
                con.close()
            for name, kind in declared.items():
                column = frame[name]
                missing = bool(column.isna().any())
                if kind == "INTEGER":
                    frame[name] = column.astype("Int64" if missing else "int64")
                elif kind == "REAL":
                    frame[name] = column.astype("float64")
                elif kind == "BOOLEAN":
                    frame[name] = column.astype("boolean" if missing else "bool")
                elif kind in ("DATE", "TIMESTAMP"):
                    frame[name] = pd.to_datetime(column, format="ISO8601")
        except Exception as exc:  # sqlite3 and pandas raise many types
            raise LoadError(f"cannot read the typed dataset {path}: {type(exc).__name__}: {exc}") from None
        return frame, "sqlite", "utf-8"
    complete = len(head) <= SNIFF_BYTES
    wide = wide_encoding(head)
    if wide is None and b"\x00" in head:
        raise LoadError(binary_reason(path, head))
    # Separators are ASCII, so undecodable bytes do not matter for sniffing.
    sample = head[:SNIFF_BYTES].decode(wide or "utf-8-sig", "replace")
    separator = sniff_separator(sample, complete)
    try:
        if wide is not None:
            frame = pd.read_csv(path, sep=separator, encoding=wide)
            encoding = wide
        else:
            try:
                frame = pd.read_csv(path, sep=separator, encoding="utf-8-sig")
                encoding = "utf-8"
            except UnicodeDecodeError:
                frame = pd.read_csv(path, sep=separator, encoding="latin-1")
                encoding = "latin-1"
    except Exception as exc:  # pandas raises many types; all mean "cannot load"
        raise LoadError(f"cannot parse {path} (separator {separator!r}): {type(exc).__name__}: {exc}") from None
    return frame, separator, encoding


_LIBC: Optional[ctypes.CDLL] = None


def _libc() -> ctypes.CDLL:
    """The C library, loaded once. The zygote loads it (and looks up the
    functions workers call) before it forks, so a worker finds it in shared
    memory instead of building a new CDLL and its function-pointer class."""
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.restype = ctypes.c_int
        libc.fflush  # noqa: B018  (looked up now: cached on the CDLL)
        try:
            libc.malloc_trim  # noqa: B018  (glibc only; see release_free_memory)
        except AttributeError:
            pass
        _LIBC = libc
    return _LIBC


def prctl(option: int, argument: int) -> None:
    libc = _libc()
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(argument), zero, zero, zero) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}, {argument}): {os.strerror(error)}")


# --------------------------------------------------------------------------
# Warming (before the heap is frozen)
# --------------------------------------------------------------------------

# Rounds of the warm-up. The first builds the caches: nearly all of the gain,
# for about 35 ms of start-up. More rounds let CPython 3.11 quicken the
# bytecode too (from a function's 8th call): 9 rounds saved about 0.1 MiB more
# per worker but cost about 0.2 s of every zygote's start, more than the 5 %
# the jail start may add to the bare import.
WARM_ROUNDS = 1
# The filter the warm-up runs under (added to the list directly: no
# registry is invalidated by it).
_IGNORE_ALL = ("ignore", None, Warning, None, 0)


def _filters_version() -> Optional[int]:
    """The interpreter's warnings-filter version (what a module's
    __warningregistry__ is valid for), read through a private registry with
    every warning ignored. None if it cannot be read."""
    registry: dict[Any, Any] = {}
    warnings.filters.insert(0, _IGNORE_ALL)
    try:
        warnings.warn_explicit("csv-agent probe", UserWarning, "<csv-agent probe>", 0,
                               module="<csv-agent probe>", registry=registry)
    finally:
        warnings.filters.remove(_IGNORE_ALL)
    version = registry.get("version")
    return version if isinstance(version, int) else None


def _warning_registries() -> dict[str, Optional[dict[Any, Any]]]:
    """A copy of every loaded module's __warningregistry__ (None: it has none)."""
    saved: dict[str, Optional[dict[Any, Any]]] = {}
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            registry = namespace.get("__warningregistry__")
            saved[name] = dict(registry) if isinstance(registry, dict) else None
    return saved


def _restore_warning_registries(saved: dict[str, Optional[dict[Any, Any]]], before: int, after: int) -> None:
    """Put every registry back as it was; one that was valid before the
    warm-up (its version was `before`) is marked valid again (`after`): a
    warning shown once during the imports stays shown once."""
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        old = saved.get(name)
        if old is None:
            namespace.pop("__warningregistry__", None)
            continue
        if old.get("version") == before:
            old["version"] = after
        current = namespace.get("__warningregistry__")
        if isinstance(current, dict):
            current.clear()
            current.update(old)
        else:
            namespace["__warningregistry__"] = old


def _warm_frame() -> Any:
    """A small private frame with a column of every kind a CSV gives."""
    n = 48
    index = np.arange(n)
    return pd.DataFrame(
        {
            "w_float": (index % 7) * 1.5,
            "w_int": index.astype("int64"),
            "w_gaps": np.where(index % 5 == 0, np.nan, index / 3.0),
            "w_group": np.array(["p", "q", "r"], dtype=object)[index % 3],
            "w_text": np.array([f"t{i} u{i % 4}" for i in index], dtype=object),
            "w_flag": index % 4 == 0,
            "w_day": pd.to_datetime([f"2024-01-{1 + i % 28:02d}" for i in index]),
        }
    )


def _warm_once(frame: Any, stats: Any) -> None:
    """The first-call paths analysis code keeps taking: summaries, missing
    values, grouping, correlations, the common scipy tests, and this file's
    own normalization and hashing of answers."""
    numeric = frame.select_dtypes(include="number").columns.tolist()
    frame.describe(include="all")
    frame.describe()
    frame.isna().mean().sort_values(ascending=False)
    frame.nunique(dropna=True)
    frame["w_group"].value_counts()
    grouped = frame.groupby("w_group", observed=True)
    grouped[numeric].agg(["mean", "median", "std", "count"])
    grouped[numeric].mean()
    grouped.size()
    samples = [group.dropna().to_numpy() for _, group in grouped[numeric[0]]]
    stats.kruskal(*samples)
    stats.f_oneway(*samples)
    frame[numeric].corr(method="spearman")
    frame[numeric].corr()
    pair = frame[numeric[:2]].dropna()
    stats.pearsonr(pair.iloc[:, 0], pair.iloc[:, 1])
    stats.spearmanr(pair.iloc[:, 0], pair.iloc[:, 1])
    stats.ttest_ind(samples[0], samples[1])
    frame[numeric].agg(["mean", "median", "std", "count"])
    frame.loc[frame["w_float"] > 3, ["w_group", "w_int"]].sort_values("w_int")
    answer_hash(normalize(grouped[numeric[0]].mean()))
    answer_hash(normalize({"n": np.int64(3), "x": np.float64(0.5), "s": "t"}))


# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's default for both; setting them also turns off its dynamic
# threshold, which the CSV parser's big buffers have raised by now.
MALLOC_THRESHOLD = 128 * 1024


def tune_malloc() -> None:
    """Make glibc give a worker's big temporaries back to the kernel.

    By the time the dataset is loaded, glibc has raised its mmap threshold
    (and with it the trim threshold) to the size of the parser's largest
    freed buffer, so a worker's arrays of a few hundred kB come from the
    shared heap (copying its pages) and stay there after they are freed.
    With both thresholds back at 128 kB, such arrays are mapped and unmapped
    on their own and the heap's free top is returned."""
    libc = _libc()
    for parameter in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(MALLOC_THRESHOLD)) != 1:
            log(f"mallopt({parameter}) failed")


def release_free_memory() -> None:
    """Give the C heap's free pages back to the kernel: run by a worker after
    each cell. The trim threshold returns only the heap's free top; what a
    cell freed below a live block stays resident (and private) until
    malloc_trim(0) releases every whole free page. About 0.3 ms; 0.4 MiB
    less per worker after the default task on the 20,000-row mixed CSV."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to release this way
        pass


# One row of sys._debugmallocstats()'s table: class, size, pools, blocks in
# use, available blocks.
_SIZE_CLASS_ROW = re.compile(rb"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", re.M)
FILL_ROUNDS = 3
# What the zygote keeps to fill the allocator's holes (never read).
_HOLE_FILLERS: list[list[Any]] = []


def _free_small_blocks() -> dict[int, int]:
    """Free blocks in the object allocator's partly used pools, by block
    size, from sys._debugmallocstats() (which writes to fd 2: caught in a
    memfd for the moment)."""
    sys.stderr.flush()
    capture = os.memfd_create("mallocstats", os.MFD_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(capture, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
        size = os.fstat(capture).st_size
        text = os.pread(capture, size, 0)
    finally:
        os.close(saved)
        os.close(capture)
    return {int(row.group(2)): int(row.group(5)) for row in _SIZE_CLASS_ROW.finditer(text)}


def _filler(block_size: int, serial: int) -> Any:
    """A fresh object that takes exactly one block of this size."""
    if block_size == 16:
        return object()
    if block_size == 32:
        return (1 << 20) + serial  # a one-digit int: 28 bytes, no free list
    return bytes(block_size - 33)  # a bytes object takes 33 + its length


def fill_allocator_holes() -> int:
    """Occupy the free blocks of the object allocator's partly used pools.

    Objects freed while the stack was imported and the CSV parsed leave free
    blocks scattered over pages that are otherwise full and shared. A
    worker's first allocations would take those blocks first, copying a
    whole page for each. Filled here with inert objects that the zygote keeps
    (in memory that is resident anyway), a worker's allocations go to pools
    of their own. Returns the blocks filled."""
    filled = 0
    for _ in range(FILL_ROUNDS):
        free = _free_small_blocks()
        total = sum(free.values())
        if total == 0:
            break
        slots: list[Any] = [None] * total
        index = 0
        for block_size, count in free.items():
            for _ in range(count):
                slots[index] = _filler(block_size, index)
                index += 1
        _HOLE_FILLERS.append(slots)
        filled += total
    return filled


def warm_data_stack() -> Optional[str]:
    """Run the common first-call paths on a private frame before the heap is
    frozen, so what they build once (quickened bytecode, caches, interned
    names) is shared by every worker instead of being built in each.

    Nothing of it reaches a task: no random state is drawn, no option is set,
    warnings are ignored and every module's warning registry is put back as it
    was, and the frame and its results are dropped. Returns why it was
    skipped, or None.
    """
    import scipy.stats as stats

    before = _filters_version()
    if before is None:
        return "the warnings-filter version cannot be read"
    registries = _warning_registries()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = _warm_frame()
            for _ in range(WARM_ROUNDS):
                _warm_once(frame, stats)
    finally:
        after = _filters_version()
        _restore_warning_registries(registries, before, after if after is not None else before)
    return None


# --------------------------------------------------------------------------
# Zygote
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    cpu_seconds: Optional[int] = None
    address_space_extra: Optional[int] = None
    nofile: Optional[int] = None

    @staticmethod
    def from_message(raw: Any) -> "Limits":
        if raw is None:
            return Limits()
        if not isinstance(raw, dict):
            raise ValueError("\"limits\" must be an object")
        values: dict[str, Optional[int]] = {}
        for name, minimum in (("cpu_seconds", 1), ("address_space_extra", 0), ("nofile", 1)):
            number = raw.get(name)
            if number is None:
                values[name] = None
                continue
            if isinstance(number, float) and number.is_integer():
                number = int(number)
            if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
                raise ValueError(f"limit \"{name}\" must be an integer >= {minimum} or null, got {number!r}")
            values[name] = number
        return Limits(**values)


# Errors of a send on the control socket that mean the supervisor is gone.
# Anything else while passing a worker's socket (ETOOMANYREFS: the per-user
# count of descriptors in flight is exhausted; EMSGSIZE, ENOBUFS, ENOMEM) is
# about the descriptor or a momentary shortage, not the channel.
CONTROL_GONE_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF})
# fork() errors worth a retry by the supervisor.
TRANSIENT_FORK_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOBUFS})

# Work of the clean-up between two looks at the control socket (seconds).
CLEANUP_SLICE = 0.01
# Where finished tasks' scratch directories wait for deletion, under the
# scratch root: no worker's Landlock domain reaches it.
TRASH_NAME = ".trash"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ControlClosed(Exception):
    """A send on the control socket failed: the supervisor is gone."""


class HandOverFailed(Exception):
    """The forked message with the worker's socket could not be sent, for a
    reason that is not the control channel's (the channel is still usable)."""


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _make_owner_rwx(fd: int, st: os.stat_result) -> None:
    """A directory the task left without rights for its owner (0000, 0500):
    give them back when we own it, so it can be listed and emptied. (A root
    zygote with CAP_DAC_OVERRIDE needs none of this and owns nothing.)"""
    if st.st_uid == os.geteuid() and (st.st_mode & 0o700) != 0o700:
        try:
            os.fchmod(fd, 0o700)
        except OSError:
            pass


def _restore_owner_rights(parent: str, name: str) -> None:
    """chmod 0700 the directory parent/name if we own it, without following
    a symlink (through an O_PATH descriptor). Errors are ignored."""
    parent_fd = path_fd = -1
    try:
        parent_fd = os.open(parent, _DIR_FLAGS)
        path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        st = os.fstat(path_fd)
        if stat_module.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
    except OSError:
        pass
    finally:
        _close_quietly(path_fd)
        _close_quietly(parent_fd)


class TreeDeletion:
    """Deletes one directory tree, iteratively, a slice at a time.

    No recursion, and never more than four descriptors open whatever the
    depth: the root, the directory being emptied, and for a moment its child
    or parent (plus scandir's duplicate). Symlinks are never followed (every
    open has O_NOFOLLOW, unlink never follows). Going back up uses "..", but
    only after checking that it is the directory recorded on the way down
    (device and inode); if not (something moved a directory meanwhile) the
    walk starts again from the root, so it never leaves the tree.
    """

    def __init__(self, parent: str, name: str):
        self.parent = parent
        self.name = name
        self.root_fd = -1
        self.cur_fd = -1
        self.root_id: tuple[int, int] = (0, 0)
        # (name, st_dev, st_ino) of each directory from the root down to cur.
        self.stack: list[tuple[str, int, int]] = []

    @property
    def path(self) -> str:
        return os.path.join(self.parent, self.name)

    def close(self) -> None:
        _close_quietly(self.cur_fd)
        _close_quietly(self.root_fd)
        self.cur_fd = self.root_fd = -1
        self.stack = []

    def _remove_root(self) -> None:
        parent_fd = os.open(self.parent, _DIR_FLAGS)
        try:
            try:
                os.rmdir(self.name, dir_fd=parent_fd)
            except NotADirectoryError:
                os.unlink(self.name, dir_fd=parent_fd)
            except FileNotFoundError:
                pass
        finally:
            os.close(parent_fd)

    def _start(self) -> bool:
        """Open the root; True when there is nothing (left) to walk."""
        parent_fd = os.open(self.parent, _DIR_FLAGS)
        try:
            try:
                fd = self._open_dir(parent_fd, self.name)
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # A symlink or a file: removed itself, never followed.
                try:
                    os.unlink(self.name, dir_fd=parent_fd)
                except FileNotFoundError:
                    pass
                return True
        finally:
            os.close(parent_fd)
        st = os.fstat(fd)
        _make_owner_rwx(fd, st)
        self.root_fd = fd
        self.root_id = (st.st_dev, st.st_ino)
        self.cur_fd = os.dup(fd)
        self.stack = []
        return False

    @staticmethod
    def _open_dir(dir_fd: int, name: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            pass
        # No read permission (a 0000 directory): as its owner we may chmod it.
        # Through an O_PATH descriptor, so that nothing swapped in meanwhile
        # (a symlink) is ever followed, and reopened through the same inode.
        path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if not stat_module.S_ISDIR(os.fstat(path_fd).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
            proc_path = f"/proc/self/fd/{path_fd}"
            os.chmod(proc_path, 0o700)
            return os.open(proc_path, _DIR_FLAGS & ~os.O_NOFOLLOW)
        finally:
            os.close(path_fd)

    def _first_entry(self) -> Optional[tuple[str, bool]]:
        # scandir works on a duplicate and rewinds it when closed.
        with os.scandir(self.cur_fd) as entries:
            for entry in entries:
                return entry.name, entry.is_dir(follow_symlinks=False)
        return None

    def _restart_from_root(self) -> None:
        _close_quietly(self.cur_fd)
        self.cur_fd = os.dup(self.root_fd)
        self.stack = []

    def _descend(self, name: str) -> None:
        try:
            fd = self._open_dir(self.cur_fd, name)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return  # replaced by a symlink or a file: listed again, unlinked
            raise
        st = os.fstat(fd)
        if st.st_dev != self.root_id[0]:
            os.close(fd)
            raise OSError(errno.EXDEV, f"a mount point inside the tree at {name!r}")
        _make_owner_rwx(fd, st)
        self.stack.append((name, st.st_dev, st.st_ino))
        os.close(self.cur_fd)
        self.cur_fd = fd

    def _ascend(self) -> None:
        name, _, _ = self.stack.pop()
        parent = os.open("..", _DIR_FLAGS, dir_fd=self.cur_fd)
        st = os.fstat(parent)
        expected = (self.stack[-1][1], self.stack[-1][2]) if self.stack else self.root_id
        if (st.st_dev, st.st_ino) != expected:
            os.close(parent)
            self._restart_from_root()
            return
        os.close(self.cur_fd)
        self.cur_fd = parent
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            # Gone already, or not empty after all (refilled): listed again.
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.cur_fd)
        except OSError as exc:
            # Gone, or swapped for a directory: the next listing decides.
            if exc.errno not in (errno.ENOENT, errno.EISDIR):
                raise

    def step(self, deadline: float) -> bool:
        """Work until the deadline; True once the whole tree is gone."""
        if self.root_fd < 0 and self._start():
            return True
        while time.monotonic() < deadline:
            entry = self._first_entry()
            if entry is None:
                if not self.stack:
                    self.close()
                    self._remove_root()
                    return True
                self._ascend()
            elif entry[1]:
                self._descend(entry[0])
            else:
                self._unlink(entry[0])
        return False


class Trash:
    """Finished tasks' scratch directories: moved out of the way atomically
    (renamed into a zygote-only directory under the scratch root), then
    deleted by TreeDeletion in bounded slices between requests. Nothing here
    raises: a tree that cannot be deleted is logged and left in the trash."""

    def __init__(self, scratch_root: str):
        self.scratch_root = scratch_root
        self.root = os.path.join(scratch_root, TRASH_NAME)
        self.queue: list[tuple[str, str]] = []  # (parent, name) to delete
        self.current: Optional[TreeDeletion] = None
        self.counter = 0
        self.usable = False
        self.failures = 0

    def prepare(self) -> None:
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            log(f"cannot create the trash directory {self.root}: {exc}; task directories are deleted in place")
            return
        try:
            st = os.lstat(self.root)
            if not stat_module.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                log(f"{self.root} is not our directory; task directories are deleted in place")
                return
            os.chmod(self.root, 0o700)
            # Leftovers of an earlier zygote on the same scratch root.
            for name in os.listdir(self.root):
                self.queue.append((self.root, name))
        except OSError as exc:
            log(f"cannot use the trash directory {self.root}: {exc}")
            return
        self.usable = True

    def pending(self) -> bool:
        return self.current is not None or bool(self.queue)

    def discard(self, directory: str, label: str) -> None:
        """Take `directory` (a direct child of the scratch root) out of every
        worker's reach now and queue it for deletion."""
        name = os.path.basename(directory)
        parent = os.path.dirname(directory)
        if self.usable:
            self.counter += 1
            target = f"{label}.{self.counter}"
            try:
                os.rename(directory, os.path.join(self.root, target))
                self.queue.append((self.root, target))
                return
            except FileNotFoundError:
                return
            except PermissionError:
                # Moving a directory to another parent needs write access to
                # it (its ".." changes); the task may have taken that away.
                _restore_owner_rights(parent, name)
                try:
                    os.rename(directory, os.path.join(self.root, target))
                    self.queue.append((self.root, target))
                    return
                except OSError as exc:
                    log(f"cannot move {directory} to the trash: {exc}; deleting it in place")
            except OSError as exc:
                log(f"cannot move {directory} to the trash: {exc}; deleting it in place")
        self.queue.append((parent, name))

    def work(self, budget: float = CLEANUP_SLICE) -> None:
        """Delete for at most about `budget` seconds."""
        deadline = time.monotonic() + budget
        while self.pending() and time.monotonic() < deadline:
            if self.current is None:
                parent, name = self.queue.pop(0)
                self.current = TreeDeletion(parent, name)
            try:
                if self.current.step(deadline):
                    self.current = None
            except Exception as exc:  # a tree we cannot delete must not stop the zygote
                self.failures += 1
                log(f"cannot delete {self.current.path}: {type(exc).__name__}: {exc}; left in place")
                self.current.close()
                self.current = None

    def close_in_child(self) -> None:
        """A fresh worker must not inherit a descriptor into another task's tree."""
        if self.current is not None:
            self.current.close()


def _kill_worker(pid: int) -> None:
    """SIGKILL a worker's process group (it leads its session) and the worker."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Zygote:
    """The fork server: one per jail, PID 1 of its pid namespace."""

    def __init__(self, config: Config, control: socket.socket, namespace_seed: dict[str, Any]):
        self.config = config
        self.control = control
        self.namespace_seed = namespace_seed
        # Per-task scratch directories live here (TMPDIR as the supervisor set it).
        self.scratch_root = os.environ.get("TMPDIR", "/tmp")
        self.workers: dict[int, int] = {}  # pid -> worker_id
        # Per-worker uids not in use, least recently used first; pid -> uid of
        # every living worker.
        self.free_ids: Optional[collections.deque[int]] = None
        if config.worker_ids is not None:
            first, count = config.worker_ids
            self.free_ids = collections.deque(range(first, first + count))
        self.worker_ids: dict[int, int] = {}
        # Children whose hand-over failed: killed, reaped and cleaned up, but
        # never reported (the supervisor got fork_failed for them).
        self.abandoned: dict[int, int] = {}  # pid -> worker_id
        self.trash = Trash(self.scratch_root)
        if config.private_tmp:
            self.trash.prepare()
        self.terminate_requested = False
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # Signals only note that something happened; the loop does the work, so
    # nothing runs inside a handler but a flag and the wakeup byte.
    def _on_sigchld(self, signum: int, frame: Any) -> None:
        pass

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.terminate_requested = True

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def send(self, message: dict[str, Any], fds: Optional[list[int]] = None) -> None:
        """Send one frame. ControlClosed when the supervisor is gone;
        HandOverFailed when only passing `fds` failed (nothing was sent)."""
        data = encode_frame(message)
        sent = 0
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            try:
                # The descriptors travel with the first byte of the frame.
                sent = self.control.sendmsg([data], ancillary)
            except OSError as exc:
                if exc.errno in CONTROL_GONE_ERRNOS:
                    raise ControlClosed(f"sending {message['type']}: {exc}") from exc
                raise HandOverFailed(exc.strerror or str(exc)) from exc
        try:
            if sent < len(data):
                self.control.sendall(data[sent:])
        except OSError as exc:
            raise ControlClosed(f"sending {message['type']}: {exc}") from exc

    def serve(self) -> int:
        self.install_signal_handlers()
        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        try:
            while True:
                # With clean-up pending, only look: a request is never kept
                # waiting for more than one slice of it.
                events = dict(poller.poll(0 if self.trash.pending() else None))
                if self.wake_read in events:
                    self._drain_wakeup()
                # Reap before reading: an exited worker is reported even when
                # the supervisor keeps the control socket busy.
                self.reap()
                if self.terminate_requested:
                    log("SIGTERM: shutting down")
                    self.shutdown()
                    return EXIT_OK
                if self.control.fileno() in events:
                    message = read_frame(self.control)
                    if message is None:
                        log("control socket closed: shutting down")
                        self.shutdown()
                        return EXIT_OK
                    if not self.dispatch(message):
                        return EXIT_OK
                if self.trash.pending():
                    self.trash.work()
        except ProtocolError as exc:
            log(f"protocol error on the control socket: {exc}")
            self.shutdown()
            return EXIT_PROTOCOL_ERROR
        except (ControlClosed, OSError) as exc:
            # The supervisor went away mid-send: nobody is left to serve.
            log(f"control socket failed: {exc}")
            self.shutdown()
            return EXIT_OK

    def dispatch(self, message: dict[str, Any]) -> bool:
        """Handle one control message; False once the zygote should exit."""
        kind = message["type"]
        if kind == "fork":
            self.handle_fork(message)
            return True
        if kind == "shutdown":
            log("shutdown requested")
            self.shutdown()
            return False
        self.send({"type": "error", "error": f"unexpected message type {kind}, expected fork or shutdown"})
        return True

    def _fork_failed(self, worker_id: int, error: str, transient: bool) -> None:
        self.send({"type": "fork_failed", "worker_id": worker_id, "error": error, "transient": transient})

    def handle_fork(self, message: dict[str, Any]) -> None:
        worker_id = message.get("worker_id")
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            self.send({"type": "error", "error": f"fork message needs an integer worker_id, got {worker_id!r}"})
            return
        try:
            limits = Limits.from_message(message.get("limits"))
        except ValueError as exc:
            self._fork_failed(worker_id, f"invalid limits: {exc}", False)
            return
        try:
            self._fork(worker_id, limits)
        except ControlClosed:
            raise
        except Exception as exc:  # a bug or a surprise here costs this fork only
            log(f"forking worker {worker_id} failed: {type(exc).__name__}: {exc}")
            self._fork_failed(worker_id, f"internal error: {type(exc).__name__}: {exc}", False)

    def _fork(self, worker_id: int, limits: Limits) -> None:
        uid: Optional[int] = None
        if self.free_ids is not None:
            if not self.free_ids:
                self._fork_failed(worker_id, "every worker uid of this sandbox is in use", True)
                return
            uid = self.free_ids.popleft()
        try:
            self._fork_as(worker_id, limits, uid)
        finally:
            # Whatever happened (an exception too): a uid that no child holds
            # is first in line again; one a child holds returns when it is
            # reaped.
            if uid is not None and self.free_ids is not None and uid not in self.worker_ids.values():
                self.free_ids.appendleft(uid)

    def _fork_as(self, worker_id: int, limits: Limits, uid: Optional[int]) -> None:
        """Fork worker `worker_id`, which switches to `uid` when given."""
        try:
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            self._fork_failed(worker_id, f"socketpair: {exc.strerror or exc}", exc.errno in TRANSIENT_FORK_ERRNOS)
            return
        try:
            # Set before the fork so the worker's very first frame (hello) already
            # carries credentials for whoever ends up holding this end.
            parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # Buffered log lines would otherwise be written again by the child.
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                self._fork_failed(worker_id, f"fork: {exc.strerror or exc}", exc.errno in TRANSIENT_FORK_ERRNOS)
                return
            if pid == 0:
                try:
                    parent_end.close()
                    self.trash.close_in_child()
                    run_worker(self, child_end, worker_id, limits, uid)
                except BaseException:
                    # A bug in this file, not in a cell: leave a trace wherever
                    # fd 2 points by now, and never fall back into the zygote loop.
                    traceback.print_exc()
                finally:
                    os._exit(EXIT_WORKER_INTERNAL)
            # The child leads a session of its own (setsid); setpgid from here
            # would make it a group leader first and so make its setsid fail.
            # The supervisor kills a worker through its pidfd and cgroup, so it
            # does not depend on the group existing yet.
            child_end.close()
            self.workers[pid] = worker_id
            if uid is not None:
                self.worker_ids[pid] = uid  # back to the pool when it is reaped
            try:
                self.send({"type": "forked", "worker_id": worker_id, "pid": pid}, fds=[parent_end.fileno()])
            except HandOverFailed as exc:
                self._abandon(pid)
                log(f"handing over worker {worker_id}'s socket failed: {exc}; the worker was killed")
                self._fork_failed(worker_id, f"handing over the worker's socket failed: {exc}", True)
            except ControlClosed:
                self._abandon(pid)
                raise
        finally:
            parent_end.close()
            child_end.close()

    def _abandon(self, pid: int) -> None:
        """Kill a child the supervisor will never hear of; reap() collects it."""
        worker_id = self.workers.pop(pid, None)
        if worker_id is not None:
            self.abandoned[pid] = worker_id
        _kill_worker(pid)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def reap(self) -> None:
        """Wait for every dead child: workers are reported, orphans are not."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            try:
                self._reaped(pid, status)
            except ControlClosed:
                raise
            except Exception as exc:  # never let one worker's end stop the zygote
                log(f"after reaping pid {pid}: {type(exc).__name__}: {exc}")

    def _reaped(self, pid: int, status: int) -> None:
        worker_id = self.workers.pop(pid, None)
        reported = worker_id is not None
        if worker_id is None:
            worker_id = self.abandoned.pop(pid, None)
        if worker_id is None:
            return  # an orphan reparented to us (we are PID 1 / subreaper)
        uid = self.worker_ids.pop(pid, None)
        if uid is not None and self.free_ids is not None:
            # Reused last: whatever the task left running under this uid has
            # the whole pool's turn to be killed with its cgroup.
            self.free_ids.append(uid)
        if self.config.private_tmp:
            # The task is over: its scratch directory goes out of every
            # worker's reach now and is deleted between requests, so its files
            # do not fill the scratch space of the tasks that come after it.
            try:
                self.trash.discard(task_scratch_dir(self.scratch_root, worker_id), f"task-{worker_id}")
            except Exception as exc:  # reported below all the same
                log(f"cleaning up after worker {worker_id}: {type(exc).__name__}: {exc}")
        if not reported:
            return
        code = os.waitstatus_to_exitcode(status)
        self.send(
            {
                "type": "exited",
                "worker_id": worker_id,
                "pid": pid,
                "exit_code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
            }
        )

    def shutdown(self) -> None:
        pids = list(self.workers) + list(self.abandoned)
        for pid in pids:
            _kill_worker(pid)
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.workers.clear()
        self.abandoned.clear()
        self.trash.close_in_child()


# --------------------------------------------------------------------------
# Worker: limits, Landlock scope, output capture, cells
# --------------------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_worker_filter(program: bytes, placeholder: int, pid: int) -> dict[str, Any]:
    """Add the worker's seccomp filter with its own pid in place of the
    placeholder: calls that name a process by pid may then name only the
    worker itself. Filters only ever narrow what earlier ones allow."""
    patched = bytearray()
    replaced = 0
    for code, jt, jf, k in SOCK_FILTER.iter_unpack(program):
        if k == placeholder and code & BPF_CLASS_MASK == BPF_JMP:
            k = pid
            replaced += 1
        patched += SOCK_FILTER.pack(code, jt, jf, k)
    if not replaced:
        return {"applied": False, "error": "the worker filter holds no pid placeholder"}
    buffer = ctypes.create_string_buffer(bytes(patched), len(patched))
    fprog = _SockFprog(len(patched) // SOCK_FILTER.size, ctypes.cast(buffer, ctypes.c_void_p))
    libc = _libc()
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                  ctypes.c_ulong(ctypes.addressof(fprog)), zero, zero) != 0:
        error = ctypes.get_errno()
        return {"applied": False, "error": f"prctl(PR_SET_SECCOMP): {os.strerror(error)} (errno {error})"}
    return {"applied": True, "error": None}


def become_worker_user(uid: int) -> None:
    """Switch for good to the worker's own uid (and the same gid): first the
    bounding set goes (needs CAP_SETPCAP, still held), then the ids; leaving
    uid 0 clears the permitted and effective sets. Raises OSError."""
    libc = _libc()
    zero = ctypes.c_ulong(0)
    for cap in range(CAP_LAST_POSSIBLE + 1):
        if libc.prctl(ctypes.c_int(PR_CAPBSET_DROP), ctypes.c_ulong(cap), zero, zero, zero) != 0:
            error = ctypes.get_errno()
            if error != errno.EINVAL:
                raise OSError(error, f"dropping capability {cap} from the bounding set: {os.strerror(error)}")
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise OSError(errno.EPERM, f"the switch to uid {uid} did not hold")
    os.umask(0o077)


def current_vm_size() -> int:
    # Read as bytes: a text read would look up its codec in every fresh
    # worker (an import's worth of private memory), bytes need none.
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize line in /proc/self/status")


def _lower_limit(which: int, soft: int, hard: int) -> tuple[int, int]:
    """Set a limit, clamped below the current hard limit (it may only go down)."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))
    return soft, hard


def apply_limits(limits: Limits) -> dict[str, Any]:
    report: dict[str, Any] = {"cpu_seconds": None, "address_space": None, "nofile": None, "error": None}
    errors: list[str] = []
    if limits.cpu_seconds is not None:
        try:
            # The soft limit sends SIGXCPU (the worker dies of it); the hard
            # limit one second later is SIGKILL in case SIGXCPU is caught.
            soft, _ = _lower_limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
            report["cpu_seconds"] = soft
        except (OSError, ValueError) as exc:
            errors.append(f"RLIMIT_CPU: {exc}")
    if limits.address_space_extra is not None:
        try:
            # The memory fallback when cgroups are missing: what the worker
            # already maps (shared with the zygote) plus the allowed growth.
            total = current_vm_size() + limits.address_space_extra
            soft, _ = _lower_limit(resource.RLIMIT_AS, total, total)
            report["address_space"] = soft
        except (OSError, ValueError) as exc:
            errors.append(f"RLIMIT_AS: {exc}")
    if limits.nofile is not None:
        try:
            soft, _ = _lower_limit(resource.RLIMIT_NOFILE, limits.nofile, limits.nofile)
            report["nofile"] = soft
        except (OSError, ValueError) as exc:
            errors.append(f"RLIMIT_NOFILE: {exc}")
    if errors:
        report["error"] = "; ".join(errors)
    return report


class _LandlockRulesetAttr(ctypes.Structure):
    # struct landlock_ruleset_attr, ABI 6 layout (24 bytes).
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _LandlockPathBeneathAttr(ctypes.Structure):
    # struct landlock_path_beneath_attr is packed: u64 + s32 = 12 bytes.
    _pack_ = 1
    _fields_ = [
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    ]


SYS_LANDLOCK_ADD_RULE = 445
LANDLOCK_RULE_PATH_BENEATH = 1


def task_scratch_dir(scratch_root: str, worker_id: int) -> str:
    return os.path.join(scratch_root, f"task-{worker_id}")


def enter_private_scratch(directory: str) -> None:
    """Create the task's scratch directory and make it HOME, TMPDIR and the
    working directory, before the worker's domain hides the rest."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = directory
    os.environ["HOME"] = directory
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    os.chdir(directory)


def apply_landlock_scope(
    rights: Optional[LandlockRights],
    unavailable: Optional[str] = None,
    allowed_paths: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Enter a fresh Landlock domain that scopes signals and abstract unix
    sockets: the worker can then signal only itself and its descendants, never
    the zygote or a sibling worker. Landlock also forbids ptrace-style access
    (/proc/<pid>/mem) across domains.

    `rights` are the supervisor's numbers for the kernel's ABI (None, with its
    reason in `unavailable`, when the host has no usable Landlock). With
    `allowed_paths` the domain also handles every filesystem right of that
    ABI and allows them only beneath those paths (the jail's own domain still
    bounds them): that is how a worker loses sight of its siblings' scratch
    directories.
    """
    if rights is None:
        reason = unavailable or "the configuration carries no Landlock rights"
        return {"applied": False, "abi": None, "error": reason}
    libc = _libc()
    abi = rights.abi
    try:
        # Required by landlock_restrict_self without CAP_SYS_ADMIN; already set
        # inside the jail, set here so the scope also works outside it.
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        return {"applied": False, "abi": abi, "error": str(exc)}
    handled_fs = rights.handled_fs if allowed_paths is not None else 0
    attr = _LandlockRulesetAttr(handled_fs, 0, rights.scoped)
    ruleset_fd = libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        ctypes.c_uint32(0),
    )
    if ruleset_fd < 0:
        error = ctypes.get_errno()
        return {"applied": False, "abi": abi, "error": f"landlock_create_ruleset: {os.strerror(error)} (errno {error})"}
    try:
        for path in allowed_paths or ():
            try:
                path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # an optional path this host does not have
            try:
                is_dir = stat_module.S_ISDIR(os.fstat(path_fd).st_mode)
                allowed = handled_fs if is_dir else handled_fs & rights.file_rights
                rule = _LandlockPathBeneathAttr(allowed, path_fd)
                added = libc.syscall(
                    ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
                    ctypes.c_int(ruleset_fd),
                    ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                    ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
                if added < 0:
                    error = ctypes.get_errno()
                    return {"applied": False, "abi": abi, "error": f"landlock_add_rule({path}): {os.strerror(error)} (errno {error})"}
            finally:
                os.close(path_fd)
        result = libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)
        )
        if result < 0:
            error = ctypes.get_errno()
            return {"applied": False, "abi": abi, "error": f"landlock_restrict_self: {os.strerror(error)} (errno {error})"}
    finally:
        os.close(ruleset_fd)
    return {"applied": True, "abi": abi, "error": None}


TRUNCATION_MARGIN = 4  # one UTF-8 character past the cap, to find its boundary


def cap_output(data: bytes, total: int, cap: int) -> tuple[str, int]:
    """Keep the head of a stream: (text, bytes cut).

    ``data`` holds at least the first min(total, cap + 4) bytes of the stream.
    The cut never splits a UTF-8 character; invalid bytes decode as U+FFFD.
    """
    if total <= cap:
        return data[:total].decode("utf-8", "replace"), 0
    cut = cap
    steps = 0
    # Step back over continuation bytes (10xxxxxx) to the start of the
    # character the cap falls in; at most 3 for valid UTF-8.
    while cut > 0 and steps < 3 and cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut -= 1
        steps += 1
    if steps == 3 and (data[cut] & 0xC0) == 0x80:
        cut = cap  # not UTF-8 anyway: cut where the cap says
    text = data[:cut].decode("utf-8", "replace")
    removed = total - cut
    if text and not text.endswith("\n"):
        text += "\n"
    return text + f"[... {removed} bytes truncated]\n", removed


class CappedBuffer:
    """The head of what was written (cap + a margin) and the total size."""

    def __init__(self, cap: int):
        self.keep = cap + TRUNCATION_MARGIN
        self.data = bytearray()
        self.total = 0

    def reset(self) -> None:
        self.data = bytearray()
        self.total = 0

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.keep - len(self.data)
        if room > 0:
            self.data += chunk[:room]


class CapturedBinaryStream(io.RawIOBase):
    """sys.stdout.buffer of a cell: bytes into the same capped buffer."""

    def __init__(self, buffer: CappedBuffer, fd: int):
        super().__init__()
        self._buffer = buffer
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._buffer.write(chunk)
        return len(chunk)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        pass  # a cell closing sys.stdout must not break the next cell


class CapturedTextStream(io.TextIOBase):
    """sys.stdout / sys.stderr of a cell. One object per worker, so handlers
    that kept a reference (logging.basicConfig in an earlier cell) still write
    into the current cell's capture."""

    def __init__(self, buffer: CappedBuffer, fd: int, name: str):
        super().__init__()
        self._buffer = buffer
        self._fd = fd
        self._name = name
        self._binary = CapturedBinaryStream(buffer, fd)

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "replace"

    @property
    def name(self) -> str:
        return self._name

    @property
    def buffer(self) -> CapturedBinaryStream:
        return self._binary

    @property
    def line_buffering(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # Code that writes to the fd (subprocess, faulthandler) lands in the
        # fd-level capture of the same stream.
        return self._fd

    def write(self, text: Any) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._buffer.write(text.encode("utf-8", "replace"))
        return len(text)

    def close(self) -> None:
        pass  # see CapturedBinaryStream.close


class StreamCapture:
    """One output stream of the worker (fd 1 or 2), captured twice: Python
    writes go to a CappedBuffer, fd writes (C code, children) to a memfd that
    the fd points at. Merged python-then-fd when the cell ends."""

    def __init__(self, fd: int, name: str, cap: int):
        self.fd = fd
        self.cap = cap
        self.buffer = CappedBuffer(cap)
        self.stream = CapturedTextStream(self.buffer, fd, f"<{name}>")
        self._spill: Any = None
        try:
            self.file_fd = os.memfd_create(f"cell-{name}", os.MFD_CLOEXEC)
        except (OSError, AttributeError):
            # No memfd (old kernel or a filter that denies it): an unlinked
            # file in TMPDIR does the same job.
            self._spill = tempfile.TemporaryFile()
            self.file_fd = self._spill.fileno()
        # From now on the worker's fd never points at the supervisor's log
        # pipe (which it inherited from the zygote), even between cells.
        os.dup2(self.file_fd, self.fd)

    def begin(self) -> None:
        self.buffer.reset()
        os.ftruncate(self.file_fd, 0)
        # fd 1/2 share this file description (and so its offset) after dup2.
        os.lseek(self.file_fd, 0, os.SEEK_SET)
        # Redone every cell: a cell may have closed or replaced the fd.
        os.dup2(self.file_fd, self.fd)

    def collect(self) -> tuple[str, int]:
        size = os.fstat(self.file_fd).st_size
        wanted = min(size, self.cap + TRUNCATION_MARGIN)
        head = bytearray()
        while len(head) < wanted:
            chunk = os.pread(self.file_fd, wanted - len(head), len(head))
            if not chunk:
                break
            head += chunk
        # The python part holds min(total, cap + 4) bytes, all cap_output may look at.
        return cap_output(bytes(self.buffer.data) + bytes(head), self.buffer.total + size, self.cap)


def _flush_c_stdio() -> None:
    try:
        _libc().fflush(None)
    except (OSError, AttributeError):
        pass
    # The interpreter's own wrappers on fds 1/2 (sys.__stdout__) buffer too.
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _is_own_frame(filename: str) -> bool:
    return filename == _THIS_FILE or filename == _THIS_FILE_ABS


def _strip_own_frames(exception: traceback.TracebackException, seen: set[int]) -> None:
    if id(exception) in seen:
        return
    seen.add(id(exception))
    kept = [frame for frame in exception.stack if not _is_own_frame(frame.filename)]
    exception.stack = traceback.StackSummary.from_list(kept)
    for linked in (exception.__cause__, exception.__context__):
        if linked is not None:
            _strip_own_frames(linked, seen)
    for member in getattr(exception, "exceptions", None) or []:
        _strip_own_frames(member, seen)


def describe_exception(exc: BaseException) -> dict[str, str]:
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        summary = traceback.TracebackException.from_exception(exc)
        _strip_own_frames(summary, set())
        if isinstance(exc, SyntaxError) and str(exc.filename or "").startswith("<cell-"):
            # The cell did not parse: the parser's own frames (ast.py) say
            # nothing to its author; the caret under the cell's line does.
            summary.stack = traceback.StackSummary.from_list([])
        formatted = "".join(summary.format())
    except Exception as failure:  # a broken __str__ or __repr__ in user code
        formatted = f"{type(exc).__name__}: {message}\n(traceback unavailable: {failure!r})\n"
    return {"type": type(exc).__name__, "message": _clean_str(message), "traceback": _clean_str(formatted)}


def run_code(code: str, filename: str, namespace: dict[str, Any]) -> Any:
    """Exec a cell; the value of a trailing expression statement, else None."""
    tree = ast.parse(code, filename=filename, mode="exec")
    trailing: Optional[ast.Expression] = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        trailing = ast.Expression(tree.body.pop().value)
    # dont_inherit: this file's `from __future__ import annotations` must not
    # leak into user code.
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
    if trailing is None:
        return None
    return eval(compile(trailing, filename, "eval", dont_inherit=True), namespace)


class Worker:
    """One task's REPL: a namespace that lives across cells."""

    def __init__(self, sock: socket.socket, worker_id: int, config: Config, namespace_seed: dict[str, Any]):
        self.sock = sock
        self.worker_id = worker_id
        self.config = config
        self.in_cell = False
        self.submitted: Optional[dict[str, Any]] = None
        self.hooks: list[dict[str, Any]] = []
        self.stdout = StreamCapture(1, "stdout", config.max_output)
        self.stderr = StreamCapture(2, "stderr", config.max_output)
        # A real module as __main__: pickle (multiprocessing, joblib) finds
        # functions defined in cells by looking them up in sys.modules.
        main_module = types.ModuleType("__main__")
        self.namespace: dict[str, Any] = main_module.__dict__
        self.namespace.update(namespace_seed)
        self.namespace.update({"submit": self.submit, "hook": self.hook, "__builtins__": builtins})
        sys.modules["__main__"] = main_module

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # Interrupts the running cell (reported as KeyboardInterrupt); between
        # cells it would tear a frame apart, so it is ignored there.
        if self.in_cell:
            raise KeyboardInterrupt

    def submit(self, answer: Any, **meta: Any) -> None:
        """Record the task's final answer (a later call replaces it)."""
        value = normalize(answer)
        self.submitted = {"value": value, "hash": answer_hash(value), "meta": normalize(meta)}
        shown = json.dumps(value, ensure_ascii=False)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        print(f"✓ Submitted: {shown}")

    def hook(
        self,
        value: Any,
        code_line: Any,
        name: Optional[str] = None,
        description: Optional[str] = None,
        depends_on: Any = None,
    ) -> Any:
        """Record an intermediate checkpoint; returns value unchanged."""
        if isinstance(depends_on, str):
            depends_on = [depends_on]  # list("abc") would split the name
        normalized = normalize(value)
        self.hooks.append(
            {
                "variable_name": normalize(name),
                "code_line": normalize(code_line),
                "value": normalized,
                "value_hash": answer_hash(normalized),
                "depends_on": normalize(list(depends_on or [])),
                "description": normalize(description),
            }
        )
        return value

    def execute(self, cell: Any, code: str) -> dict[str, Any]:
        self.submitted = None
        self.hooks = []
        filename = f"<cell-{cell}>"
        # Lets tracebacks show the cell's source lines; mtime None means the
        # entry is never invalidated by linecache.checkcache.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        self.stdout.begin()
        self.stderr.begin()
        sys.stdout = self.stdout.stream
        sys.stderr = self.stderr.stream
        status = "ok"
        error: Optional[dict[str, str]] = None
        result: Optional[str] = None
        started = time.perf_counter()
        try:
            self.in_cell = True
            try:
                value = run_code(code, filename, self.namespace)
                if value is not None:
                    result = repr(value)
            finally:
                self.in_cell = False
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too
            status = "error"
            error = describe_exception(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        _flush_c_stdio()
        stdout, stdout_cut = self.stdout.collect()
        stderr, stderr_cut = self.stderr.collect()
        if result is not None:
            result = self._cap_text(_clean_str(result))
        return {
            "type": "result",
            "cell": cell,
            "status": status,
            "stdout": stdout,
            "stderr": stderr,
            "stdout_truncated": stdout_cut,
            "stderr_truncated": stderr_cut,
            "result": result,
            "error": error,
            "submitted": self.submitted,
            "hooks": self.hooks,
            "elapsed_ms": elapsed_ms,
        }

    def _cap_text(self, text: str) -> str:
        encoded = text.encode("utf-8")
        return cap_output(encoded, len(encoded), self.config.max_output)[0]

    def reply(self, message: dict[str, Any]) -> None:
        limit = self.config.max_frame
        error = message.get("error")
        if isinstance(error, dict):
            # Capped like the streams (the supervisor cuts them there too).
            message = dict(message)
            message["error"] = {key: self._cap_text(value) if key in ("message", "traceback") and isinstance(value, str) else value
                                for key, value in error.items()}
        try:
            frame = encode_frame(message)
            if len(frame) - FRAME_HEADER.size > limit:
                raise ValueError(f"result of {len(frame) - FRAME_HEADER.size} bytes exceeds the {limit}-byte frame limit")
        except ValueError as exc:
            # Too big (huge submitted/hook values) or not JSON: report it as the
            # cell's error rather than sending a frame the supervisor rejects
            # (it would kill the worker for a protocol violation).
            fallback = dict(message)
            fallback["status"] = "error"
            fallback["submitted"] = None
            fallback["hooks"] = []
            fallback["error"] = {"type": "ResultTooLarge", "message": str(exc), "traceback": ""}
            frame = encode_frame(fallback)
            if len(frame) - FRAME_HEADER.size > limit:
                # Only with a max_output so big that its escaped streams alone
                # pass the frame ceiling: drop the text as well.
                for key in ("stdout", "stderr"):
                    fallback[f"{key}_truncated"] = fallback.get(f"{key}_truncated", 0) + len(str(fallback.get(key, "")).encode("utf-8"))
                    fallback[key] = ""
                fallback["result"] = None
                frame = encode_frame(fallback)
        self.sock.sendall(frame)

    def serve(self) -> NoReturn:
        while True:
            try:
                message = read_frame(self.sock)
            except ProtocolError:
                os._exit(EXIT_PROTOCOL_ERROR)
            except OSError:
                os._exit(EXIT_OK)
            if message is None:
                os._exit(EXIT_OK)
            kind = message["type"]
            if kind == "exit":
                os._exit(EXIT_OK)
            if kind != "exec":
                self._send_or_exit({"type": "error", "error": f"unexpected message type {kind}, expected exec or exit"})
                continue
            code = message.get("code")
            cell = message.get("cell")
            if not isinstance(code, str):
                self._send_or_exit({"type": "error", "error": "exec message needs a string \"code\""})
                continue
            self._send_or_exit(self.execute(cell, code))
            release_free_memory()

    def _send_or_exit(self, message: dict[str, Any]) -> None:
        try:
            self.reply(message)
        except OSError:
            os._exit(EXIT_OK)  # the supervisor hung up: nobody to serve


def run_worker(zygote: Zygote, sock: socket.socket, worker_id: int, limits: Limits, uid: Optional[int]) -> NoReturn:
    """Everything a fresh fork does, in order. Never returns."""
    # 1. Drop what belongs to the zygote: the control channel and its wakeup.
    signal.set_wakeup_fd(-1)
    zygote.control.close()
    os.close(zygote.wake_read)
    os.close(zygote.wake_write)
    # 2. Default signal behaviour (SIGPIPE stays ignored, as Python sets it).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # 3. Own session and process group: no process group of the zygote's
    #    session (the zygote's own among them) can be joined from here, so
    #    PRIO_PGRP and kill(0) reach only this task's processes.
    os.setsid()
    # 4. Its own uid, for good (per-worker uid mode): from here on the kernel
    #    tells this task from the zygote and from every sibling.
    if uid is not None:
        try:
            become_worker_user(uid)
        except OSError as exc:
            log(f"worker {worker_id}: cannot switch to uid {uid}: {exc}")
            os._exit(EXIT_WORKER_SETUP)
        try:
            # Its /proc files become its own again (its own environ, mem);
            # another uid and Landlock's ptrace scoping keep everyone else out.
            prctl(PR_SET_DUMPABLE, 1)
        except OSError as exc:
            log(f"worker {worker_id}: cannot set the dumpable flag: {exc}")
    # 5. rlimits, then the per-worker Landlock domain.
    limits_report = apply_limits(limits)
    if zygote.config.worker_scope and zygote.config.private_tmp:
        scratch = task_scratch_dir(zygote.scratch_root, worker_id)
        try:
            enter_private_scratch(scratch)
            scope = apply_landlock_scope(
                zygote.config.worker_landlock,
                zygote.config.worker_landlock_error,
                zygote.config.worker_paths + (scratch,),
            )
        except OSError as exc:
            scope = {"applied": False, "abi": None, "error": f"private scratch directory {scratch}: {exc}"}
    elif zygote.config.worker_scope:
        scope = apply_landlock_scope(zygote.config.worker_landlock, zygote.config.worker_landlock_error)
    else:
        scope = {"applied": False, "abi": None, "error": None}
    # 6. The worker's own seccomp filter: pids of other processes are refused.
    if zygote.config.worker_filter is not None:
        try:
            filter_status = install_worker_filter(
                zygote.config.worker_filter, zygote.config.worker_filter_placeholder, os.getpid()
            )
        except (OSError, ValueError, struct.error) as exc:
            filter_status = {"applied": False, "error": str(exc)}
    else:
        filter_status = {"applied": False, "error": "no worker filter configured"}
    worker = Worker(sock, worker_id, zygote.config, zygote.namespace_seed)
    signal.signal(signal.SIGINT, worker._on_sigint)
    # 7. Hello, with credentials: the supervisor reads our host pid from them.
    credentials = CREDENTIALS.pack(os.getpid(), os.getuid(), os.getgid())
    hello = {
        "type": "hello",
        "version": PROTOCOL_VERSION,
        "worker_id": worker_id,
        "pid": os.getpid(),
        "scope": scope,
        "filter": filter_status,
        "uid": os.getuid(),
        "limits": limits_report,
    }
    try:
        send_frame(sock, hello, [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
    except OSError:
        os._exit(EXIT_OK)
    worker.serve()


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def prepare_heap() -> None:
    """Ready the imported stack and the loaded dataset for sharing, last step
    before the first fork: warm the common paths, tune malloc, fill the
    allocator's holes, freeze. `scripts/memory-floor.py` runs the same steps
    outside the jail."""
    try:
        skipped = warm_data_stack()
    except Exception as exc:  # a warm-up that fails costs memory, not the sandbox
        skipped = f"{type(exc).__name__}: {exc}"
    if skipped is not None:
        log(f"warm-up skipped: {skipped}")
    tune_malloc()
    try:
        fill_allocator_holes()
    except Exception as exc:  # an optimisation: never a reason to fail
        log(f"filling the allocator's holes failed: {type(exc).__name__}: {exc}")
    # Everything allocated so far is shared with every worker; freezing keeps
    # the collector from writing to (and so un-sharing) those pages. The
    # collector is on again from here, in the zygote and in every worker it
    # forks (they inherit it), over what is allocated after the freeze.
    gc.freeze()
    gc.enable()


def main(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except ValueError as exc:
        log(f"bad config: {exc}")
        return EXIT_PROTOCOL_ERROR
    configure_environment(config.threads)
    # No collection until the heap is frozen: every collection during the
    # imports frees cycles and leaves holes in pages that then stay shared,
    # and a worker's first allocations would land in those holes (copying the
    # page). gc.freeze() below, then the collector runs again (zygote and
    # workers), over young objects only.
    gc.disable()
    try:
        control = socket.socket(fileno=config.control_fd)
    except OSError as exc:
        log(f"control fd {config.control_fd} is not a socket: {exc}")
        return EXIT_PROTOCOL_ERROR
    try:
        # Workers must not inherit a terminal or pipe they could block on.
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    except OSError:
        pass

    started = time.perf_counter()
    modules = import_full_stack()
    import_ms = (time.perf_counter() - started) * 1000.0

    started = time.perf_counter()
    try:
        frame, separator, encoding = load_csv(config.csv)
    except LoadError as exc:
        log(f"load error: {exc}")
        try:
            send_frame(control, {"type": "load_error", "error": str(exc)})
        except OSError:
            pass
        return EXIT_LOAD_ERROR
    load_ms = (time.perf_counter() - started) * 1000.0

    namespace_seed = {"__name__": "__main__", "df": frame, **modules}
    prepare_heap()
    try:
        # Not dumpable: no process of the same uid may open our (and, through
        # fork, every worker's) /proc/<pid>/mem or attach to it.
        prctl(PR_SET_DUMPABLE, 0)
    except OSError as exc:
        log(f"cannot clear the dumpable flag: {exc}")
    try:
        # As PID 1 orphans come to us anyway; outside a pid namespace (tests,
        # a jail without one) this makes them come to us too, so that we reap
        # a worker's orphaned children as PID 1 would.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        log(f"cannot become a child subreaper: {exc}")

    zygote = Zygote(config, control, namespace_seed)
    try:
        send_frame(
            control,
            {
                "type": "ready",
                "version": PROTOCOL_VERSION,
                "pid": os.getpid(),
                "python": sys.version,
                "packages": package_versions(),
                "rows": int(frame.shape[0]),
                "columns": int(frame.shape[1]),
                "separator": separator,
                "encoding": encoding,
                "import_ms": import_ms,
                "load_ms": load_ms,
            },
        )
    except OSError as exc:
        log(f"cannot send ready: {exc}")
        return EXIT_OK
    return zygote.serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
