"""``regatt index`` (encode a database into a feature store) and ``regatt search``.

``regatt search MODEL STORE QUERY [--roi x1,y1,x2,y2] [--top K] [--qe K] [--show OUT.png]``
encodes the query (cropped to the box), ranks the store's descriptors by inner product
(optionally with average query expansion) and prints rank, score and name per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ..errors import RegattError
from .engine_opts import backend_option, device_option, engine_option, max_side_option, precision_option
from .query_opts import open_encoder, qe_option, query_scales_option, show_option

Roi = tuple[float, float, float, float]


def parse_roi(text: str | None) -> Roi | None:
    """``"x1,y1,x2,y2"`` (original pixels) -> a float box; bad text raises :class:`RegattError`."""
    if text is None:
        return None
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        x1, y1, x2, y2 = (float(p) for p in parts)
    except ValueError:
        raise RegattError(
            f"--roi {text!r}: expected four numbers x1,y1,x2,y2 in original pixels, e.g. 10,20,300,400"
        ) from None
    if not (x2 > x1 and y2 > y1):
        raise RegattError(f"--roi {text!r}: need x1 < x2 and y1 < y2")
    return (x1, y1, x2, y2)


def open_store(path: Path, model_dim: int, model_path: Path):
    """``(names, vectors (N, D) memmap)`` of the store at ``path``, checked against the model."""
    from ..store import FeatureStore

    store = FeatureStore.open(path)
    if store.count == 0:
        raise RegattError(f"feature store {path} is empty: encode images into it with 'regatt index'")
    if store.dim != model_dim:
        raise RegattError(
            f"feature store {path} holds {store.dim}-d descriptors but {model_path} gives "
            f"{model_dim}-d: search with the model that made the store, or re-index"
        )
    return store, store.names, store.vectors


def resolve_image(name: str, images: Path | None) -> Path | None:
    """The image file of a store row: the name itself if it is a file, else under ``images``."""
    candidates = [Path(name)]
    if images is not None:
        candidates.append(images / name)
        candidates += [images / f"{name}{ext}" for ext in (".jpg", ".jpeg", ".png", ".JPG")]
    return next((c for c in candidates if c.is_file()), None)


def search(
    model: Path = typer.Argument(..., help="Exported .onnx model (the one that made the store)."),
    store: Path = typer.Argument(
        ..., help="Feature store directory (from 'regatt index'); with --db, the query image."
    ),
    query: Path = typer.Argument(None, help="Query image.", show_default=False),
    roi: str = typer.Option(None, "--roi", help="Query box x1,y1,x2,y2 in original pixels."),
    top: int = typer.Option(10, "--top", "-k", min=1, help="Number of results to print."),
    qe: int = qe_option(0, "Average query expansion"),
    show: Path = show_option("Write the query and results as a PNG grid."),
    images: Path = typer.Option(
        None, "--images", help="Folder holding the store's images, for --show (default: names are paths)."
    ),
    backend: str = backend_option(),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    max_side: int = max_side_option(),
    query_scales: str = query_scales_option("Describe the query at these multiples of S (summed)"),
    ann: bool = typer.Option(
        True, "--ann/--no-ann", help="Use the store's FAISS ANN index when it has one (regatt index --faiss)."
    ),
    nprobe: int = typer.Option(None, "--nprobe", min=1, help="Inverted lists visited (IVF ANN index)."),
    db: str = typer.Option(
        None,
        "--db",
        metavar="URL",
        help="Search a PostgreSQL table loaded by 'regatt index ... --db URL' "
        "instead of a store: regatt search MODEL --db URL QUERY (needs pip install 'regatt[postgres]').",
    ),  # fmt: skip
    table: str = typer.Option("regatt", "--table", help="Table name in the --db database."),
    ef_search: int = typer.Option(
        None, "--ef-search", min=1, help="HNSW candidates per query with --db (default 100)."
    ),
    dba: int = typer.Option(0, "--dba", min=0, help="Database-side augmentation over K neighbours (0: off)."),
) -> None:
    """Rank the images of a feature store (or a --db table) by similarity to a query image."""
    if db is not None:
        if query is not None:
            raise RegattError("with --db give MODEL and QUERY only: regatt search MODEL --db URL QUERY")
        store, query = None, store
    elif query is None:
        raise RegattError("give MODEL STORE QUERY (or MODEL --db URL QUERY)")
    box = parse_roi(roi)
    if not model.is_file():
        raise RegattError(f"{model}: model file not found")
    if not query.is_file():
        raise RegattError(f"{query}: query image not found")

    import warnings

    from ..expansion import QueryExpansion
    from ..index.searcher import Searcher

    encoder = open_encoder(
        model, device=device, max_side=max_side, engine=engine, precision=precision, query_scales=query_scales
    )
    steps = [QueryExpansion(k=qe)] if qe > 0 else []
    if db is not None:
        searcher = Searcher.for_db(db, encoder, table=table, ef_search=ef_search)
    else:
        st, _, _ = open_store(store, encoder.dim, model)
        if st.card_hash != str(encoder.card.hash):
            typer.secho(
                f"warning: {store} was made with another model card ({st.card_hash}); scores may be meaningless",
                err=True,
                fg=typer.colors.YELLOW,
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            searcher = Searcher.for_store(store, encoder, backend=backend, ann=ann, nprobe=nprobe)
        for w in caught:
            typer.secho(f"warning: {w.message}", err=True, fg=typer.colors.YELLOW)
    index = searcher.index
    if dba > 0:
        from ..expansion import DatabaseAugmentation

        _, index = DatabaseAugmentation(k=dba).apply(np.zeros((1, encoder.dim), np.float32), index)
    searcher = Searcher(index, searcher.names, encoder, steps=steps)
    hits = searcher.search(query, roi=box, top=top)
    results = [(h.name, h.score) for h in hits]
    for h in hits:
        typer.echo(f"{h.rank:4d}  {h.score:.6f}  {h.name}")
    if show is not None:
        from ..grid import save_result_grid

        out = save_result_grid(show, query, [(n, s, resolve_image(n, images)) for n, s in results], roi=box)
        typer.echo(f"wrote {out}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``index`` (alias of ``encode`` for a database) and ``search`` to the app."""
    from .encode_cmd import encode

    app.command("index", help="Encode a database of images into a feature store (same as 'regatt encode').")(encode)
    app.command("search")(search)
