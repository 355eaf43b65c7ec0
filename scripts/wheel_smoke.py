"""Smoke test of an installed (not editable) regatt wheel: the main job end to end.

    python scripts/wheel_smoke.py MODEL.onnx

Run with the Python of a fresh venv holding only ``regatt[cpu,serve]`` (``make wheel-smoke``);
run it from outside the repository. Checks that the package is the installed one with its data
files (dedup presets, local-feature codebook), then on a few generated pictures: ``regatt
encode``, ``regatt search``, ``regatt dedup --store`` (reads the presets), the Python
``Collection``, and ``regatt serve`` answering ``GET /readyz`` on 127.0.0.1. Exits non-zero
with the failing step on stderr.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

BIN = Path(sys.executable).parent
REGATT = str(BIN / "regatt")


def step(what: str) -> None:
    print(f"wheel-smoke: {what}", flush=True)


def run(*args: str) -> str:
    done = subprocess.run([REGATT, *args], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        sys.exit(f"wheel-smoke: regatt {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def check_install() -> None:
    import regatt_sdk

    where = Path(regatt_sdk.__file__).resolve()
    if "site-packages" not in where.parts:
        sys.exit(f"wheel-smoke: regatt_sdk comes from {where}, not an installed wheel")
    for data in ("dedup/presets.json", "local/codebook.npz", "py.typed"):
        if not resources.files("regatt_sdk").joinpath(data).is_file():
            sys.exit(f"wheel-smoke: the wheel lacks regatt_sdk/{data}")
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("wheel-smoke: torch is importable: the runtime extras must not pull it in")
    step(f"installed at {where.parent}, data files present, no torch")


def make_pictures(folder: Path) -> list[Path]:
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = []
    for k in range(5):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        path = folder / f"p{k}.jpg"
        cv2.imwrite(str(path), cv2.resize(small, (200, 150), interpolation=cv2.INTER_CUBIC))
        paths.append(path)
    copy = folder / "copy-of-p0.png"
    cv2.imwrite(str(copy), cv2.imread(str(paths[0])))
    return [*paths, copy]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_ready(model: Path, store: Path) -> None:
    port = free_port()
    args = [REGATT, "serve", str(model), "--store", str(store), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen([*args, "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                sys.exit(f"wheel-smoke: regatt serve exited ({proc.returncode}):\n{out}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    body = json.loads(r.read())
                    if r.status == 200 and body.get("ready"):
                        step(f"regatt serve: /readyz 200 (card {body.get('card_hash')})")
                        for page in ("/", "/static/app.js", "/static/app.css"):  # package data
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=5) as p:
                                if p.status != 200 or not p.read():
                                    sys.exit(f"wheel-smoke: regatt serve: GET {page} answered {p.status}")
                        step("regatt serve: the search page and its assets 200")
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(0.5)
        sys.exit("wheel-smoke: regatt serve did not become ready within 90 s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model = Path(sys.argv[1]).resolve()
    check_install()
    with tempfile.TemporaryDirectory(prefix="regatt-wheel-smoke-") as tmp:
        work = Path(tmp)
        pictures = make_pictures(work / "pictures")
        store = work / "store"
        out = run("encode", str(model), str(work / "pictures"), "-o", str(store), "--no-progress", "--device", "cpu")
        step(out.strip())
        hits = run("search", str(model), str(store), str(pictures[2]), "--top", "3", "--device", "cpu").splitlines()
        if len(hits) != 3 or not hits[0].endswith(pictures[2].name):
            sys.exit(f"wheel-smoke: regatt search gave {hits}")
        step("regatt search: the query ranks first")
        run("encode", str(model), str(work / "pictures"), "-o", str(store), "--resume", "--local", "--no-progress",
            "--device", "cpu")  # fmt: skip
        hits = run("search", str(model), str(store), str(pictures[2]), "--top", "3", "--rerank", "5",
                   "--device", "cpu").splitlines()  # fmt: skip
        if not hits or not hits[0].endswith(pictures[2].name) or "inliers" not in hits[0]:
            sys.exit(f"wheel-smoke: regatt search --rerank gave {hits}")
        step(f"regatt encode --resume --local, search --rerank: {hits[0].split()[2]} inliers for the query itself")
        run(
            "dedup",
            str(model),
            "--store",
            str(store),
            "-o",
            str(work / "dedup"),
            "--device",
            "cpu",
        )
        rows = (work / "dedup" / "groups.csv").read_text().splitlines()
        if not any("copy-of-p0" in r for r in rows):
            sys.exit(f"wheel-smoke: regatt dedup did not group the copy: {rows}")
        step(f"regatt dedup --store (preset near: the copy check on the default export): {len(rows) - 1} grouped rows")

        from regatt_sdk import Collection, EncoderOptions

        col = Collection.open(store, model, EncoderOptions(device="cpu"))
        if len(col) != len(pictures) or col.search(pictures[1], top=1)[0].name != str(pictures[1]):
            sys.exit("wheel-smoke: Collection search did not find the query")
        step(f"Collection: {len(col)} rows, search ok")
        serve_ready(model, store)
    step("ok")


if __name__ == "__main__":
    main()
