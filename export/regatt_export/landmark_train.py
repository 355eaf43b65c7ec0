"""The ``landmark`` objective of ``regatt train``: attention learned for retrieval on landmark labels.

Data: a ``<landmark>/<photo>`` tree. Training photos come from the ``train`` landmarks of
:func:`splits.landmark_split` (or ``--train-landmarks``), validation from the ``val`` ones; the
``test`` landmarks are never read.

Views (frozen backbone, cached): view 0 of every photo is the photo itself at longest side ``S``
(exactly the inference input, the same cache files as ``regatt whiten``); views ``1..V-1`` of a
training photo paste it small into an ImageNet background (:func:`augment.paste_view`), so the
same landmark appears among clutter. Validation photos get one clutter view, on backgrounds the
training never used (the background folder is split by position: even -> train, odd -> val).

Descriptor (as at inference): regional max ``rmax`` -> whitening -> the release's normalisation
-> attention-weighted mean over the real regions -> L2. Loss: supervised contrastive (SupCon,
Khosla et al. 2020) over a batch of ``P`` landmarks x ``K`` photos, each a random one of its
views: for anchor ``i`` with positives ``P(i)`` (same landmark, other rows),
``-mean_{p in P(i)} log softmax_j(s_ij / tau)_p``. The softmax over every other row puts most of
the gradient on the hardest negatives (hard-negative mining inside the batch, ``tau`` sets how
hard), and several positives per anchor include clean-vs-clutter pairs, so weights on
background regions are what the loss pushes down. Optional ``KL(p || uniform)`` prior.

Validation every epoch: retrieval mAP on the val landmarks (clean queries vs clean photos, and
clutter queries vs clean photos, the query's own photo excluded); the metric is their mean.
``R`` region slots (padded; ``mask``), ``C`` channels, ``D`` descriptor size.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import ClutterSpec, paste_view
from .datasets import DataError, Item, list_images
from .featcache import FeatureCache, _file_id, backbone_features, cache_key, weights_fact
from .head import release_normalize
from .splits import landmark_split

#: view number of a validation photo's clutter view (drawn from the validation backgrounds)
VAL_VIEW = 1000


def landmark_items(root: str | Path, names: list[str]) -> list[Item]:
    """Photos of the landmarks ``names`` under ``root``, labelled by position in ``names``."""
    root = Path(root)
    folders = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; the landmark objective needs <landmark>/<photo> folders")
    missing = [n for n in names if n not in folders]
    if missing:
        raise DataError(
            f"{root}: landmark(s) {', '.join(missing)} match no folder (folders: {', '.join(sorted(folders)[:8])}...)"
        )
    items: list[Item] = []
    for label, name in enumerate(names):
        photos = list_images(root / name) if any((root / name).iterdir()) else []
        if len(photos) < 2:
            raise DataError(
                f"{root / name}: landmark with {len(photos)} photo(s); every landmark needs >= 2 (a photo and a match)"
            )
        items += [Item(p.path, f"{name}/{p.name}", label) for p in photos]
    return items


def resolve_landmarks(
    root: str, train: tuple[str, ...] | None, val: tuple[str, ...] | None
) -> tuple[list[str], list[str]]:
    """Training and validation landmark names: the given ones, else :func:`landmark_split`."""
    try:
        split = landmark_split(root)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(str(exc)) from None
    tr = list(train) if train else split["train"]
    va = list(val) if val is not None else split["val"]
    if len(tr) < 2:
        raise DataError(
            f"{root}: {len(tr)} training landmark(s); the landmark objective needs >= 2 (others are the negatives)"
        )
    if va and len(va) < 2:
        raise DataError(f"{root}: {len(va)} validation landmark(s); retrieval validation needs >= 2 (or none)")
    if set(tr) & set(va):
        raise DataError(f"landmarks in both training and validation: {sorted(set(tr) & set(va))}")
    return tr, va


def background_items(folder: str | None, part: str) -> list[Item]:
    """Background photos for clutter views: even positions train, odd positions val."""
    if folder is None:
        return []
    items = list_images(folder)
    chosen = items[0::2] if part == "train" else items[1::2]
    if not chosen:
        raise DataError(f"{folder}: needs >= 2 background photos (one for training views, one for validation)")
    return chosen


def view_caches(
    encoder, cfg, backgrounds_train: list[Item], backgrounds_val: list[Item], stable_index
) -> tuple[FeatureCache, FeatureCache]:
    """``(clean, clutter)`` feature caches: clean = the photo at longest side ``S`` (the
    ``regatt whiten`` cache), clutter = view ``v`` pasted on a seeded background."""
    from regatt_sdk.imageio import read_image

    from .whiten import full_image_cache

    clean = full_image_cache(
        encoder, cfg.backbone, cfg.weights, cfg.max_side, cfg.cache_dir, dtype="float16", seed=cfg.seed
    )
    spec = ClutterSpec(cfg.max_side, cfg.clutter_min, cfg.clutter_max)

    def producer(item: Item, view: int) -> np.ndarray:
        rng = np.random.default_rng([cfg.seed, stable_index(item), view, 7])
        pool = backgrounds_val if view >= VAL_VIEW else backgrounds_train
        bg = pool[int(rng.integers(0, len(pool)))]
        canvas, _ = paste_view(read_image(item.path), read_image(bg.path), spec, rng)
        return canvas

    facts = {
        "backbone": cfg.backbone,
        "weights": weights_fact(cfg.weights),
        "clutter": asdict(spec),
        "seed": cfg.seed,
        "kind": "clutter-paste",
        "backgrounds": [
            str(Path(cfg.backgrounds).resolve()) if cfg.backgrounds else None,
            len(backgrounds_train),
            len(backgrounds_val),
        ],
    }
    return clean, FeatureCache(cfg.cache_dir, cache_key(**facts), producer, backbone_features(encoder), "float16")


class RegionBank:
    """Pooled regions of many views, in RAM (float16), padded to ``R`` slots:
    ``v (M, R, D)`` whitened + release-normalised regional max, ``rmean (M, R, C)``,
    ``gmean (M, C)``, ``mask (M, R)`` bool; row ``m`` is ``(photo, view)`` of ``rows``."""

    FIELDS = ("v", "rmean", "gmean", "mask")

    def __init__(self, encoder, getters: list, progress=None, store: Path | None = None):
        if store is not None and all((store / f"{f}.npy").is_file() for f in self.FIELDS):
            try:
                for f in self.FIELDS:
                    setattr(self, f, torch.from_numpy(np.load(store / f"{f}.npy", allow_pickle=False)))
                if len(self.v) == len(getters):
                    self.loaded = True
                    return
            except (ValueError, OSError):
                pass  # torn files: pool again
        self.loaded = False
        vs, means, gs, counts = [], [], [], []
        with torch.no_grad():
            for i, get in enumerate(getters):
                fmap, (h, w) = get()
                # the encoder's own pooling (MaxRoiPool + mask means), exactly as at inference
                rmax, rmean, gmean, _ = encoder.regional(
                    torch.empty((1, h, w, 0)), torch.from_numpy(fmap)[None].float()
                )
                v = encoder.whitening(rmax) if encoder.whitening is not None else rmax
                vs.append(release_normalize(v)[0].half())
                means.append(rmean[0].half())
                gs.append(gmean[0].half())
                counts.append(rmax.shape[1])
                if progress is not None:
                    progress(i + 1, len(getters))
        r = max(counts)
        m = len(getters)
        self.v = torch.zeros(m, r, vs[0].shape[1], dtype=torch.float16)
        self.rmean = torch.zeros(m, r, means[0].shape[1], dtype=torch.float16)
        self.mask = torch.zeros(m, r, dtype=torch.bool)
        for i, (a, b) in enumerate(zip(vs, means)):
            self.v[i, : a.shape[0]] = a
            self.rmean[i, : b.shape[0]] = b
            self.mask[i, : a.shape[0]] = True
        self.gmean = torch.stack(gs)
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
            for f in self.FIELDS:
                tmp = store / f"{f}.tmp{os.getpid()}.npy"
                np.save(tmp, getattr(self, f).numpy(), allow_pickle=False)
                os.replace(tmp, store / f"{f}.npy")

    def __len__(self) -> int:
        return self.v.shape[0]

    def descriptors(self, attention, rows: torch.Tensor, uniform: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows (B,)`` -> ``(unit descriptors (B, D), weights phi (B, R), zero on padding)``.
        The inference head's weighted mean (sum / R) then L2 (= release normalisation up to scale)."""
        v = self.v[rows].float()
        mask = self.mask[rows]
        if uniform:
            phi = mask.float()
        else:
            phi = attention(self.rmean[rows].float(), self.gmean[rows].float()) * mask
        g = (phi[..., None] * v).sum(dim=1)
        return F.normalize(g, dim=-1), phi


def supcon_loss(desc: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss of unit rows ``desc (B, D)`` with ``labels (B,)``; anchors
    without a positive in the batch are skipped."""
    sim = desc @ desc.t() / tau
    eye = torch.eye(len(labels), dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    if not bool(keep.any()):
        return desc.sum() * 0.0  # no anchor with a positive: nothing to learn from this batch
    per_anchor = -(logp.masked_fill(~pos, 0.0).sum(1)[keep] / n_pos[keep])
    return per_anchor.mean()


def masked_kl_uniform(phi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(phi / sum phi || uniform over the real regions)``."""
    p = phi / phi.sum(1, keepdim=True).clamp_min(1e-12)
    n = mask.sum(1).float()
    ent = (p * torch.log(p.clamp_min(1e-12))).masked_fill(~mask, 0.0).sum(1)
    return (ent + torch.log(n)).mean()


def mean_ap(
    sim: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor, exclude: torch.Tensor | None = None
) -> float:
    """Mean average precision of queries ``sim (Q, N)`` against the database; ``exclude (Q,)``
    is a database row to drop for each query (its own photo) or -1."""
    sim = sim.clone()
    if exclude is not None:
        q = torch.nonzero(exclude >= 0)[:, 0]
        sim[q, exclude[q]] = float("-inf")
    order = torch.argsort(sim, dim=1, descending=True)
    rel = (db_labels[order] == q_labels[:, None]).float()
    if exclude is not None:
        valid = torch.ones_like(rel, dtype=torch.bool)
        q = torch.nonzero(exclude >= 0)[:, 0]
        valid[q, -1] = False  # the excluded row sorts last (-inf)
        rel = rel * valid
    hits = rel.cumsum(1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float32)
    n_rel = rel.sum(1)
    ap = (rel * hits / ranks).sum(1) / n_rel.clamp_min(1)
    return float(ap[n_rel > 0].mean())


class LandmarkData:
    """The training and validation views of the landmark objective, pooled into RAM."""

    def __init__(self, cfg, encoder, stable_index, log, bar):
        self.train_names, self.val_names = resolve_landmarks(cfg.data, cfg.train_landmarks, cfg.val_landmarks)
        self.train_items = landmark_items(cfg.data, self.train_names)
        val = landmark_items(cfg.data, self.val_names) if self.val_names else []
        self.val_items = val
        bg_train = background_items(cfg.backgrounds, "train")
        bg_val = background_items(cfg.backgrounds, "val")
        if cfg.views > 1 and not bg_train:
            raise DataError(
                "--views > 1 with the landmark objective needs --backgrounds FOLDER (photos to paste the landmarks into)"
            )
        self.clean, self.clutter = view_caches(encoder, cfg, bg_train, bg_val, stable_index)
        t0 = time.perf_counter()
        stores = self._stores(cfg, encoder)
        getters = []
        for it in self.train_items:
            getters.append(lambda it=it: self.clean.get_sized(it, 0))
            for v in range(1, cfg.views):
                getters.append(lambda it=it, v=v: self.clutter.get_sized(it, v))
        self.train = RegionBank(encoder, getters, bar("features (train)"), stores[0])
        self.views = cfg.views
        self.train_labels = torch.tensor([it.label for it in self.train_items])
        self.val = None
        if self.val_items:
            getters = [lambda it=it: self.clean.get_sized(it, 0) for it in self.val_items]
            if bg_val:
                getters += [lambda it=it: self.clutter.get_sized(it, VAL_VIEW) for it in self.val_items]
            self.val = RegionBank(encoder, getters, bar("features (val)"), stores[1])
            self.val_labels = torch.tensor([it.label for it in self.val_items])
        self.feature_s = time.perf_counter() - t0
        computed = self.clean.stats.computed + self.clutter.stats.computed
        loaded = self.clean.stats.loaded + self.clutter.stats.loaded
        log(
            f"landmarks: {len(self.train_names)} train ({len(self.train_items)} photos x {cfg.views} views), "
            f"{len(self.val_names)} val ({len(self.val_items)} photos); feature maps {computed} computed, {loaded} cached, "
            f"{self.feature_s:.1f} s; up to {self.train.v.shape[1]} regions"
        )

    def _stores(self, cfg, encoder) -> tuple[Path | None, Path | None]:
        """Where the pooled banks are kept (beside the feature cache), keyed by everything that
        changes them: the two caches, the photos, the views, the whitening, L."""
        if cfg.cache_dir is None:
            return None, None
        wh = encoder.whitening
        wh_fact = (
            "none"
            if wh is None
            else hashlib.sha1(wh.components.numpy().tobytes() + wh.mean.numpy().tobytes()).hexdigest()[:16]
        )

        def key(items, views):
            names = hashlib.sha1("\n".join(_file_id(it.path) for it in items).encode()).hexdigest()[:16]
            return (
                Path(cfg.cache_dir)
                / "banks"
                / cache_key(
                    clean=self.clean.dir.name,
                    clutter=self.clutter.dir.name,
                    names=names,
                    views=views,
                    whitening=wh_fact,
                    levels=cfg.levels,
                    kind="landmark-bank",
                )
            )

        return key(self.train_items, cfg.views), key(self.val_items, f"val:{bool(cfg.backgrounds)}")

    def batches(self, gen: torch.Generator, batch: int, per_landmark: int) -> list[torch.Tensor]:
        """One epoch of ``P x K`` photo batches (``K = per_landmark``, ``P = batch // K``): every
        training photo once, grouped by landmark, landmarks mixed across batches."""
        by_label: dict[int, list[int]] = {}
        for i in torch.randperm(len(self.train_items), generator=gen).tolist():
            by_label.setdefault(int(self.train_labels[i]), []).append(i)
        chunks = []
        for ids in by_label.values():
            parts = [ids[s : s + per_landmark] for s in range(0, len(ids), per_landmark)]
            if len(parts) > 1 and len(parts[-1]) == 1:  # a lone photo has no positive: join the previous group
                lone = parts.pop()
                parts[-1] = parts[-1] + lone
            chunks += parts
        chunks = [chunks[j] for j in torch.randperm(len(chunks), generator=gen).tolist()]
        p = max(1, batch // per_landmark)
        return [torch.tensor(sum(chunks[s : s + p], [])) for s in range(0, len(chunks), p)]

    def loss(self, attention, idx: torch.Tensor, gen: torch.Generator, tau: float, prior: float) -> torch.Tensor:
        views = torch.randint(0, self.views, (len(idx),), generator=gen)
        d, phi = self.train.descriptors(attention, idx * self.views + views)
        loss = supcon_loss(d, self.train_labels[idx], tau)
        if prior > 0:
            loss = loss + prior * masked_kl_uniform(phi, self.train.mask[idx * self.views + views])
        return loss

    @torch.no_grad()
    def validate(self, attention, tau: float, uniform: bool = False) -> dict[str, float]:
        """``val`` = mean of clean and clutter mAP (clean only without backgrounds)."""
        if self.val is None:
            return {"val": float("nan"), "loss": float("nan"), "peak": float("nan")}
        n = len(self.val_items)
        d, phi = self.val.descriptors(attention, torch.arange(len(self.val)), uniform)
        db, labels = d[:n], self.val_labels
        own = torch.arange(n)
        clean = mean_ap(db @ db.t(), labels, labels, own)
        out = {"clean_map": clean, "peak": float((phi.amax(1) / (phi.sum(1) / self.val.mask.sum(1))).mean())}
        out["loss"] = float(supcon_loss(db, labels, tau))
        if len(self.val) > n:
            q = d[n:]
            out["clutter_map"] = mean_ap(q @ db.t(), labels, labels, own)
            out["val"] = 0.5 * (clean + out["clutter_map"])
        else:
            out["val"] = clean
        return out
