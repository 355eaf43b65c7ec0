"""Model-quality report for efficientnet-lite0: landmark retrieval on the Paris6k subset.

Every one of the 250 photos (5 landmarks x 50) is a query; the same landmark is positive; the
query is left out of its own ranking (and out of its own query expansion). mAP by the classic
Oxford/Paris AP rule (``regatt_sdk.evaluation.compute_ap``), without and with average query
expansion (AQE, top 5).

Descriptors are computed by the PyTorch ``RegionalAttentionEncoder`` (its own ``head``) on the
backbone's feature maps of photos resized to longest side S (float32 maps, cached on disk); the
ONNX export reproduces that module to 1e-5 (checked by ``regatt export``).

Held-out protocol for everything learned:
* attention: trained by ``regatt train`` on the ImageNet sample only (no Paris photo);
* whitening: leave-one-landmark-out (LOLO) on Paris: the queries of landmark k are described
  with a whitening learned from the photos of the other 4 landmarks only. Every shrinkage of a
  small fixed grid is reported (the best one is a choice made on this check, and says so). A
  whitening learned on ImageNet-sample photos (no Paris photo at all) is reported too.

Usage::

    python benchmarks/quality_report.py --attention context=ATT.pth --attention regional=ATT2.pth \
        [--imagenet /path/imagenet-sample --imagenet-count 250] [-S 384]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHRINK_GRID = (0.0, 0.1, 0.3)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paris", type=Path, default=SHARED / "paris6k-subset")
    ap.add_argument("--imagenet", type=Path, default=SHARED / "imagenet-sample")
    ap.add_argument(
        "--imagenet-count",
        type=int,
        default=250,
        help="ImageNet photos for the no-Paris whitening (every k-th, sorted); 0: skip",
    )
    ap.add_argument("-S", "--max-side", type=int, default=384)
    ap.add_argument("-L", "--levels", type=int, default=5)
    ap.add_argument("--power", type=float, default=0.5)
    ap.add_argument("--attention", action="append", default=[], help="variant=FILE (context=..., regional=...)")
    ap.add_argument(
        "--attention-lolo",
        action="append",
        default=[],
        help="variant=DIR with DIR/<landmark>.pth trained without that landmark",
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp/regatt-cache"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from-json", type=Path, help="Only rewrite quality.md/.png from this quality.json")
    return ap.parse_args(argv)


# -- retrieval ----------------------------------------------------------------------------
def average_precisions(desc: np.ndarray, labels: list[str], names: list[str], qe: int = 0, queries=None) -> np.ndarray:
    """AP of each query (row) against all other rows; ``qe`` > 0: AQE with the top ``qe``."""
    from regatt_sdk.evaluation import compute_ap

    desc = desc / np.linalg.norm(desc, axis=1, keepdims=True)
    queries = range(len(desc)) if queries is None else queries
    aps = []
    for i in queries:
        q = desc[i]
        sims = desc @ q
        sims[i] = -np.inf
        order = np.argsort(-sims, kind="stable")[:-1]  # the query itself is last: drop it
        if qe:
            q = q + desc[order[:qe]].sum(axis=0)
            q = q / np.linalg.norm(q)
            sims = desc @ q
            sims[i] = -np.inf
            order = np.argsort(-sims, kind="stable")[:-1]
        pos = [names[j] for j in range(len(desc)) if labels[j] == labels[i] and j != i]
        aps.append(compute_ap([names[j] for j in order], pos))
    return np.asarray(aps)


# -- descriptors ------------------------------------------------------------------------
class Pooled:
    """Per photo: feature map ``(C, h, w)``, regional ``rmax``/``rmean`` ``(R, C)``, ``gmean (C,)``."""

    def __init__(self, encoder, cache, items, log):
        from regatt_export.featcache import pool_regions

        self.maps, self.rmax, self.rmean, self.gmean = [], [], [], []
        t0 = time.perf_counter()
        with torch.no_grad():
            for k, it in enumerate(items):
                fmap, (h, w) = cache.get_sized(it, 0)
                f = torch.from_numpy(fmap)[None].float()
                a, m, g = pool_regions(encoder, f, h, w)
                self.maps.append(f)
                self.rmax.append(a)
                self.rmean.append(m)
                self.gmean.append(g)
                if (k + 1) % 50 == 0:
                    log(f"  {k + 1}/{len(items)} photos ({time.perf_counter() - t0:.0f} s)")


class Bank:
    """All real regions of all photos stacked: ``rmax``/``rmean`` ``(M, C)``, ``seg (M,)`` photo
    index, ``gmean (N, C)``; descriptors in bulk (one whitening product for all regions)."""

    def __init__(self, pooled: Pooled):
        self.rmax = torch.cat([a[0] for a in pooled.rmax])
        self.rmean = torch.cat([m[0] for m in pooled.rmean])
        self.counts = [a.shape[1] for a in pooled.rmax]
        self.seg = torch.repeat_interleave(torch.arange(len(self.counts)), torch.tensor(self.counts))
        self.gmean = torch.cat(pooled.gmean)
        self.pooled = pooled

    def regional(self, whitening) -> torch.Tensor:
        """Whitened (or raw) regional vectors with the release's normalisation, ``(M, D)``."""
        from regatt_export.head import release_normalize

        with torch.no_grad():
            v = whitening(self.rmax) if whitening is not None else self.rmax
            return release_normalize(v)

    def weights(self, attention) -> torch.Tensor:
        """Attention weights ``(M,)`` (ones for no attention), one photo at a time."""
        if attention is None or attention.variant == "none":
            return torch.ones(self.rmax.shape[0])
        with torch.no_grad():
            out, start = [], 0
            for i, n in enumerate(self.counts):
                out.append(attention(self.rmean[start : start + n][None], self.gmean[i : i + 1])[0])
                start += n
            return torch.cat(out)

    def descriptors(self, v: torch.Tensor, phi: torch.Tensor) -> np.ndarray:
        """``g_i = (1/R_i) sum phi v`` then the release's normalisation: ``(N, D)``."""
        from regatt_export.head import release_normalize

        with torch.no_grad():
            g = torch.zeros(len(self.counts), v.shape[1], dtype=v.dtype).index_add_(0, self.seg, phi[:, None] * v)
            g = g / torch.tensor(self.counts, dtype=v.dtype)[:, None]
            return release_normalize(g).numpy()


def check_against_module(encoder, bank: Bank, whitening, attention, n: int = 3) -> float:
    """Largest |bulk - RegionalAttentionEncoder.head| over the first ``n`` photos."""
    encoder.whitening = whitening
    encoder.attention = attention
    bulk = bank.descriptors(bank.regional(whitening), bank.weights(attention))
    worst = 0.0
    with torch.no_grad():
        for i in range(n):
            a, m, g = bank.pooled.rmax[i], bank.pooled.rmean[i], bank.pooled.gmean[i]
            d, _ = encoder.head(a, m, g, torch.ones(a.shape[1], dtype=torch.bool))
            worst = max(worst, float(np.abs(d[0].numpy() - bulk[i]).max()))
    encoder.whitening = None
    return worst


def whitening_from(vectors: np.ndarray, shrinkage: float, power: float):
    from regatt_export.official import load_whitening_arrays
    from regatt_export.whiten import learn_whitening

    mean, comps, _ = learn_whitening(vectors, None, shrinkage, power)
    return load_whitening_arrays(mean, comps, f"shrinkage {shrinkage}")


def default_backbone_encoder(attention: str, levels: int, max_side: int, cache_dir: Path):
    """``(encoder, spec, feature cache)`` of the default backbone (efficientnet-lite0, its
    packaged weights) with an untrained ``attention`` head, no whitening."""
    from regatt_export.backbones import build_backbone, get_spec
    from regatt_export.encoder import RegionalAttentionEncoder
    from regatt_export.head import Attention
    from regatt_export.whiten import full_image_cache

    name = "efficientnet-lite0"
    spec = get_spec(name)
    encoder = RegionalAttentionEncoder(
        build_backbone(name), spec, Attention(spec.channels, attention), None, levels
    ).eval()
    return encoder, spec, full_image_cache(encoder, name, None, max_side, str(cache_dir))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        write_markdown(result, args.out / "quality.md")
        write_plot(result, args.out / "quality.png")
        return 0
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    from regatt_export.datasets import list_images
    from regatt_export.head import Attention
    from regatt_export.official import load_attention_file
    from regatt_export.pooling_baselines import POOLINGS

    t_start = time.perf_counter()
    encoder, spec, cache = default_backbone_encoder("context", args.levels, args.max_side, args.cache)
    name = spec.name
    items = list_images(args.paris)
    labels = [Path(it.name).parts[0] for it in items]
    names = [it.name for it in items]
    landmarks = sorted(set(labels))
    log(f"Paris: {len(items)} photos, {len(landmarks)} landmarks, S={args.max_side}")
    paris = Pooled(encoder, cache, items, log)
    bank = Bank(paris)
    attentions = {}
    for spec_arg in args.attention:
        label, path = spec_arg.split("=", 1)
        variant = "regional" if label.startswith("regional") else "context"
        attentions[label] = (load_attention_file(path, spec.channels, variant), path)

    rows: dict[str, dict] = {}

    def score(label: str, desc_for_fold, note: str) -> None:
        """``desc_for_fold(k)`` -> descriptors of all photos for scoring landmark ``k``'s queries."""
        per = {}
        ap0, ap5 = [], []
        for lm in landmarks:
            d = desc_for_fold(lm)
            qs = [i for i, x in enumerate(labels) if x == lm]
            a0 = average_precisions(d, labels, names, 0, qs)
            a5 = average_precisions(d, labels, names, 5, qs)
            per[lm] = {"mAP": 100 * a0.mean(), "mAP_qe5": 100 * a5.mean()}
            ap0.append(a0)
            ap5.append(a5)
        rows[label] = {
            "mAP": float(100 * np.concatenate(ap0).mean()),
            "mAP_qe5": float(100 * np.concatenate(ap5).mean()),
            "per_landmark": per,
            "note": note,
        }
        log(f"{label:<60} mAP {rows[label]['mAP']:6.2f}   +AQE5 {rows[label]['mAP_qe5']:6.2f}")

    # classic poolings (nothing learned)
    for pname, fn in (("GeM (p=3)", POOLINGS["GeM"]), ("MAC", POOLINGS["MAC"]), ("SPoC", POOLINGS["SPoC"])):
        with torch.no_grad():
            d = np.stack([fn(f)[0].numpy() for f in paris.maps])
        score(pname, lambda lm, d=d: d, "global pooling of the feature map")
    ones = bank.weights(None)
    raw = bank.regional(None)
    d = bank.descriptors(raw, ones)
    score("R-MAC", lambda lm: d, "no whitening, no attention")
    for label, (att, path) in attentions.items():
        d = bank.descriptors(raw, bank.weights(att))
        score(
            f"R-MAC + {label} attention (no whitening)",
            lambda lm, d=d: d,
            f"{Path(path).parent.name}/{Path(path).name}",
        )

    # whitening, leave-one-landmark-out (LOLO): landmark k's queries use a whitening learned on the others
    vec_by_lm = {
        lm: bank.rmax[torch.tensor([labels[i] == lm for i in range(len(items))])[bank.seg]].double().numpy()
        for lm in landmarks
    }
    checks = {}
    lolo_best, lolo_best_s = -1.0, 0.0
    fold_v: dict[float, dict[str, torch.Tensor]] = {}
    for s in SHRINK_GRID:
        fold_v[s] = {}
        for lm in landmarks:
            wh = whitening_from(np.concatenate([vec_by_lm[x] for x in landmarks if x != lm]), s, args.power)
            if lm == landmarks[0]:
                checks[f"lolo shrinkage {s}"] = check_against_module(
                    encoder, bank, wh, Attention(spec.channels, "none")
                )
            fold_v[s][lm] = bank.regional(wh)
        dd = {lm: bank.descriptors(fold_v[s][lm], ones) for lm in landmarks}
        score(
            f"R-MAC + whitening (LOLO, shrinkage {s})", lambda lm, dd=dd: dd[lm], "whitening from the other 4 landmarks"
        )
        if rows[f"R-MAC + whitening (LOLO, shrinkage {s})"]["mAP"] > lolo_best:
            lolo_best, lolo_best_s = rows[f"R-MAC + whitening (LOLO, shrinkage {s})"]["mAP"], s
    log(f"best LOLO shrinkage: {lolo_best_s}")
    for label, (att, path) in attentions.items():
        phi = bank.weights(att)
        checks[f"attention {label}"] = check_against_module(encoder, bank, None, att)
        for s in sorted({0.0, lolo_best_s}):
            dd = {lm: bank.descriptors(fold_v[s][lm], phi) for lm in landmarks}
            score(
                f"R-MAC + whitening (LOLO, shrinkage {s}) + {label} attention",
                lambda lm, dd=dd: dd[lm],
                f"{Path(path).parent.name}/{Path(path).name}",
            )

    # attention trained per fold on the other 4 landmarks (label-free), scored on the held-out one
    for spec_arg in args.attention_lolo:
        label, folder = spec_arg.split("=", 1)
        variant = "regional" if label.startswith("regional") else "context"
        phis = {
            lm: bank.weights(load_attention_file(Path(folder) / f"{lm}.pth", spec.channels, variant))
            for lm in landmarks
        }
        dd = {lm: bank.descriptors(raw, phis[lm]) for lm in landmarks}
        score(
            f"R-MAC + {label} attention (LOLO, no whitening)",
            lambda lm, dd=dd: dd[lm],
            f"attention trained on the other 4 landmarks ({folder})",
        )
        for s in sorted({0.0, lolo_best_s}):
            dd = {lm: bank.descriptors(fold_v[s][lm], phis[lm]) for lm in landmarks}
            score(
                f"R-MAC + whitening (LOLO, shrinkage {s}) + {label} attention (LOLO)",
                lambda lm, dd=dd: dd[lm],
                f"attention trained on the other 4 landmarks ({folder})",
            )

    # whitening learned on ImageNet photos (no Paris photo at all)
    if args.imagenet_count and args.imagenet.is_dir():
        inet = list_images(args.imagenet)
        step = max(1, len(inet) // args.imagenet_count)
        inet = inet[::step][: args.imagenet_count]
        log(f"ImageNet whitening from {len(inet)} photos")
        ivec = Bank(Pooled(encoder, cache, inet, log)).rmax.double().numpy()
        for s in sorted({0.0, lolo_best_s}):
            v = bank.regional(whitening_from(ivec, s, args.power))
            d = bank.descriptors(v, ones)
            score(f"R-MAC + whitening (ImageNet {len(inet)}, shrinkage {s})", lambda lm, d=d: d, "no Paris photo used")
            for label, (att, path) in attentions.items():
                d = bank.descriptors(v, bank.weights(att))
                score(
                    f"R-MAC + whitening (ImageNet {len(inet)}, shrinkage {s}) + {label} attention",
                    lambda lm, d=d: d,
                    f"{Path(path).parent.name}/{Path(path).name}",
                )
        # both: the other 4 Paris landmarks + the ImageNet photos
        s = lolo_best_s
        both = {}
        for lm in landmarks:
            vecs = np.concatenate([ivec] + [vec_by_lm[x] for x in landmarks if x != lm])
            both[lm] = bank.regional(whitening_from(vecs, s, args.power))
        dd = {lm: bank.descriptors(both[lm], ones) for lm in landmarks}
        score(
            f"R-MAC + whitening (LOLO + ImageNet {len(inet)}, shrinkage {s})",
            lambda lm, dd=dd: dd[lm],
            "other 4 landmarks + ImageNet photos",
        )

    result = {
        "backbone": name,
        "max_side": args.max_side,
        "levels": args.levels,
        "power": args.power,
        "descriptors": "RegionalAttentionEncoder head (whitening, release normalisation, attention, weighted mean) on float32 "
        "backbone feature maps, computed in bulk; max |bulk - encoder.head| checked per setting",
        "max_abs_diff_vs_module": checks,
        "protocol": "Paris6k subset, 250 photos, each a query, same landmark positive, query excluded; AQE top-5",
        "shrinkage_grid": list(SHRINK_GRID),
        "best_lolo_shrinkage": lolo_best_s,
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out / "quality.md")
    write_plot(result, args.out / "quality.png")
    log(f"wrote {args.out / 'quality.json'}, quality.md, quality.png ({result['seconds']:.0f} s)")
    return 0


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        f"# Retrieval quality: {result['backbone']}, Paris6k subset (250 queries), S={result['max_side']}, L={result['levels']}",
        "",
        f"Protocol: {result['protocol']}. Descriptors: {result['descriptors']}.",
        "LOLO = leave-one-landmark-out: the queries of each landmark use a whitening learned on the other 4 landmarks;",
        f"power {result['power']}, shrinkage grid {result['shrinkage_grid']} all shown (best on this check: {result['best_lolo_shrinkage']}).",
        "Attention files were trained on the ImageNet sample only (no Paris photo); the label names the training run.",
        f"Bulk descriptors vs the encoder module's head, max abs difference: {max(result['max_abs_diff_vs_module'].values()):.1e}.",
        "",
        "| method | mAP | mAP + AQE(5) | note |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, r in result["rows"].items():
        lines.append(f"| {label} | {r['mAP']:.2f} | {r['mAP_qe5']:.2f} | {r['note']} |")
    lines += ["", "## Summary (computed from the table)", ""]
    rows = result["rows"]
    classic = max(("GeM (p=3)", "MAC", "SPoC"), key=lambda k: rows[k]["mAP"])
    s = result["best_lolo_shrinkage"]
    white = f"R-MAC + whitening (LOLO, shrinkage {s})"
    lines.append(f"- Best classic pooling: {classic} {rows[classic]['mAP']:.2f} mAP.")
    lines.append(
        f"- {white}: {rows[white]['mAP']:.2f} mAP ({rows[white]['mAP'] - rows[classic]['mAP']:+.2f} vs {classic}); "
        f"+AQE(5) {rows[white]['mAP_qe5']:.2f} ({rows[white]['mAP_qe5'] - rows[classic]['mAP_qe5']:+.2f})."
    )
    for label, r in rows.items():
        if label.startswith(white + " + "):
            lines.append(
                f"- {label[len(white) + 3 :]}: {r['mAP'] - rows[white]['mAP']:+.2f} mAP vs the same whitening without attention."
            )
    path.write_text("\n".join(lines) + "\n")


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["rows"])
    a = [result["rows"][k]["mAP"] for k in labels]
    b = [result["rows"][k]["mAP_qe5"] for k in labels]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(labels) + 1.5))
    y = np.arange(len(labels))
    ax.barh(y - 0.2, a, 0.4, label="mAP")
    ax.barh(y + 0.2, b, 0.4, label="mAP + AQE(5)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    lo = min(a + b)
    ax.set_xlim(max(0, lo - 5), 100)
    ax.set_xlabel("mAP (%)")
    ax.set_title(f"{result['backbone']}, Paris6k subset, S={result['max_side']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
