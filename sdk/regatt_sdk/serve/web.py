"""The search page of ``regatt serve`` and the small read-only API it uses.

``GET /`` (``static/index.html``), ``GET /static/app.js`` and ``/static/app.css`` (package data, no
build step, nothing from the internet), ``GET /v1/info`` (what the page may offer: rows, local
features for ``rerank``, a duplicates folder), ``GET /v1/thumb?row=N`` (a JPEG of at most
:data:`THUMB_SIDE` px of a store row, made once and cached), ``GET /v1/duplicates`` (the groups
of ``regatt serve ... --dedup DIR``, a ``regatt dedup`` output folder; read-only) and ``POST
/v1/match?row=N`` (the upload and row N's photo with the verified local matches drawn, PNG).

Which files a thumbnail may be made from (the rule, tested in ``tests/test_web.py``): a client
names only a store row, never a path. The row must exist and not be removed. Its stored name must
have no ``..`` component; a relative name is taken in the collection folder. The collection
folder is ``--images DIR`` when given, else the deepest folder common to the store's live names
(made absolute against the server's working directory at start). The name's file, with every
symbolic link followed, must be a regular file inside the collection folder (itself with links
followed): a name outside it (absolute or not) or a link pointing out of it gets 404, as does a
missing file or one that is not a readable image. Only a re-encoded JPEG of the decoded image is
ever sent, never the file's bytes.

Thumbnails are cached as ``STORE/thumbs/<key>.jpg`` (written to a temporary file, then renamed),
keyed by row, name, file size and modification time; a read-only store gets a cache folder under
the system's temporary folder instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response

#: the package data the page is made of
STATIC = Path(__file__).with_name("static")
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
#: longest side of a thumbnail (px)
THUMB_SIDE = 256
THUMB_QUALITY = 85


def within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Thumbnails:
    """Thumbnails of the rows of one store (see the module docstring for the rule)."""

    def __init__(self, store_path: Path, names: list[str], removed: Any = None, images: Path | None = None,
                 cwd: Path | None = None):  # fmt: skip
        self.store_path = Path(store_path)
        self.names = names
        self.removed = removed
        self.base = Path(os.path.abspath(images if images is not None else (cwd or Path.cwd())))
        self.root = self.base if images is not None else self._common_root()
        self.real_root = os.path.realpath(self.root)
        self.cache = self._cache_dir()
        self._lock = threading.Lock()

    def _common_root(self) -> Path:
        dirs = []
        for row, name in enumerate(self.names):
            if self.is_removed(row) or ".." in Path(name).parts:
                continue
            dirs.append(os.path.dirname(os.path.join(self.base, name)))
        if not dirs:
            return self.base
        return Path(os.path.commonpath(dirs))

    def _cache_dir(self) -> Path:
        own = self.store_path / "thumbs"
        try:
            own.mkdir(exist_ok=True)
            if os.access(own, os.W_OK):
                return own
        except OSError:
            pass
        key = hashlib.sha1(os.fsencode(os.path.abspath(self.store_path))).hexdigest()[:16]
        other = Path(tempfile.gettempdir()) / "regatt-thumbs" / key
        try:
            other.mkdir(parents=True, exist_ok=True, mode=0o700)
            st = other.lstat()
            if other.is_symlink() or st.st_uid != os.getuid():  # someone else's folder: not trusted
                raise PermissionError(other)
            return other
        except OSError:
            return Path(tempfile.mkdtemp(prefix="regatt-thumbs-"))

    def is_removed(self, row: int) -> bool:
        return self.removed is not None and row < len(self.removed) and bool(self.removed[row])

    def source(self, row: int) -> tuple[Path | None, str]:
        """``(file, "")`` a thumbnail of ``row`` may be made from, else ``(None, why)``."""
        if not 0 <= row < len(self.names) or self.is_removed(row):
            return None, f"no row {row} in this collection"
        name = self.names[row]
        if ".." in Path(name).parts:
            return None, f"row {row}: its name leaves the collection folder"
        path = os.path.join(self.base, name)  # an absolute name stays itself
        real = os.path.realpath(path)
        if not within(real, self.real_root):
            return None, f"row {row}: its file is outside the collection folder"
        if not os.path.isfile(real):
            return None, f"row {row}: its file is missing"
        return Path(real), ""

    def get(self, row: int) -> tuple[Path | None, str]:
        """The cached JPEG of ``row`` (made now if needed), else ``(None, why)``."""
        import cv2

        from ..errors import ImageError
        from ..files import atomic_write
        from ..imageio import read_image

        src, why = self.source(row)
        if src is None:
            return None, why
        st = src.stat()
        key = hashlib.sha1(f"{row}\0{self.names[row]}\0{st.st_size}\0{st.st_mtime_ns}\0{THUMB_SIDE}".encode(
            "utf-8", "surrogateescape")).hexdigest()[:20]  # fmt: skip
        out = self.cache / f"{row}-{key}.jpg"
        if out.is_file():
            return out, ""
        try:
            bgr = read_image(src)
        except ImageError as exc:
            return None, f"row {row}: not a readable image ({exc.reason})"
        h, w = bgr.shape[:2]
        f = min(1.0, THUMB_SIDE / max(h, w))
        if f < 1.0:
            bgr = cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
        if not ok:
            return None, f"row {row}: could not make its thumbnail"
        with atomic_write(out) as fh:  # readers see no thumbnail or a whole one
            fh.write(data.tobytes())
        return out, ""


def read_duplicates(folder: Path, rows: dict[str, int]) -> list[dict[str, Any]]:
    """The groups of a ``regatt dedup`` output folder (``groups.json``), each member with the
    store ``row`` of its name when the store holds it (for its thumbnail), else ``None``."""
    from ..errors import RegattError

    path = Path(folder) / "groups.json"
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegattError(f"{path}: not a regatt dedup output ({exc})") from None
    if not isinstance(groups, list):
        raise RegattError(f"{path}: not a regatt dedup output (expected a list of groups)")
    out = []
    for g in groups:
        members = []
        for m in g.get("members", []) if isinstance(g, dict) else []:
            if not isinstance(m, dict):
                continue
            name = str(m.get("name", ""))
            row = rows.get(name)
            if row is None and m.get("path"):
                row = rows.get(str(m["path"]))
            members.append(
                {k: m.get(k) for k in ("member", "name", "score", "cosine", "action", "path")} | {"row": row}
            )
        out.append({"id": g.get("id"), "members": members})
    return out


def draw_match(state: Any, config: Any, data: bytes, roi: Any, row: int, src: Path) -> tuple[bytes, int]:
    """``(PNG bytes, inliers)``: the upload (cropped to ``roi``) and row ``row``'s photo ``src``
    with the verified matches drawn (:func:`regatt_sdk.local.draw.draw_matches`); ``state``: what
    the server searches (its ``searcher``'s local features)."""
    import cv2
    import numpy as np

    from ..errors import ImageError
    from ..imageio import decode_image, read_image
    from ..index.searcher import read_query
    from ..local.draw import draw_matches
    from .app import ApiError

    try:
        bgr = decode_image(data, "upload", max_pixels=config.max_pixels, max_decoded_bytes=config.max_decoded_bytes)
        photo = read_query(bgr, roi)
        if photo.size == 0:
            raise ApiError(422, "the roi leaves nothing of the image")
        hit = read_image(src)
    except ImageError as exc:
        raise ApiError(422, f"not a usable image: {exc.reason}") from None
    rr = state.searcher.reranker()
    qf = rr.describe_query(photo)
    v = rr.verify_rows(qf, np.asarray([row], np.int64), np.zeros(1, np.float32))[0]
    pic = draw_matches(photo, hit, qf, rr.local.features(row), v.matches, v.geometry.mask, v.geometry.H,
                       title=f"{v.inliers} inliers")  # fmt: skip
    ok, png = cv2.imencode(".png", pic)
    if not ok:
        raise ApiError(500, "could not draw the matches")
    return png.tobytes(), int(v.inliers)


def register(app: Any, svc: Any, config: Any) -> None:
    """Add the page, its assets and ``/v1/info``, ``/v1/thumb``, ``/v1/duplicates`` to ``app``."""
    from .app import MAX_RERANK, MAX_TOP, ApiError

    images = getattr(config, "images", None)
    dedup = getattr(config, "dedup", None)

    def thumbs(st: Any) -> Thumbnails:
        """The thumbnails of the rows of ``st`` (the state a request took; made once per state:
        a reloaded store has its own names, removed rows and collection folder)."""
        s = None if st is None else st.searcher
        if s is None or getattr(s, "store_path", None) is None:
            raise ApiError(404, "thumbnails need a feature store (regatt serve MODEL --store STORE)")
        with st.lock:
            if "thumbs" not in st.cache:
                st.cache["thumbs"] = Thumbnails(s.store_path, s.names, getattr(s, "exclude", None), images)
            return st.cache["thumbs"]

    def has_local(st: Any) -> bool:
        return st is not None and getattr(st.searcher, "store_path", None) is not None and bool(st.local)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/app.js", include_in_schema=False)
    async def script():
        return FileResponse(STATIC / "app.js", media_type=ASSETS["app.js"])

    @app.get("/static/app.css", include_in_schema=False)
    async def style():
        return FileResponse(STATIC / "app.css", media_type=ASSETS["app.css"])

    @app.get("/v1/info", summary="What this server offers (for the page)")
    async def info():
        st = svc.current()
        s = None if st is None else st.searcher
        store = getattr(s, "store_path", None) if s is not None else None
        return {
            "search": s is not None,
            "rows": None if s is None else len(s.names),
            "thumbnails": store is not None,
            "rerank": has_local(st),
            "duplicates": dedup is not None,
            "max_top": MAX_TOP,
            "max_rerank": MAX_RERANK,
            "thumb_side": THUMB_SIDE,
            "store": svc.store_info(),
        }

    @app.get("/v1/thumb", summary="Thumbnail of one store row (JPEG)")
    async def thumb(row: str = ""):
        """A JPEG of at most 256 px of the photo of store row ``row`` (made once, cached); 404
        for a removed or unknown row, a missing file, or a name outside the collection folder."""
        try:
            n = int(row)
        except ValueError:
            raise ApiError(422, f"row {row!r}: expected a row number") from None
        t = thumbs(svc.current())
        path, why = await asyncio.get_running_loop().run_in_executor(svc.decode_pool, t.get, n)
        if path is None:
            return JSONResponse({"error": why, "status": 404}, status_code=404)
        return Response(path.read_bytes(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/v1/match", summary="Verified matches between an upload and one store row (PNG)")
    async def match(request: Request, row: str = "", roi: str | None = None):
        """The upload (raw image bytes as the body; ``roi`` in its pixels) and the photo of store
        row ``row`` side by side, at most 480 px high, with the inlier matches found by local
        features drawn between them (a store encoded with ``--local``); the count is in the
        ``X-Regatt-Inliers`` header. 404 for a row without a thumbnail (the same rule)."""
        from .app import parse_roi, read_body

        try:
            n = int(row)
        except ValueError:
            raise ApiError(422, f"row {row!r}: expected a row number") from None
        box = parse_roi(roi)
        st = svc.current()  # rows are numbered by this state until the request ends
        svc.can_rerank(st)
        src, why = thumbs(st).source(n)
        if src is None:
            return JSONResponse({"error": why, "status": 404}, status_code=404)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        data = await read_body(request.receive, headers, config.max_bytes, config.body_timeout_s)
        if not data:
            raise ApiError(422, "empty upload: send the query image's bytes as the body")
        png, inliers = await asyncio.get_running_loop().run_in_executor(
            svc.decode_pool, draw_match, st, config, data, box, n, src
        )
        return Response(png, media_type="image/png", headers={"X-Regatt-Inliers": str(inliers)})

    @app.get("/v1/duplicates", summary="Groups of a regatt dedup output (read-only)")
    async def duplicates():
        """The groups of ``--dedup DIR`` (its ``groups.json``): members with name, score,
        cosine, keep/remove and the store row of each (for ``/v1/thumb``)."""
        if dedup is None:
            raise ApiError(404, "no duplicates folder: start the server with --dedup DIR (a regatt dedup output)")

        def load():
            rows: dict[str, int] = {}
            st = svc.current()
            if st is not None and getattr(st.searcher, "store_path", None) is not None:
                from ..names import display

                t = thumbs(st)
                for r, name in enumerate(t.names):
                    if not t.is_removed(r):
                        rows[display(name)] = r
            return read_duplicates(dedup, rows)

        groups = await asyncio.get_running_loop().run_in_executor(None, load)
        return {"folder": str(dedup), "groups": groups}
