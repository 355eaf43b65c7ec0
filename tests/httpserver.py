"""Start ``regatt serve`` as a real uvicorn process on 127.0.0.1 and talk HTTP to it (stdlib only)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``regatt serve MODEL ARGS...`` in a child process; ``request()`` sends one HTTP request."""

    def __init__(self, model: Path, *args: str, log: Path):
        self.port = free_port()
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(ROOT / "sdk"), str(ROOT / "export"), os.environ.get("PYTHONPATH", "")]),
        )
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "regatt_sdk", "serve", str(model), "--port", str(self.port), "--log-level", "warning", *args],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"regatt serve exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"regatt serve did not become ready: {log.read_text()[-2000:]}")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60
    ):
        """``(status, headers dict (lower-case), body bytes)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def metrics(self) -> dict[str, float]:
        """``{sample line name+labels: value}`` from /metrics."""
        _, _, data = self.request("GET", "/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def multipart(fields: dict[str, str], file_field: str | None, data: bytes = b"") -> tuple[bytes, dict]:
    """A multipart/form-data body and its headers."""
    b = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    if file_field is not None:
        parts.append(
            f'--{b}\r\nContent-Disposition: form-data; name="{file_field}"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={b}"}
