"""A client of `csv-agent serve`, standard library only (one file, Python 3.9+).

Run a policy's code in the jail and score its answer from a trainer:

    from csv_agent_client import Client, make_grpo_reward

    client = Client()                      # $CSV_AGENT_SERVE, else the default socket
    with client.session(dataset="penguins") as s:
        print(s.run("df.shape")["result"])  # the same object as `sandbox exec --json`

    # TRL: GRPOTrainer(..., reward_funcs=make_grpo_reward(), train_dataset=rl_rows)

`make_grpo_reward` returns a reward function with TRL's signature: for each
completion it runs every ```python block in a fresh session on the row's
`dataset` (the CSV loaded as `df`), collects what it `submit()`ted and
`hook()`ed, and asks the server for the documented `rl` reward
(`POST /v1/score`: 1.0 for a tolerant match + 0.25 x the share of expected
hooks). The reward is computed by the server, never re-implemented here.

Transport: a unix socket (only the server's uid may connect), or
`http://127.0.0.1:PORT` with the bearer token in $CSV_AGENT_SERVE_TOKEN.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import socket
import sys
from typing import Any, Iterable, Iterator, Optional

__all__ = [
    "Client",
    "Session",
    "ServeError",
    "extract_code",
    "rollout",
    "make_grpo_reward",
    "default_endpoint",
]


class ServeError(Exception):
    """The server refused a request: `status` (HTTP) and its `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over AF_UNIX."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def default_endpoint() -> str:
    """$CSV_AGENT_SERVE, else the server's default socket path."""
    env = os.environ.get("CSV_AGENT_SERVE")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "csv-agent", "serve.sock")
    return f"/tmp/csv-agent-{os.geteuid()}/serve.sock"


class Client:
    """One connection to the server (kept alive); not thread-safe: use one
    Client per thread."""

    def __init__(self, endpoint: Optional[str] = None, token: Optional[str] = None, timeout: float = 330.0):
        self.endpoint = endpoint or default_endpoint()
        self.token = token if token is not None else os.environ.get("CSV_AGENT_SERVE_TOKEN")
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.endpoint.startswith("http://"):
                hostport = self.endpoint[len("http://"):].rstrip("/")
                self._conn = http.client.HTTPConnection(hostport, timeout=self.timeout)
            else:
                path = self.endpoint[len("unix:"):] if self.endpoint.startswith("unix:") else self.endpoint
                self._conn = _UnixConnection(path, self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.endpoint.startswith("http://") and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            conn = self._connection()
            try:
                try:
                    conn.request(method, path, body=data, headers=headers)
                except (BrokenPipeError, ConnectionResetError):
                    # The server may refuse (401, 413, ...) before it has read
                    # the whole body and then close: its answer is still there
                    # to read. Nothing to read means a stale kept-alive
                    # connection, retried below.
                    pass
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed: once more on a new one.
                self.close()
                if attempt == 1:
                    raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            value = json.loads(raw)
        except ValueError:
            raise ServeError(resp.status, raw[:200].decode(errors="replace")) from None
        if resp.status >= 400:
            raise ServeError(resp.status, value.get("error", "") if isinstance(value, dict) else str(value))
        return value

    # -- the API -------------------------------------------------------------

    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def create_session(
        self,
        dataset: Optional[str] = None,
        csv: Optional[str] = None,
        memory: Optional[Any] = None,
        timeout: Optional[float] = None,
    ) -> str:
        spec: dict[str, Any] = {}
        if dataset is not None:
            spec["dataset"] = dataset
        if csv is not None:
            spec["csv"] = os.path.abspath(csv)
        limits = {k: v for k, v in (("memory", memory), ("timeout", timeout)) if v is not None}
        if limits:
            spec["limits"] = limits
        return self.request("POST", "/v1/sessions", spec)["id"]

    def run_cell(self, session: str, code: str, timeout: Optional[float] = None) -> dict:
        body: dict[str, Any] = {"code": code}
        if timeout is not None:
            body["timeout"] = timeout
        return self.request("POST", f"/v1/sessions/{session}/cells", body)

    def delete_session(self, session: str) -> None:
        self.request("DELETE", f"/v1/sessions/{session}")

    @contextlib.contextmanager
    def session(self, **spec: Any) -> Iterator["Session"]:
        """A session deleted on exit (its worker killed), whatever happened."""
        sid = self.create_session(**spec)
        try:
            yield Session(self, sid)
        finally:
            with contextlib.suppress(ServeError, OSError):
                self.delete_session(sid)

    def score(
        self,
        submitted: Any = None,
        hooks: Iterable[Any] = (),
        question_id: Optional[str] = None,
        expected: Optional[dict] = None,
    ) -> dict:
        """`{"match", "reward", "hooks_expected", "hooks_matched", "hook_weight"}`
        for a submitted value (None: never submitted) against a question id the
        server was given (`serve --questions`) or an `expected` dict (`answer`,
        optional `answer_hash`, `ground_truth_hashes`, `hook_hashes`)."""
        body: dict[str, Any] = {"submitted": submitted, "hooks": list(hooks)}
        if question_id is not None:
            body["question_id"] = question_id
        if expected is not None:
            body["expected"] = expected
        return self.request("POST", "/v1/score", body)


class Session:
    def __init__(self, client: Client, sid: str):
        self.client = client
        self.id = sid

    def run(self, code: str, timeout: Optional[float] = None) -> dict:
        return self.client.run_cell(self.id, code, timeout)


# -- rollouts and the GRPO reward ------------------------------------------------

_CODE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def _text(completion: Any) -> str:
    """A completion as text: a string, or TRL's conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "\n".join(m.get("content") or "" for m in completion if isinstance(m, dict) and m.get("role") == "assistant")
    return str(completion)


def extract_code(completion: Any) -> list[str]:
    """The ```python blocks of a completion, in order."""
    return [block for block in _CODE.findall(_text(completion)) if block.strip()]


def rollout(client: Client, completion: Any, csv: str, max_cells: int = 8, cell_timeout: float = 30.0) -> dict:
    """Run a completion's code blocks as cells of one fresh session on `csv`;
    returns `{"submitted", "hooks", "cells"}` (the last submitted value wins,
    as in a trace cut after its last submitting turn)."""
    submitted = None
    hooks: list[dict] = []
    cells: list[dict] = []
    blocks = extract_code(completion)[:max_cells]
    if not blocks:
        return {"submitted": None, "hooks": [], "cells": []}
    with client.session(csv=csv) as s:
        for code in blocks:
            cell = s.run(code, timeout=cell_timeout)
            cells.append(cell)
            hooks.extend(cell.get("hooks") or [])
            if cell.get("submitted") is not None:
                submitted = cell["submitted"].get("value")
    return {"submitted": submitted, "hooks": hooks, "cells": cells}


def make_grpo_reward(
    endpoint: Optional[str] = None,
    datasets_root: str = ".",
    max_cells: int = 8,
    cell_timeout: float = 30.0,
    workers: int = 8,
    on_error: float = 0.0,
):
    """A reward function for TRL's GRPOTrainer over `csv-agent export --format rl`
    rows: each completion's code runs in its own session (fresh worker, the
    row's `dataset` loaded as `df`) and is scored by the server. A relative
    `dataset` is resolved against `datasets_root`. A rollout the jail could
    not run (server refused, worker lost) scores `on_error`."""

    def csv_agent_reward(completions, answer, answer_hash, ground_truth_hashes, hook_hashes, dataset, **kwargs):
        def one(i: int) -> float:
            client = Client(endpoint)
            try:
                csv = dataset[i] if os.path.isabs(dataset[i]) else os.path.join(datasets_root, dataset[i])
                got = rollout(client, completions[i], csv, max_cells, cell_timeout)
                expected = {
                    "answer": json.loads(answer[i]),
                    "answer_hash": answer_hash[i],
                    "ground_truth_hashes": list(ground_truth_hashes[i] or []),
                    "hook_hashes": list(hook_hashes[i] or []),
                }
                return float(client.score(submitted=got["submitted"], hooks=got["hooks"], expected=expected)["reward"])
            except (ServeError, OSError) as e:
                print(f"csv_agent_reward: rollout {i}: {e}", file=sys.stderr)
                return on_error
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, range(len(completions))))

    return csv_agent_reward


# -- a self-test against a running server (used by tests/serve.rs) ---------------


def _self_test(endpoint: str, csv: str) -> None:
    c = Client(endpoint)
    assert c.health()["status"] == "ok"
    with c.session(csv=csv) as s:
        assert s.run("n = len(df)")["status"] == "ok"
        assert s.run("n")["result"] == "344"
        err = s.run("1/0")
        assert err["status"] == "error" and err["error"]["type"] == "ZeroDivisionError", err
    try:
        c.run_cell("0" * 32, "1")
        raise AssertionError("an unknown session was served")
    except ServeError as e:
        assert e.status == 404, e
    # A body far past --max-body and the socket's buffer: the server answers
    # 413 and closes while the client is still writing; the client reads it.
    with c.session(csv=csv) as s:
        try:
            s.run("x = 1\n" + "#" * (8 << 20))
            raise AssertionError("an oversize cell was served")
        except ServeError as e:
            assert e.status == 413, e
    reward = make_grpo_reward(endpoint, workers=3)
    good = "Count the rows.\n```python\nn = len(df)\nhook(df.shape[1], 'df.shape[1]')\n```\nthen\n```python\nsubmit(n)\n```"
    wrong = [{"role": "assistant", "content": "```python\nsubmit(len(df) - 1)\n```"}]
    rows = 3
    assert c.score(expected={"answer": 8}, submitted=8.0)["match"] is True
    scores = reward(
        completions=[good, wrong, "no code at all"],
        answer=["344"] * rows,
        answer_hash=[""] * rows,
        ground_truth_hashes=[[]] * rows,
        hook_hashes=[[]] * rows,
        dataset=[os.path.abspath(csv)] * rows,
    )
    assert scores == [1.0, 0.0, 0.0], scores
    print("self-test ok:", scores)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--self-test":
        _self_test(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "health":
        print(json.dumps(Client(sys.argv[2] if len(sys.argv) > 2 else None).health(), indent=2))
    else:
        print(__doc__)
        print("usage: csv_agent_client.py health [ENDPOINT] | --self-test ENDPOINT CSV", file=sys.stderr)
        sys.exit(2)
