"""``regatt dedup``: groups of near-duplicate or same-scene images, a keep/remove list, an
optional move of the removals (with an undo manifest) and a contact-sheet report.

    regatt dedup MODEL SOURCES... -o OUT [--preset exact|near|scene] [--group components|tight]
                 [--keep largest|first|oldest] [--move-to DIR] [--show DIR]
    regatt dedup [MODEL] --store STORE -o OUT [--threshold T] ...   # reuse a feature store
    regatt dedup --undo DIR                                         # move the files back
    regatt dedup MODEL --against STORE NEW... -o OUT                # new photos vs a collection

Writes ``OUT/groups.csv`` and ``OUT/groups.json`` (group, member, name, score to the
representative, descriptor cosine to it, keep/remove), ``OUT/remove.txt`` (one path a line) and,
for sources, the feature store ``OUT/store``. Nothing is ever deleted.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import typer

from ..dedup.run import DuplicateRow
from ..names import display
from .engine_opts import (
    device_option,
    encoder_options,
    engine_option,
    max_side_option,
    memory_option,
    open_encoder,
    precision_option,
    threads_option,
)
from .errors import fail


def write_outputs(out: Path, found: list[DuplicateRow]) -> None:
    """``OUT/groups.csv``, ``OUT/groups.json`` and ``OUT/remove.txt`` of the rows found."""
    # names and paths as one valid UTF-8 line each (regatt_sdk.names): a file name that is not
    # UTF-8, or holds a newline, cannot break the CSV, the JSON or remove.txt's one path a line
    rows = [
        {**d, "name": display(d["name"]), "path": None if d["path"] is None else display(str(d["path"]))}
        for d in (r.as_dict() for r in found)
    ]
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
    model: Path = typer.Argument(None, help="Exported .onnx model (any export; the copy check also reads the image files)."),
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
    against: Path = typer.Option(None, "--against", help="Check the new photos SOURCES against this feature store "
                                 "(it is not changed or re-grouped): writes OUT/against.csv."),
    top: int = typer.Option(10, "--top", min=1, help="Candidates per new photo with --against."),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    memory: str = memory_option("pattern"),
    threads: int = threads_option(),
    max_side: int = max_side_option(),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference batch."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show encoding progress."),
) -> None:  # fmt: skip
    """Find groups of duplicate, near-duplicate or same-scene images; never deletes."""
    from ..collection import Collection
    from ..dedup.moves import move_files, undo_moves
    from ..dedup.run import check_options

    if undo is not None:
        rep = undo_moves(undo)
        for path, why in rep.skipped:
            typer.echo(f"not restored: {display(path)}: {display(why)}", err=True)
        typer.echo(f"restored {len(rep.done)} files ({len(rep.skipped)} left)")
        raise typer.Exit(0 if not rep.skipped else 1)
    if output is None:
        raise fail("give an output folder with -o OUT")
    preset = check_options(preset, threshold, group, keep, backend)
    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads, max_side=max_side
    )
    sources = list(sources or [])
    if against is not None:
        _against(model, against, sources, output, options, preset, threshold, top, images)
        return
    if model is not None and not model.is_file() and store is not None:
        raise fail(f"{model}: model file not found")
    if store is None:
        if model is None or not sources:
            raise fail("give MODEL and SOURCES (images, folders), or --store STORE")
        if not model.is_file():
            raise fail(f"{model}: model file not found")
    if preset in ("exact", "near") and model is None:
        raise fail(f"--preset {preset} checks copies image by image: give the MODEL (and --images DIR if the "
                   "store's names are not paths), or group by descriptor alone with --threshold T")  # fmt: skip

    if store is not None:
        Collection.open(store)  # a missing or damaged store is refused before the model loads
    encoder = open_encoder(model, options) if model is not None else None
    if store is None:
        from ..sources import check_specs

        check_specs(sources, [])
        store = output / "store"
        if (store / "manifest.json").exists():
            collection = Collection.open(store, encoder)
        else:
            collection = Collection.create(store, encoder)
        report = collection.add(sources, batch_size=batch_size, progress=progress)
        for f in report.failures[:10]:
            typer.echo(f"failed: {display(f.name)}: {display(f.reason)}", err=True)
        if report.rows == 0:
            raise fail(f"no images found in {', '.join(sources)}: nothing to deduplicate")
    else:
        collection = Collection.open(store, encoder)  # a store made by another model is refused
        if len(collection) == 0:
            raise fail(f"{store}: the feature store holds no images: encode a folder first (regatt encode)")
    found = collection.duplicates(threshold, preset=preset, group=group, keep=keep, images=images, backend=backend)
    for note in found.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    for path, why in found.skipped:
        typer.echo(f"skipped in the copy check: {display(str(path))}: {display(why)}", err=True)
    write_outputs(output, found.rows)
    typer.echo(f"{found.summary()}; wrote {output}/groups.csv")
    label = f"preset {preset}" if preset else "descriptor cosine"
    if show is not None:
        from ..dedup.report import write_report

        groups_json = json.loads((output / "groups.json").read_text())
        typer.echo(f"report: {write_report(show, groups_json, title=f'regatt dedup ({label})')}")
    if move_to is not None:
        targets = [r.path for r in found.removals if r.path]
        # links are moved as links (not resolved): the root is the folder of the paths as named
        root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in targets])) if targets else None
        rep = move_files(targets, move_to, root=root)
        for path, why in rep.skipped:
            typer.echo(f"not moved: {display(path)}: {display(why)}", err=True)
        typer.echo(f"moved {len(rep.done)} files to {move_to} (undo: regatt dedup --undo {move_to})")


def _against(model, store, sources, output, options, preset, threshold, top, images) -> None:
    """``--against STORE``: the new photos' duplicates in the store, one CSV row per match."""
    from ..collection import Collection
    from ..sources import check_specs

    if model is None or not sources:
        raise fail("give MODEL and the new photos: regatt dedup MODEL --against STORE NEW... -o OUT")
    if not model.is_file():
        raise fail(f"{model}: model file not found")
    check_specs(sources, [])
    Collection.open(store)  # a missing or damaged store is refused before the model loads
    collection = Collection.open(store, model, options)  # a store made by another model is refused
    found = collection.duplicates_of(sources, preset=preset, threshold=threshold, top=top, images=images)
    for note in found.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    for name, why in found.failed[:10]:
        typer.echo(f"failed: {display(name)}: {display(why)}", err=True)
    output.mkdir(parents=True, exist_ok=True)
    fields = ["new", "name", "score", "cosine", "row", "path"]
    with open(output / "against.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for m in found.matches:
            d = m.as_dict()
            w.writerow({**d, "new": display(d["new"]), "name": display(d["name"]), "path": display(d["path"])})
    typer.echo(f"{found.summary()}; wrote {output}/against.csv")


def register(app: typer.Typer) -> None:
    """Add the ``dedup`` command to the ``regatt`` app."""
    app.command("dedup")(dedup)
