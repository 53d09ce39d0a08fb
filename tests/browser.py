"""Headless Chromium for tests, driven through the DevTools protocol over a websocket.

Each browser gets a fresh profile and its own HOME. Chromium on Linux reads
user-added trust anchors from the NSS database `$HOME/.pki/nssdb`, so
`trust_ca` makes a CA trusted for that browser only. The host's trust store
does not change. The DevTools listener is on 127.0.0.1 (Chromium's default
for `--remote-debugging-port`), on a port Chromium picks and writes to
`DevToolsActivePort` in the profile.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CERTUTIL = shutil.which("certutil") or "/usr/bin/certutil"
START_TIMEOUT = 30.0
CALL_TIMEOUT = 20.0
# Without the background-networking flags Chromium connects to Google's hosts
# at start, which fails, and slows the start, on a host with no outside network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1400",
    "--remote-debugging-port=0",
]


def unavailable_reason() -> str | None:
    """Why this run cannot start Chromium with a private NSS database, or None."""
    if not Path(CHROMIUM).exists():
        return "Chromium is not installed: apt-get install chromium"
    if not Path(CERTUTIL).exists():
        return "certutil is not installed: apt-get install libnss3-tools"
    return None


def trust_ca(home: Path, ca_file: Path, nickname: str = "registry-gateway test CA") -> None:
    """Create `home/.pki/nssdb` and add `ca_file` to it as a trusted CA for TLS servers."""
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [CERTUTIL, "-d", f"sql:{database}", "-N", "--empty-password"],
        check=True, capture_output=True, timeout=30,
    )
    # Trust flags "C,,": a CA trusted to issue TLS server certificates.
    subprocess.run(
        [CERTUTIL, "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", nickname, "-i", str(ca_file)],
        check=True, capture_output=True, timeout=30,
    )


@dataclass
class PageLoad:
    """The outcome of one navigation: error text, the document's security state, the page."""

    error: str
    security_state: str
    url: str
    title: str
    values: dict = field(default_factory=dict)
    screenshot: bytes = b""


class Chromium:
    """One headless Chromium process with a fresh profile under `workdir`."""

    def __init__(self, workdir: Path):
        self.home = workdir / "home"
        self.profile = workdir / "profile"
        self.log_path = workdir / "chromium.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "Chromium":
        self.home.mkdir(parents=True, exist_ok=True)
        self.profile.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        active_port = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.process.returncode}: {self.log_text()[-2000:]}")
            lines = active_port.read_text().splitlines() if active_port.exists() else []
            if lines and lines[0].isdigit():
                self.port = int(lines[0])
                return self
            time.sleep(0.1)
        raise RuntimeError(f"Chromium wrote no DevToolsActivePort within {START_TIMEOUT} s")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def load(self, url: str, expressions: dict[str, str]) -> PageLoad:
        """Navigate the first tab to `url`, evaluate `expressions` and take a screenshot."""
        return asyncio.run(self._load(url, expressions))

    async def _load(self, url: str, expressions: dict[str, str]) -> PageLoad:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                devtools = DevTools(ws)
                await devtools.call("Network.enable")
                await devtools.call("Page.enable")
                navigated = await devtools.call("Page.navigate", url=url)
                await devtools.wait_for("Page.loadEventFired")
                values = {
                    name: await devtools.evaluate(expression)
                    for name, expression in expressions.items()
                }
                shot = await devtools.call("Page.captureScreenshot", format="png")
                return PageLoad(
                    error=navigated.get("errorText", ""),
                    security_state=devtools.document_security_state(url),
                    url=await devtools.evaluate("location.href"),
                    title=await devtools.evaluate("document.title"),
                    values=values,
                    screenshot=base64.b64decode(shot["data"]),
                )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class DevTools:
    """Commands and events on one DevTools websocket; events are kept until asked for."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.last_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, **params) -> dict:
        self.last_id += 1
        command_id = self.last_id
        await self.ws.send_json({"id": command_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=CALL_TIMEOUT)
            if message.get("id") != command_id:
                self.events.append(message)
                continue
            if "error" in message:
                raise RuntimeError(f"DevTools {method} failed: {message['error']}")
            return message["result"]

    async def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            message = await self.ws.receive_json(timeout=CALL_TIMEOUT)
            self.events.append(message)
            if message.get("method") == method:
                return message

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def document_security_state(self, url: str) -> str:
        """The security state Chromium gave the response for `url`, or '' when none came."""
        for event in self.events:
            if event.get("method") != "Network.responseReceived":
                continue
            response = event["params"]["response"]
            if response["url"] == url:
                return response.get("securityState", "")
        return ""
