"""``regatt index`` (encode a database into a feature store) and ``regatt search``.

``regatt search MODEL STORE QUERY [--roi x1,y1,x2,y2] [--top K] [--qe K] [--show OUT.png]``
encodes the query (cropped to the box), ranks the store's descriptors by inner product
(optionally with average query expansion) and prints rank, score and name per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ..compose import parse_roi, resolve_image
from ..errors import RegattError
from ..names import display
from .engine_opts import (
    backend_option,
    device_option,
    encoder_options,
    engine_option,
    max_side_option,
    memory_option,
    open_encoder,
    precision_option,
    threads_option,
)
from .query_opts import query_scales_option, show_option

__all__ = ["parse_roi", "resolve_image", "search"]


def search(
    model: Path = typer.Argument(..., help="Exported .onnx model (the one that made the store)."),
    store: Path = typer.Argument(
        ..., help="Feature store directory (from 'regatt index'); with --db, the query image."
    ),
    query: Path = typer.Argument(None, help="Query image.", show_default=False),
    roi: str = typer.Option(None, "--roi", help="Query box x1,y1,x2,y2 in original pixels."),
    top: int = typer.Option(10, "--top", "-k", min=1, help="Number of results to print."),
    qe: int = typer.Option(
        None,
        "--qe",
        min=0,
        help="Average query expansion over the top K (default off); with --rerank, over the best K "
        "verified hits only (default 1, chosen on validation photos; 0: off).",
    ),  # fmt: skip
    show: Path = show_option("Write the query and results as a PNG grid."),
    images: Path = typer.Option(
        None, "--images", help="Folder holding the store's images, for --show (default: names are paths)."
    ),
    backend: str = backend_option(),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    max_side: int = max_side_option(),
    memory: str = memory_option("pattern"),
    threads: int = threads_option(),
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
    rerank: int = typer.Option(
        0,
        "--rerank",
        help="Verify the global top K (and the visual-word candidates) with local features and "
        "geometry, and rank verified hits first (needs a store encoded with --local). 0: off.",
    ),  # fmt: skip
    where: list[str] = typer.Option(
        None,
        "--where",
        help="Only photos whose metadata match, e.g. folder=trips/2024, date>=2024-01-01, camera='Canon EOS R6' "
        "(fields: folder, camera, date, mtime, width, height, size; repeatable: all apply; needs a store "
        "kept by regatt sync).",
    ),  # fmt: skip
) -> None:
    """Rank the images of a feature store (or a --db table) by similarity to a query image."""
    if db is not None:
        if query is not None:
            raise RegattError("with --db give MODEL and QUERY only: regatt search MODEL --db URL QUERY")
        store, query = None, store
    elif query is None:
        raise RegattError("give MODEL STORE QUERY (or MODEL --db URL QUERY)")
    box = parse_roi(roi)
    from ..filters import parse_filters

    filters = [f.text for f in parse_filters(where)]  # a malformed filter fails before the model loads
    if not model.is_file():
        raise RegattError(f"{model}: model file not found")
    if not query.is_file():
        raise RegattError(f"{query}: query image not found")

    import warnings

    from ..expansion import QueryExpansion
    from ..index.searcher import Searcher

    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads,
        max_side=max_side, query_scales=query_scales,
    )  # fmt: skip
    if db is None:
        from ..collection import Collection

        Collection.open(store)  # a missing or damaged store is refused before the model loads
    encoder = open_encoder(model, options)
    steps = [QueryExpansion(k=qe)] if qe and not rerank else []  # with --rerank: after verification
    if db is not None:
        searcher = Searcher.for_db(db, encoder, table=table, ef_search=ef_search, filters=filters)
    else:
        collection = Collection.open(store, encoder)  # a store made by another model is refused
        if len(collection) == 0:
            raise RegattError(f"feature store {store} is empty: encode images into it with 'regatt index'")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            searcher = collection.searcher(backend=backend, ann=ann, nprobe=nprobe, filters=filters)
        for w in caught:
            typer.secho(f"warning: {w.message}", err=True, fg=typer.colors.YELLOW)
    index = searcher.index
    if dba > 0:
        from ..expansion import DatabaseAugmentation

        inner = getattr(index, "inner", index)  # the index under a mask of removed / filtered-out rows
        _, index = DatabaseAugmentation(k=dba).apply(np.zeros((1, encoder.dim), np.float32), inner)
        if searcher.exclude is not None:  # they stay out of the augmented index's results
            from ..index.masked import MaskedIndex

            index = MaskedIndex(index, searcher.exclude)
    store_path, exclude = searcher.store_path, searcher.exclude
    searcher = Searcher(index, searcher.names, encoder, steps=steps)
    searcher.store_path, searcher.exclude = store_path, exclude
    if rerank and db is not None:
        raise RegattError("--rerank needs a feature store with local features, not --db")
    result = searcher.search_full(query, roi=box, top=top, rerank=rerank, qe=qe if rerank else None)
    for note in result.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    hits = result.hits
    results = [(h.name, h.score) for h in hits]
    for h in hits:
        verified = "" if h.inliers is None else f"  {h.inliers:4d} inliers"
        typer.echo(f"{h.rank:4d}  {h.score:.6f}{verified}  {display(h.name)}")
    if show is not None:
        from ..grid import save_result_grid

        out = save_result_grid(show, query, [(n, s, resolve_image(n, images)) for n, s in results], roi=box)
        typer.echo(f"wrote {out}", err=True)
        if rerank:
            for path in save_match_pictures(show, query, box, result, images):
                typer.echo(f"wrote {path}", err=True)


def save_match_pictures(show: Path, query: Path, box, result, images: Path | None) -> list[Path]:
    """One picture per verified hit (``SHOW-match-RANK.png``): inlier lines and the query's
    outline in the hit. Hits whose image file cannot be found are skipped with a note."""
    import cv2

    from ..imageio import read_image
    from ..index.searcher import read_query
    from ..local.draw import draw_matches

    written = []
    photo = read_query(str(query), box)
    for h in result.hits:
        v = result.verified.get(h.row)
        if v is None or v.inliers == 0:
            continue
        file = resolve_image(h.name, images)
        if file is None:
            typer.echo(f"note: {display(h.name)} not found for its match picture (give --images DIR)", err=True)
            continue
        hf = result.local.features(h.row)
        pic = draw_matches(photo, read_image(str(file)), result.query_local, hf, v.matches, v.geometry.mask,
                           v.geometry.H, title=f"#{h.rank} {display(h.name)}: {v.inliers} inliers")  # fmt: skip
        out = show.with_name(f"{show.stem}-match-{h.rank}.png")
        cv2.imwrite(str(out), pic)
        written.append(out)
    return written


def register(app: typer.Typer) -> None:
    """Add ``index`` (alias of ``encode`` for a database) and ``search`` to the app."""
    from .encode_cmd import encode

    app.command("index", help="Encode a database of images into a feature store (same as 'regatt encode').")(encode)
    app.command("search")(search)
