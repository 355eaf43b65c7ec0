"""``regatt eval MODEL --dataset NAME --root DIR``: mAP on a retrieval benchmark.

Encodes the database into a feature store (reused and completed when it exists: ``--store``,
default a cache folder per dataset, root and model), encodes the queries cropped to their
boxes, ranks the whole database per query with and without average query expansion, and
prints the scores in the paper's layout; ``--json`` writes them (``map``/``map_qe`` in percent).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import typer

from ..errors import RegattError
from ..scales import format_scales
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
from .query_opts import qe_option, query_scales_option, show_option

_TITLES = {
    "oxford5k": "Oxford5k", "paris6k": "Paris6k", "oxford105k": "Oxford105k",
    "paris106k": "Paris106k", "roxford5k": "ROxford5k", "rparis6k": "RParis6k",
    "holidays": "Holidays", "generic": "generic",
}  # fmt: skip


def default_store(dataset: str, root: Path, card_hash: str, max_side: int) -> Path:
    """Cache folder for a dataset's database features: ``$REGATT_CACHE`` or ~/.cache/regatt."""
    base = Path(os.environ.get("REGATT_CACHE") or Path.home() / ".cache" / "regatt")
    where = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return base / "eval" / f"{dataset}-{where}-{card_hash[:12]}-s{max_side}"


def database_features(dataset, encoder, store_path: Path, model: Path, *, progress: bool,
                      batch_size: int, local: bool = False):  # fmt: skip
    """Encode (or complete) the store, then ``(dataset restricted to encoded images, (N, D))``.

    Images that failed to encode are dropped from the database with a warning (they can then
    never be retrieved, which lowers recall as in the official protocols).
    """
    from ..collection import Collection
    from ..sources import SourceItem
    from ..store import MANIFEST, StoreError

    if (store_path / MANIFEST).exists():
        try:
            collection = Collection.open(store_path, encoder)  # a store of another model is refused
        except StoreError as exc:
            raise StoreError(f"{exc}; or pass another --store") from None
    else:
        collection = Collection.create(store_path, encoder, local=local)
    items = [SourceItem(name, str(path)) for name, path in zip(dataset.names, dataset.paths)]
    report = collection.add(items, progress=progress, batch_size=batch_size, local=True if local else None)
    store = collection.store
    names, vectors = store.names, store.vectors
    row = {n: i for i, n in enumerate(names)}
    failed = {f.name: f.reason for f in store.failures}
    missing = [n for n in dataset.names if n not in row]
    if missing:
        shown = "; ".join(f"{n}: {failed.get(n, 'not in the store')}" for n in missing[:3])
        typer.secho(
            f"warning: {len(missing)} database image(s) could not be encoded and are left out "
            f"({shown}{'; ...' if len(missing) > 3 else ''})", err=True, fg=typer.colors.YELLOW,
        )  # fmt: skip
    keep = [i for i, n in enumerate(dataset.names) if n in row]
    if not keep:
        raise RegattError(f"no database image of {dataset.name} could be encoded ({store_path})")
    kept = replace(dataset, names=[dataset.names[i] for i in keep], paths=[dataset.paths[i] for i in keep])
    if names[: len(kept.names)] == kept.names and len(names) == len(kept.names):
        db = vectors  # same order: use the memory map as is
    else:
        db = np.asarray(vectors[np.array([row[n] for n in kept.names], dtype=np.int64)])
    return kept, db, report


def query_features(dataset, encoder, query_scales: bool = False) -> np.ndarray:
    """(Q, D) descriptors of the queries, each cropped to its box when it has one
    (``query_scales``: at the encoder's query-side scales)."""
    encode = encoder.encode_query if query_scales else encoder.encode
    out = []
    for q in dataset.queries:
        try:
            out.append(encode(str(q.path), roi=q.box))
        except ValueError as exc:  # a box outside the image
            raise RegattError(f"query '{q.name}' ({q.path}): {exc}") from None
    return np.stack(out).astype(np.float32)


def expansion_steps(
    qe: int, alpha: float = 0.0, dba: int = 0, dba_alpha: float = 3.0, exclude: list | None = None
) -> list:
    """The expansion steps to score besides the plain search: alpha-DBA then alpha-QE.

    ``exclude``: per query, database indices QE may not use (those removed from its ranking).
    """
    from ..expansion import DatabaseAugmentation, QueryExpansion

    steps: list = []
    if dba > 0:
        steps.append(DatabaseAugmentation(k=dba, alpha=dba_alpha))
    if qe > 0:
        steps.append(QueryExpansion(k=qe, alpha=alpha, exclude=exclude))
    return steps


def expansion_label(qe: int, alpha: float = 0.0, dba: int = 0, dba_alpha: float = 3.0) -> str:
    """``+ QE (top 5)``, ``+ aQE (top 2, a=3)``, ``+ DBA (top 5, a=3) + QE (top 5)``..."""
    parts = []
    if dba > 0:
        parts.append(f"DBA (top {dba}, alpha={dba_alpha:g})")
    if qe > 0:
        parts.append(f"QE (top {qe})" if alpha == 0 else f"alpha-QE (top {qe}, alpha={alpha:g})")
    return " + ".join(parts)


def score(dataset, queries: np.ndarray, database: np.ndarray, *, steps: list, backend: str):
    """``(result, result with steps or None)``: :class:`~regatt_sdk.evaluation.EvalResult` s
    of the plain search and of the search after the expansion ``steps``."""
    from ..evaluation import evaluate
    from ..index import build_index, check_compatible
    from ..index.searcher import Searcher

    gts = dataset.ground_truth()
    check_compatible(queries, database)
    index = build_index(database, backend)
    _, ranks = Searcher(index).search_vectors(queries)
    plain = evaluate(ranks, gts, dataset=dataset.name)
    if not steps:
        return plain, None
    _, ranks_qe = Searcher(index, steps=steps).search_vectors(queries)
    return plain, evaluate(ranks_qe, gts, dataset=dataset.name)


def rerank_ranks(
    dataset, queries: np.ndarray, db: np.ndarray, store_path: Path, k: int, *, backend: str
) -> tuple[np.ndarray, np.ndarray]:
    """Full rankings ``(Q, N)`` (database indices of ``dataset``) after the second stage: the
    global top ``k`` plus the visual-word candidates verified with local features (the store's),
    fused, then the rest in global order; and the same with query expansion after verification
    (the reranker's default ``qe`` verified hits; queries with none verified keep the first)."""
    from ..compose import open_store
    from ..index import build_index
    from ..index.searcher import Searcher, read_query
    from ..local.rerank import Reranker, check_k

    store = open_store(store_path)
    reranker = Reranker(store)
    row_of = {n: i for i, n in enumerate(store.names)}
    to_row = np.array([row_of[n] for n in dataset.names], np.int64)  # database index -> store row
    to_db = np.full(store.count, -1, np.int64)
    to_db[to_row] = np.arange(len(to_row))
    k, note = check_k(k, len(dataset.names))
    if note:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    scores, ranks = Searcher(build_index(db, backend)).search_vectors(queries)
    out, out_qe = np.empty_like(ranks), np.empty_like(ranks)
    cfg = reranker.config.with_candidates(k)
    plain_cfg = replace(cfg, qe=0)
    qe_cfg = replace(cfg, qe=max(1, cfg.qe))
    vectors_of = lambda r: store.vectors[r]  # noqa: E731
    for i, q in enumerate(dataset.queries):
        qf = reranker.describe_query(read_query(str(q.path), q.box))
        rows = to_row[ranks[i]]
        verified, order = reranker.rerank(queries[i], qf, scores[i], rows, vectors_of, plain_cfg)
        expanded = reranker.expand(queries[i], verified, rows, vectors_of, qe_cfg)
        for target, o in ((out, order), (out_qe, order if expanded is None else expanded[1])):
            o = to_db[o]
            target[i] = o[o >= 0][: ranks.shape[1]]
    return out, out_qe


def print_table(dataset_name: str, model: Path, plain, with_qe, label: str) -> None:
    """The paper's layout: one row per method, one mAP column per dataset (setting)."""
    from rich.console import Console
    from rich.table import Table

    title = _TITLES.get(dataset_name, dataset_name)
    table = Table(title=f"{title}: mAP (%)")
    table.add_column("Method")
    settings = list(plain.settings)
    multi = len(settings) > 1
    for s in settings:
        table.add_column(f"{title} {s.capitalize()}" if multi else title, justify="right")
        if multi:
            table.add_column(f"{s.capitalize()} mP@10", justify="right")
    rows = [(f"{model.stem}", plain)]
    if with_qe is not None:
        rows.append((f"{model.stem} + {label}", with_qe))
    for label, res in rows:
        cells = []
        for s in settings:
            r = res.settings[s]
            cells.append(f"{r.map:.1f}")
            if multi:
                cells.append(f"{r.mp.get(10, float('nan')):.1f}")
        table.add_row(label, *cells)
    Console().print(table)


def evaluate_cmd(
    model: Path = typer.Argument(..., help="Exported .onnx model."),
    dataset: str = typer.Option(
        ...,
        "--dataset",
        "-d",
        help="oxford5k, paris6k, oxford105k, paris106k, roxford5k, rparis6k, holidays or generic.",
    ),  # fmt: skip
    root: Path = typer.Option(..., "--root", help="The dataset's folder (official layout)."),
    qe: int = qe_option(5, "Also score average QE"),
    alpha: float = typer.Option(
        0.0, "--alpha", min=0.0, help="QE weights sim^alpha (alpha-QE); 0 is the paper's average QE."
    ),
    dba: int = typer.Option(0, "--dba", min=0, help="Also apply alpha-DBA over the top K (0: off)."),
    dba_alpha: float = typer.Option(3.0, "--dba-alpha", min=0.0, help="DBA weights sim^alpha."),
    json_path: Path = typer.Option(None, "--json", help="Write the scores to this JSON file."),
    store: Path = typer.Option(None, "--store", help="Feature store for the database (reused when present)."),
    gt: Path = typer.Option(None, "--gt", help="Ground truth: the classic gt folder or the generic CSV."),
    distractors: Path = typer.Option(
        None, "--distractors", help="Extra database images (Oxford105k / Paris106k / R1M)."
    ),
    backend: str = backend_option(),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    max_side: int = max_side_option(),
    memory: str = memory_option("pattern"),
    threads: int = threads_option(),
    query_scales: str = query_scales_option(
        "Also score queries described at these multiples of S (summed; both results are reported)"
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference batch."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
    show: Path = show_option(
        "Write one PNG per query to this folder: query and top results, marked correct / wrong / junk."
    ),
    show_count: int = typer.Option(20, "--show-count", min=1, help="Queries pictured by --show."),
    show_top: int = typer.Option(10, "--show-top", min=1, help="Results per picture (--show)."),
    rerank: int = typer.Option(
        0,
        "--rerank",
        help="Also score the second stage: verify the global top K (and the visual-word candidates) "
        "with local features (kept in the store, added when it lacks them). 0: off.",
    ),  # fmt: skip
) -> None:
    """Evaluate a model on a retrieval benchmark (mAP, with and without query expansion)."""
    from ..datasets import DATASETS, load_dataset

    key = dataset.lower()
    if key not in DATASETS:
        raise RegattError(f"--dataset {dataset!r} is unknown: use one of {', '.join(DATASETS)}")
    if not model.is_file():
        raise RegattError(f"{model}: model file not found")
    ds = load_dataset(key, root, gt=gt, distractors=distractors)

    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads,
        max_side=max_side, query_scales=query_scales,
    )  # fmt: skip
    encoder = open_encoder(model, options)
    card_hash = str(encoder.card.hash)
    store_path = store or default_store(key, root, card_hash, int(encoder.max_side))
    t0 = time.monotonic()
    if rerank < 0:
        raise RegattError(f"--rerank must be at least 1 (or 0: off), got {rerank}")
    ds, db, report = database_features(ds, encoder, store_path, model, progress=progress,
                                       batch_size=batch_size, local=rerank > 0)  # fmt: skip
    t1 = time.monotonic()
    typer.echo(report.summary(), err=True)
    queries = query_features(ds, encoder)
    t2 = time.monotonic()
    first = next(iter(ds.ground_truth().values()))
    exclude = [g.exclude for g in first] if any(g.exclude.size for g in first) else None
    steps = expansion_steps(qe, alpha, dba, dba_alpha, exclude)
    label = expansion_label(qe, alpha, dba, dba_alpha)
    plain, with_qe = score(ds, queries, db, steps=steps, backend=backend)
    t3 = time.monotonic()
    print_table(key, model, plain, with_qe, label)
    reranked = None
    if rerank:
        from ..evaluation import evaluate

        t_r = time.monotonic()
        ranks, ranks_vqe = rerank_ranks(ds, queries, db, store_path, rerank, backend=backend)
        reranked = evaluate(ranks, ds.ground_truth(), dataset=ds.name)
        reranked_qe = evaluate(ranks_vqe, ds.ground_truth(), dataset=ds.name)
        rerank_s = time.monotonic() - t_r
        print_table(key, model, reranked, reranked_qe, "QE after verification")
        typer.echo(
            f"(above: with --rerank {rerank}: local features + geometry, {1e3 * rerank_s / len(ds.queries):.0f} ms per query;"
            " 'QE after verification' is what regatt search --rerank does by default)"
        )
    scaled = None
    if getattr(encoder, "query_scales", None):
        scaled_queries = query_features(ds, encoder, query_scales=True)
        scaled, scaled_qe = score(ds, scaled_queries, db, steps=steps, backend=backend)
        typer.echo(f"queries at scales {format_scales(encoder.query_scales)} of S={encoder.max_side}:")
        print_table(key, model, scaled, scaled_qe, label)
    if show is not None:
        from ..grid import save_eval_grids

        pictures = save_eval_grids(show, ds, queries, db, count=show_count, top=show_top,
                                   backend=backend)  # fmt: skip
        typer.echo(f"wrote {len(pictures)} pictures to {show}", err=True)
    if json_path is not None:
        out: dict[str, Any] = {
            "dataset": key,
            "protocol": ds.protocol,
            "model": str(model),
            "card_hash": card_hash,
            "max_side": int(encoder.max_side),
            "images": len(ds.names),
            "queries": len(ds.queries),
            "store": str(store_path),
            "map": round(plain.map, 4),
            "results": plain.to_dict(),
            "seconds": {"database": round(t1 - t0, 3), "queries": round(t2 - t1, 3),
                        "search": round(t3 - t2, 3)},
        }  # fmt: skip
        if with_qe is not None:
            out.update(
                map_qe=round(with_qe.map, 4), qe_k=qe, qe_alpha=alpha, dba_k=dba,
                dba_alpha=dba_alpha, expansion=label, results_qe=with_qe.to_dict(),
            )  # fmt: skip
        if reranked is not None:
            out.update(rerank=rerank, map_rerank=round(reranked.map, 4), results_rerank=reranked.to_dict(),
                       map_rerank_qe=round(reranked_qe.map, 4), results_rerank_qe=reranked_qe.to_dict(),
                       rerank_ms_per_query=round(1e3 * rerank_s / len(ds.queries), 1))  # fmt: skip
        if scaled is not None:
            out.update(
                query_scales=list(encoder.query_scales), map_query_scales=round(scaled.map, 4),
                results_query_scales=scaled.to_dict(),
            )  # fmt: skip
            if scaled_qe is not None:
                out["map_qe_query_scales"] = round(scaled_qe.map, 4)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {json_path}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the app."""
    app.command("eval")(evaluate_cmd)
