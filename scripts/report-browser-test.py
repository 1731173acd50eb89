#!/usr/bin/env python3
"""Open a csv-agent report.html in headless Chromium and check it from inside.

Usage: report-browser-test.py REPORT.html SCREENSHOT.png [--expect-chart NAME ...]

Drives Chromium over the DevTools protocol with nothing but the standard
library (a minimal WebSocket client below), so it runs on a bare CI image
with Debian's `chromium` package. Checks, each printed as it passes:

- no console error, no uncaught exception, no CSP violation or failed load
  (the page is static: any network request is an error);
- every expected chart is present and drawn (has bars or a line);
- the episode browser lists episodes, filters by dataset, verdict and
  search text, and renders one episode (question, code, verdict);
- text from a hostile episode was not executed (window.__pwned unset);
- then a full-page screenshot is written.

Exit status 0 when every check passed, 1 otherwise (the reasons on stderr).
"""

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: text frames, masking."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("the browser closed the connection during the handshake")
            response += chunk
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {head[:200]!r}")

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytearray([0x81])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack(">H", n)
        else:
            header.append(0x80 | 127)
            header += struct.pack(">Q", n)
        mask = os.urandom(4)
        header += mask
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + masked)

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._exact(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._exact(8))
            payload = self._exact(n)
            if opcode == 0x8:
                raise RuntimeError("the browser closed the connection")
            if opcode in (0x9, 0xA):
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()


class DevTools:
    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []
        self.session = None

    def call(self, method: str, params=None, session=True, timeout=60.0):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise RuntimeError(f"{method}: no answer in {timeout} s")

    def wait_for(self, method: str, timeout=60.0) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.time() + timeout
        while time.time() < deadline:
            e = json.loads(self.ws.recv())
            if e.get("method") == method:
                return e
            self.events.append(e)
        raise RuntimeError(f"no {method} in {timeout} s")

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium in PATH (apt-get install chromium)")


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    report, screenshot = os.path.abspath(args[0]), os.path.abspath(args[1])
    expected = [args[i + 1] for i, a in enumerate(args) if a == "--expect-chart" and i + 1 < len(args)]
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            failures.append(what)

    profile = tempfile.mkdtemp(prefix="csv-agent-chromium-")
    browser = subprocess.Popen(
        [
            find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        deadline = time.time() + 60
        while time.time() < deadline and url is None:
            line = browser.stderr.readline()
            if not line and browser.poll() is not None:
                break
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                url = match.group(1)
        if url is None:
            print("chromium did not start its DevTools endpoint", file=sys.stderr)
            return 1
        dt = DevTools(WebSocket(url))
        target = dt.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        dt.session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            dt.call(f"{domain}.enable")
        dt.call("Page.navigate", {"url": "file://" + urllib.parse.quote(report)})
        dt.wait_for("Page.loadEventFired")
        time.sleep(0.5)

        charts = dt.js("Array.from(document.querySelectorAll('[data-chart]')).map(e => [e.dataset.chart, e.querySelectorAll('rect.fill, polyline, img').length])")
        drawn = {name: n for name, n in charts}
        for name in expected:
            check(drawn.get(name, 0) > 0, f"chart `{name}` is present and drawn ({drawn.get(name, 'missing')} marks)")

        total = dt.js("document.querySelectorAll('#episode-list tbody tr').length")
        check(total > 0, f"the episode browser lists episodes ({total})")
        datasets = dt.js("Array.from(document.querySelectorAll('#f-dataset option')).map(o => o.value).filter(v => v)")
        check(len(datasets) > 0, f"the dataset filter offers {datasets}")
        if datasets:
            one = datasets[0]
            dt.js(f"(() => {{ const s = document.getElementById('f-dataset'); s.value = {json.dumps(one)}; s.dispatchEvent(new Event('change')); }})()")
            cells = dt.js("Array.from(document.querySelectorAll('#episode-list tbody tr td:nth-child(2)')).map(td => td.textContent)")
            check(len(cells) > 0 and all(c == one for c in cells), f"filtering by dataset `{one}` lists only its {len(cells)} episodes")
            dt.js("(() => { const s = document.getElementById('f-dataset'); s.value = ''; s.dispatchEvent(new Event('change')); })()")
        dt.js("(() => { const s = document.getElementById('f-verified'); s.value = 'no'; s.dispatchEvent(new Event('change')); })()")
        verdicts = dt.js("Array.from(document.querySelectorAll('#episode-list tbody tr td:nth-child(5)')).map(td => td.textContent)")
        check(all(v == "unverified" for v in verdicts), f"filtering by verdict lists only unverified episodes ({len(verdicts)})")
        dt.js("(() => { const s = document.getElementById('f-verified'); s.value = ''; s.dispatchEvent(new Event('change')); })()")
        first_question = dt.js("(document.querySelector('#episode-list tbody tr td.q') || {}).textContent || ''")
        word = max(re.findall(r"[A-Za-z_]{5,}", first_question) or ["zzzz"], key=len)
        dt.js(f"(() => {{ const s = document.getElementById('f-search'); s.value = {json.dumps(word)}; s.dispatchEvent(new Event('input')); }})()")
        found = dt.js("document.querySelectorAll('#episode-list tbody tr').length")
        check(0 < found <= total, f"searching for `{word}` lists {found} of {total}")
        dt.js("(() => { const s = document.getElementById('f-search'); s.value = 'no-such-text-anywhere-xyz'; s.dispatchEvent(new Event('input')); })()")
        none = dt.js("document.querySelectorAll('#episode-list tbody tr').length")
        check(none == 0, f"searching for text no episode has lists none ({none})")
        dt.js("(() => { const s = document.getElementById('f-search'); s.value = ''; s.dispatchEvent(new Event('input')); })()")
        dt.js("document.querySelector('#episode-list tbody tr:nth-child(2)') ? document.querySelector('#episode-list tbody tr:nth-child(2)').click() : document.querySelector('#episode-list tbody tr').click()")
        shown = dt.js("""(() => { const d = document.getElementById('episode-detail');
            return { episode: d.dataset.episode || '', question: (d.querySelector('h3') || {}).textContent || '',
                     code: d.querySelectorAll('pre').length, traces: d.querySelectorAll('section.trace').length,
                     verdict: /verified/.test(d.textContent) }; })()""")
        check(bool(shown["episode"]) and bool(shown["question"]) and shown["code"] > 0 and shown["traces"] > 0 and shown["verdict"],
              f"one episode rendered: {shown['traces']} traces, {shown['code']} code/output blocks, verdict shown")
        check(dt.js("typeof window.__pwned") == "undefined", "no text of an episode ran as code")

        # Collect what the page reported while it was driven.
        dt.js("1")
        problems = []
        for e in dt.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                problems.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                problems.append("console.error: " + json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                problems.append("log: " + params["entry"].get("text", "")[:300])
        check(not problems, "no console errors, exceptions or blocked loads" + ("" if not problems else ": " + "; ".join(problems)))

        height = dt.js("Math.ceil(document.documentElement.scrollHeight)")
        dt.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": min(int(height), 6000), "deviceScaleFactor": 1, "mobile": False})
        shot = dt.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        with open(screenshot, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
        print(f"screenshot: {screenshot}")
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
