"""``regatt dedup``: groups of near-duplicate or same-scene images, a keep/remove list, an
optional move of the removals (with an undo manifest) and a contact-sheet report.

    regatt dedup MODEL SOURCES... -o OUT [--preset exact|near|scene] [--group components|tight]
                 [--keep largest|first|oldest] [--move-to DIR] [--show DIR]
    regatt dedup [MODEL] --store STORE -o OUT [--threshold T] ...   # reuse a feature store
    regatt dedup --undo DIR                                         # move the files back

Writes ``OUT/groups.csv`` and ``OUT/groups.json`` (group, member, name, score to the
representative, descriptor cosine to it, keep/remove), ``OUT/remove.txt`` (one path a line) and,
for sources, the feature store ``OUT/store``. Nothing is ever deleted.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import typer

from ..errors import RegattError
from .errors import fail

GROUPING = ("components", "tight")


def resolve(name: str, images: Path | None) -> Path | None:
    """The file of a store row: the name itself, else under ``images``."""
    for c in [Path(name)] + ([images / name] if images is not None else []):
        if c.is_file():
            return c
    return None


def pixels(path: Path | None) -> int:
    """Width x height from the file's header (0 when unknown)."""
    from ..imageio import image_header

    if path is None:
        return 0
    try:
        with open(path, "rb") as f:
            info = image_header(f.read(1 << 20))
        return int(info.width) * int(info.height)
    except (OSError, RegattError):
        return 0


def open_store(store: Path, model_card_hash: str | None, model: Path | None):
    from ..store import FeatureStore

    st = FeatureStore.open(store)
    if st.count == 0:
        raise RegattError(f"{store}: the feature store holds no images: encode a folder first (regatt encode)")
    if model_card_hash is not None and st.card_hash != model_card_hash:
        raise RegattError(
            f"{store} was made with another model (card {st.card_hash}) than {model} "
            f"(card {model_card_hash}): give the model that made the store, or dedup the images again"
        )
    return st


def copy_signals(encoder, paths: list[Path | None]):
    """DCT hashes ``(N,)`` and a cached region lookup for the copy check; unreadable rows are
    reported and get an empty region set (they can still pair by descriptor)."""
    from ..dedup.phash import phash
    from ..dedup.regional import Regions, encode_with_regions, has_regions
    from ..imageio import read_image

    if not has_regions(encoder):
        raise RegattError(
            f"{encoder.model_path}: exported without the regional outputs the copy check uses: "
            "re-export with  regatt export --explain  (or group by descriptor alone with --threshold)"
        )
    hashes = np.zeros(len(paths), dtype=np.uint64)
    bad: set[int] = set()
    for k, p in enumerate(paths):
        try:
            if p is None:
                raise RegattError("image file not found (give --images DIR for a store)")
            hashes[k] = phash(read_image(p))
        except RegattError as exc:
            bad.add(k)
            typer.echo(f"skipped in the copy check: {p}: {exc}", err=True)
    cache: dict[int, Regions] = {}
    empty = Regions(np.zeros((0, encoder.dim), np.float32), np.zeros((0, 4), np.float32), (1, 1))

    def regions(k: int) -> Regions:
        if k in bad:
            return empty
        if k not in cache:
            _, reg, _ = encode_with_regions(encoder, paths[k])
            cache[k] = Regions(reg.vectors.astype(np.float16), reg.boxes, reg.size)
        r = cache[k]
        return Regions(r.vectors.astype(np.float32), r.boxes, r.size)

    return hashes, regions


def write_outputs(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = ["group", "member", "name", "score", "cosine", "action"]
    with open(out / "groups.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append({k: r[k] for k in fields[1:]} | {"path": r["path"]})
    (out / "groups.json").write_text(json.dumps([{"id": g, "members": m} for g, m in groups.items()], indent=1))
    removes = [r["path"] or r["name"] for r in rows if r["action"] == "remove"]
    (out / "remove.txt").write_text("".join(f"{p}\n" for p in removes), encoding="utf-8")


def dedup(
    model: Path = typer.Argument(None, help="Exported .onnx model (regatt export --explain for the copy check)."),
    sources: list[str] = typer.Argument(None, help="Image files, folders, @LIST files.", show_default=False),
    store: Path = typer.Option(None, "--store", help="Reuse this feature store instead of encoding SOURCES."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (groups.csv, groups.json, remove.txt)."),
    preset: str = typer.Option(None, "--preset", help="exact | near (edited copies; default) | scene (same place)."),
    threshold: float = typer.Option(None, "--threshold", help="Override the preset's threshold; "
                                    "without --preset: group by descriptor cosine >= T (no images needed)."),
    group: str = typer.Option("components", "--group", help="components (chains) or tight (all near the representative)."),
    keep: str = typer.Option("largest", "--keep", help="Which member to keep: largest, first or oldest."),
    move_to: Path = typer.Option(None, "--move-to", help="Move the removals here (with an undo manifest)."),
    show: Path = typer.Option(None, "--show", help="Write contact sheets and index.html here."),
    images: Path = typer.Option(None, "--images", help="Folder the store's names are relative to."),
    backend: str = typer.Option("auto", "--backend", help="Range search: auto, exact, ivf, or index (the store's ANN index)."),
    undo: Path = typer.Option(None, "--undo", help="Move the files recorded in this --move-to folder back."),
    device: str = typer.Option("auto", "--device", help="Device for encoding (auto, cpu, cuda[:N], ...)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference batch."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show encoding progress."),
) -> None:  # fmt: skip
    """Find groups of duplicate, near-duplicate or same-scene images; never deletes."""
    from ..dedup.moves import move_files, undo_moves
    from ..dedup.pairs import check_threshold

    if undo is not None:
        rep = undo_moves(undo)
        for path, why in rep.skipped:
            typer.echo(f"not restored: {path}: {why}", err=True)
        typer.echo(f"restored {len(rep.done)} files ({len(rep.skipped)} left)")
        raise typer.Exit(0 if not rep.skipped else 1)
    if output is None:
        raise fail("give an output folder with -o OUT")
    if threshold is not None:
        check_threshold(threshold)
    if preset is not None and preset not in ("exact", "near", "scene"):
        raise fail(f"unknown preset '{preset}': use exact, near or scene")
    if group not in GROUPING:
        raise fail(f"unknown grouping '{group}': use components or tight")
    if keep not in ("largest", "first", "oldest"):
        raise fail(f"unknown keep policy '{keep}': use largest, first or oldest")
    if preset is None and threshold is None:
        preset = "near"
    sources = list(sources or [])
    if model is not None and not model.is_file() and store is not None:
        raise fail(f"{model}: model file not found")
    if store is None:
        if model is None or not sources:
            raise fail("give MODEL and SOURCES (images, folders), or --store STORE")
        if not model.is_file():
            raise fail(f"{model}: model file not found")

    from ..dedup.find import group_by_cosine, group_copies
    from ..dedup.policy import FileInfo, file_info, keep_remove
    from ..dedup.score import load_presets

    encoder = None
    if model is not None:
        from ..encoder import Encoder

        encoder = Encoder(model, device=device)
    if store is None:
        from ..pipeline import encode_to_store
        from ..sources import check_specs

        check_specs(sources, [])
        store = output / "store"
        report = encode_to_store(encoder, sources, store, resume=(store / "manifest.json").exists(),
                                 batch_size=batch_size, progress=progress)  # fmt: skip
        for f in report.failures[:10]:
            typer.echo(f"failed: {f.name}: {f.reason}", err=True)
        if report.rows == 0:
            raise fail(f"no images found in {', '.join(sources)}: nothing to deduplicate")
    st = open_store(store, str(encoder.card.hash) if encoder else None, model)
    names, vectors = st.names, st.vectors
    paths = [resolve(n, images) for n in names]
    copy_model, presets, prov = load_presets() if preset else (None, {}, {})
    copies = preset in ("exact", "near")
    if copies and encoder is None:
        raise fail(f"--preset {preset} checks copies image by image: give the MODEL (and --images DIR if the "
                   "store's names are not paths), or group by descriptor alone with --threshold T")  # fmt: skip
    if copies and prov.get("card_hash") and prov["card_hash"] != str(encoder.card.hash):
        typer.secho(f"note: the presets were calibrated for model card {prov['card_hash']}, not {encoder.card.hash}; "
                    "their thresholds may not carry over", err=True, fg=typer.colors.YELLOW)  # fmt: skip
    t = threshold if threshold is not None else presets[preset].threshold
    if copies:
        hashes, regions = copy_signals(encoder, paths)
        result = group_copies(vectors, hashes, regions, copy_model, t, mode=group,
                              backend="auto" if backend == "index" else backend)  # fmt: skip
    elif backend == "index":
        from ..dedup.groups import group_pairs
        from ..dedup.pairs import pairs_from_index
        from ..index.searcher import Searcher

        pairs = pairs_from_index(Searcher.for_store(store).index, t)
        from ..dedup.find import DedupResult

        result = DedupResult(group_pairs(len(names), pairs, group), pairs, int(pairs[0].size), t)
    else:
        result = group_by_cosine(vectors, t, mode=group, backend=backend)
    infos: list[FileInfo] = [FileInfo(n) for n in names]
    grouped = {int(m) for g in result.groups for m in g.members}
    for k in grouped:
        infos[k] = file_info(names[k], paths[k], pixels(paths[k]))
    decisions = keep_remove(result.groups, infos, keep)
    rows = []
    for gid, (g, (kept, _)) in enumerate(zip(result.groups, decisions), start=1):
        rep = np.asarray(vectors[g.representative], np.float32)
        cos = np.asarray(vectors[g.members], np.float32) @ rep
        for m, s, c in zip(g.members.tolist(), g.scores.tolist(), cos.tolist()):
            rows.append({"group": gid, "member": m, "name": names[m], "path": str(paths[m]) if paths[m] else None,
                         "score": round(float(s), 4), "cosine": round(float(c), 4),
                         "action": "keep" if m == kept else "remove"})  # fmt: skip
    write_outputs(output, rows)
    n_remove = sum(r["action"] == "remove" for r in rows)
    label = f"preset {preset}" if preset else "descriptor cosine"
    typer.echo(f"{len(result.groups)} groups, {n_remove} to remove, among {len(names)} images "
               f"({label}, threshold {t:.3f}, {result.candidates} pairs scored); wrote {output}/groups.csv")  # fmt: skip
    if show is not None:
        from ..dedup.report import write_report

        groups_json = json.loads((output / "groups.json").read_text())
        typer.echo(f"report: {write_report(show, groups_json, title=f'regatt dedup ({label})')}")
    if move_to is not None:
        targets = [r["path"] for r in rows if r["action"] == "remove" and r["path"]]
        root = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in targets])) if targets else None
        rep = move_files(targets, move_to, root=root)
        for path, why in rep.skipped:
            typer.echo(f"not moved: {path}: {why}", err=True)
        typer.echo(f"moved {len(rep.done)} files to {move_to} (undo: regatt dedup --undo {move_to})")


def register(app: typer.Typer) -> None:
    """Add the ``dedup`` command to the ``regatt`` app."""
    app.command("dedup")(dedup)
