"""End to end on real photos: decode, resize to S, encode; each step timed per image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..compose import EncoderOptions, open_encoder
from ..imageio import read_image
from ..preprocess import prepare
from ..sources import parse_extensions
from .stats import summarize


def image_files(directory: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files under ``directory`` (recursive, sorted, known extensions)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    known = parse_extensions(None)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in known)
    if not files:
        raise FileNotFoundError(f"{directory}: no image files ({', '.join(sorted(known))})")
    return files[:limit]


def bench_images(
    model: Path,
    device: str,
    files: list[Path],
    max_side: int,
    threads: int,
    tick: Callable[[str], None],
) -> dict[str, object]:
    """Per-image decode / resize / encode / total times (ms summaries) with one session.

    The first image is run once untimed first, so the figures are warm (like the latency rows).
    """
    encoder = open_encoder(model, EncoderOptions(device=device, max_side=max_side, threads=threads))
    side = encoder.prepare_side  # S, or the larger input of a multi-scale graph
    encoder.encode_prepared(prepare(read_image(files[0]), side)[None])
    decode, resize, encode, total, sizes = [], [], [], [], []
    for path in files:
        t0 = time.perf_counter()
        bgr = read_image(path)
        t1 = time.perf_counter()
        prepared = prepare(bgr, side)
        t2 = time.perf_counter()
        encoder.encode_prepared(prepared[None])
        t3 = time.perf_counter()
        decode.append(t1 - t0)
        resize.append(t2 - t1)
        encode.append(t3 - t2)
        total.append(t3 - t0)
        sizes.append([int(bgr.shape[0]), int(bgr.shape[1]), int(prepared.shape[0]), int(prepared.shape[1])])
        tick("image")
    return {
        "images": len(files),
        "decode": summarize(decode).to_dict(),
        "resize": summarize(resize).to_dict(),
        "encode": summarize(encode).to_dict(),
        "total": summarize(total).to_dict(),
        "sizes_hw_in_out": sizes,
    }
