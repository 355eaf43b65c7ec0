"""``regatt train``: learn the regional attention on a frozen backbone.

Two objectives over cached feature maps (the backbone never changes, see :mod:`featcache`):

* ``classify`` (the paper, SPEC §3): ``g = (1/R) sum_r phi_r * rmax_r`` over the raw regional
  max vectors (no whitening, no per-region normalisation), ``logits = fc(g)`` with the frozen
  ImageNet classifier ``fc``, cross-entropy against the WordNet-id label.
* ``contrastive`` (label-free): the inference descriptor (optional whitening, the release's
  normalisation, attention-weighted mean, L2) of two augmented views of one photo must be
  nearer to each other than to the other photos of the batch (InfoNCE, temperature ``tau``).
  Any folder of photos is training data.
* ``landmark`` (retrieval on landmark labels, :mod:`landmark_train`): the inference descriptor
  of full photos at longest side ``max_side`` and of photos pasted into ImageNet backgrounds,
  supervised contrastive loss over ``P`` landmarks x ``K`` photos, validation = retrieval mAP
  on landmarks the training never saw.

Optional prior towards uniform weights: ``uniform_prior * KL(p || uniform)`` with
``p = phi / sum(phi)`` over the real regions. Held-out split, validation every epoch, early
stopping on the validation metric; the best epoch's attention is written in the release format
(``conv_att_1.weight [64, in, 1]`` ...), which ``regatt export --attention-weights`` reads.
Shapes: ``B`` views, ``R`` region slots, ``C`` channels.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .augment import ViewSpec, make_view
from .backbones import build_backbone, get_spec
from .datasets import DataError, Item, labelled_images, list_images, split_items
from .encoder import RegionalAttentionEncoder
from .featcache import FeatureCache, backbone_features, cache_key, pool_regions, weights_fact
from .head import Attention, Whitening, release_normalize
from .official import attention_state, load_whitening_file

OBJECTIVES = ("classify", "contrastive", "landmark")
OPTIMIZERS = ("sgd", "adam")
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (also its fingerprint for ``--resume``)."""

    data: str
    output: str
    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    variant: str = "context"
    objective: str = "classify"
    levels: int = 5
    crop: int = 224
    short_min: int = 240
    short_max: int = 288
    views: int = 2
    epochs: int = 10
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-5
    batch: int = 4
    accumulate: int = 4
    val_fraction: float = 0.1
    patience: int = 3
    uniform_prior: float = 0.0
    temperature: float = 0.1
    whitening: str | None = None
    seed: int = 0
    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    threads: int = 1
    extra_data: tuple[str, ...] = ()  # more folders of labelled photos (classify / contrastive)
    optimizer: str = "sgd"
    # landmark objective
    max_side: int = 512  # the default model's S
    backgrounds: str | None = None
    clutter_min: float = 0.35
    clutter_max: float = 0.65
    per_landmark: int = 4
    train_landmarks: tuple[str, ...] | None = None
    val_landmarks: tuple[str, ...] | None = None

    def fingerprint(self) -> str:
        d = asdict(self)
        for k in ("epochs", "cache_dir", "checkpoint_dir", "threads", "output", "patience"):
            d.pop(k)
        return json.dumps(d, sort_keys=True)


@dataclass
class TrainResult:
    """What a run did: per-epoch history, timing, cache use, where the weights went."""

    output: str
    best_epoch: int
    best_metric: float
    metric: str
    baseline_metric: float
    history: list[dict]
    feature_s: float
    views_computed: int
    views_loaded: int
    epoch_head_s: float
    total_s: float
    baseline_detail: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _check(cfg: TrainConfig) -> None:
    if cfg.objective not in OBJECTIVES:
        raise DataError(f"objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
    if cfg.variant not in ("context", "regional"):
        raise DataError(f"attention variant must be context or regional to train, got {cfg.variant!r}")
    if cfg.views < (2 if cfg.objective == "contrastive" else 1):
        raise DataError(f"--views must be >= {2 if cfg.objective == 'contrastive' else 1} for {cfg.objective}")
    if cfg.epochs < 1 or cfg.batch < 1 or cfg.accumulate < 1:
        raise DataError("epochs, batch and accumulate must be >= 1")
    if cfg.objective == "contrastive" and cfg.batch < 2:
        raise DataError("the contrastive objective needs --batch >= 2 (other photos are the negatives)")
    if cfg.optimizer not in OPTIMIZERS:
        raise DataError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.objective == "landmark" and (cfg.per_landmark < 2 or cfg.batch < 2 * cfg.per_landmark):
        raise DataError(
            "the landmark objective needs --per-landmark >= 2 and --batch >= 2 x per-landmark (two landmarks per batch)"
        )
    if cfg.objective != "landmark" and (cfg.backgrounds or cfg.train_landmarks or cfg.val_landmarks):
        raise DataError("--backgrounds / --train-landmarks / --val-landmarks are options of --objective landmark")


class _Views:
    """Regional pooling of cached feature maps, computed once and kept in RAM (float16):
    ``rmax (B, R, C)``, ``rmean (B, R, C)``, ``gmean (B, C)`` over the ``R`` real regions of
    the ``crop x crop`` views; row ``image * views + view``."""

    def __init__(self, cache: FeatureCache, encoder, items: list[Item], views: int, side: int, progress):
        pairs = [(it, v) for it in items for v in range(views)]
        rmax, rmean, gmean = [], [], []
        chunk: list[np.ndarray] = []

        def flush() -> None:
            a, m, g = pool_regions(encoder, torch.from_numpy(np.stack(chunk)), side, side)
            rmax.append(a.half())
            rmean.append(m.half())
            gmean.append(g.half())
            chunk.clear()

        for i, pair in enumerate(pairs):
            chunk.append(cache.get(*pair))
            if len(chunk) == 32:
                flush()
            if progress is not None:
                progress(i + 1, len(pairs))
        if chunk:
            flush()
        self.rmax, self.rmean, self.gmean = torch.cat(rmax), torch.cat(rmean), torch.cat(gmean)
        self.map_shape = tuple(cache.get(*pairs[0]).shape)
        self.views = views

    def batch(self, image_idx: torch.Tensor, view_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = image_idx * self.views + view_idx
        return self.rmax[rows].float(), self.rmean[rows].float(), self.gmean[rows].float()


def _uniform_kl(phi: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(phi / sum phi || uniform)``. ``phi (B, R)`` (real regions)."""
    w = phi
    p = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean() + math.log(w.shape[1])


class Trainer:
    """Holds the frozen encoder, the attention being trained and the cached views."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print, progress=None):
        _check(cfg)
        self.cfg = cfg
        self.log = log
        self.progress = progress
        torch.manual_seed(cfg.seed)
        spec = get_spec(cfg.backbone)
        backbone = build_backbone(cfg.backbone, cfg.weights)
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.attention = Attention(spec.channels, cfg.variant)  # seeded init
        whitening: Whitening | None = None
        wh_file = cfg.whitening
        if cfg.whitening and cfg.objective == "classify":
            raise DataError(
                "--whitening is used by the contrastive and landmark objectives only (the paper's loss has no PCA)"
            )
        if cfg.objective == "landmark" and wh_file is None:
            from .build import EncoderConfig, default_assets

            wh_file = default_assets(EncoderConfig(backbone=cfg.backbone, weights=cfg.weights)).get("whitening")
            if wh_file is not None and cfg.weights is None:
                self.log(f"whitening: the default's {Path(wh_file).name} (as at inference)")
            else:
                wh_file = None
        if wh_file:
            whitening = load_whitening_file(wh_file, spec.channels)
        self.encoder = RegionalAttentionEncoder(backbone, spec, self.attention, whitening, cfg.levels).eval()
        self.fc = None
        if cfg.objective == "classify":
            fc = getattr(backbone, "classifier", None)
            if fc is None:
                raise DataError(f"backbone {cfg.backbone} has no ImageNet classifier to train against")
            self.fc = fc
            items = [
                it
                for folder in (cfg.data, *cfg.extra_data)
                for it in _prefixed(labelled_images(folder, fc.out_features), folder, cfg.extra_data)
            ]
        elif cfg.objective == "contrastive":
            items = [
                it
                for folder in (cfg.data, *cfg.extra_data)
                for it in _prefixed(list_images(folder), folder, cfg.extra_data)
            ]
        self.metric_name = {"classify": "val_top1", "contrastive": "val_instance_top1", "landmark": "val_map"}[
            cfg.objective
        ]
        if cfg.objective == "landmark":
            self.cache = None
            return
        self.train_items, self.val_items = split_items(items, cfg.val_fraction, cfg.seed)
        if cfg.objective == "contrastive" and len(self.val_items) == 1:
            raise DataError("a contrastive validation split needs >= 2 photos (raise --val-fraction or add photos)")
        self.view_spec = ViewSpec(cfg.crop, cfg.short_min, cfg.short_max)
        from regatt_sdk.imageio import read_image

        def producer(item: Item, view: int) -> np.ndarray:
            return make_view(read_image(item.path), self.view_spec, cfg.seed, _stable_index(item), view)

        key = cache_key(
            backbone=cfg.backbone,
            weights=weights_fact(cfg.weights),
            view=asdict(self.view_spec),
            seed=cfg.seed,
            kind="train-views",
        )
        self.cache = FeatureCache(cfg.cache_dir, key, producer, backbone_features(self.encoder), "float16")

    def load_views(self) -> None:
        cfg = self.cfg
        if cfg.objective == "landmark":
            from .landmark_train import LandmarkData

            self.landmark = LandmarkData(cfg, self.encoder, _stable_index, self.log, self._bar)
            self.train_items, self.val_items = self.landmark.train_items, self.landmark.val_items
            self.val_views = self.landmark.val
            self.feature_s = self.landmark.feature_s
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            self.train_views = _Views(
                self.cache, self.encoder, self.train_items, cfg.views, cfg.crop, self._bar("features (train)")
            )
            val_views = 2 if cfg.objective == "contrastive" else 1
            self.val_views = (
                _Views(self.cache, self.encoder, self.val_items, val_views, cfg.crop, self._bar("features (val)"))
                if self.val_items
                else None
            )
        self.feature_s = time.perf_counter() - t0
        self.n_regions = self.train_views.rmax.shape[1]
        st = self.cache.stats
        self.log(
            f"feature maps: {st.computed} computed ({st.compute_per_view_s:.3f} s each), {st.loaded} read from the cache; "
            f"{self.train_views.rmax.shape[0]} training views of {self.train_views.map_shape}, {self.n_regions} regions each"
        )

    def _bar(self, label: str):
        if self.progress is None:
            return None
        return lambda done, total: self.progress(label, done, total)

    # -- the two objectives ------------------------------------------------------------
    def _phi(self, rmean: torch.Tensor, gmean: torch.Tensor, uniform: bool = False) -> torch.Tensor:
        if uniform:
            return torch.ones(rmean.shape[:2])
        return self.attention(rmean, gmean)

    def logits(self, pooled, uniform: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rmax, rmean (B, R, C), gmean (B, C))`` -> ``(logits (B, K), phi (B, R))``: the
        paper's forward, weighted mean of the raw regional max vectors through ``fc``."""
        rmax, rmean, gmean = pooled
        phi = self._phi(rmean, gmean, uniform)
        g = (phi[..., None] * rmax).mean(dim=1)
        return self.fc(g), phi

    def descriptor(self, pooled, uniform: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rmax, rmean, gmean)`` -> ``(unit descriptors (B, D), phi (B, R))`` as at inference
        (the final max-then-L2 normalisation equals L2 up to a positive scale)."""
        rmax, rmean, gmean = pooled
        v = self.encoder.whitening(rmax) if self.encoder.whitening is not None else rmax
        phi = self._phi(rmean, gmean, uniform)
        g = (phi[..., None] * release_normalize(v)).mean(dim=1)
        return F.normalize(g, dim=-1), phi

    def _loss(self, idx: torch.Tensor, gen: torch.Tensor | torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        if cfg.objective == "landmark":
            return self.landmark.loss(self.attention, idx, gen, cfg.temperature, cfg.uniform_prior)
        if cfg.objective == "classify":
            views = torch.randint(0, cfg.views, (len(idx),), generator=gen)
            logits, phi = self.logits(self.train_views.batch(idx, views))
            labels = torch.tensor([self.train_items[i].label for i in idx.tolist()])
            loss = F.cross_entropy(logits, labels)
        else:
            a = torch.randint(0, cfg.views, (len(idx),), generator=gen)
            b = (a + torch.randint(1, cfg.views, (len(idx),), generator=gen)) % cfg.views
            da, phi_a = self.descriptor(self.train_views.batch(idx, a))
            db, phi_b = self.descriptor(self.train_views.batch(idx, b))
            sim = da @ db.t() / cfg.temperature
            target = torch.arange(len(idx))
            loss = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))
            phi = torch.cat([phi_a, phi_b])
        if cfg.uniform_prior > 0:
            loss = loss + cfg.uniform_prior * _uniform_kl(phi)
        return loss

    @torch.no_grad()
    def validate(self, uniform: bool = False) -> dict[str, float]:
        """Held-out metric: top-1 accuracy (classify) or instance top-1 between two views
        (contrastive); plus the weights' spread (max/mean of phi)."""
        if self.cfg.objective == "landmark":
            return self.landmark.validate(self.attention, self.cfg.temperature, uniform)
        if self.val_views is None:
            return {"val": float("nan"), "loss": float("nan"), "peak": float("nan")}
        n = len(self.val_items)
        idx = torch.arange(n)
        if self.cfg.objective == "classify":
            correct, loss, peaks = 0, 0.0, []
            for s in range(0, n, 64):
                b = idx[s : s + 64]
                logits, phi = self.logits(self.val_views.batch(b, torch.zeros_like(b)), uniform)
                labels = torch.tensor([self.val_items[i].label for i in b.tolist()])
                correct += int((logits.argmax(1) == labels).sum())
                loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                peaks.append(phi.amax(1) / phi.mean(1))
            return {"val": correct / n, "loss": loss / n, "peak": float(torch.cat(peaks).mean())}
        da, phi = self.descriptor(self.val_views.batch(idx, torch.zeros_like(idx)), uniform)
        db, _ = self.descriptor(self.val_views.batch(idx, torch.ones_like(idx)), uniform)
        sim = da @ db.t()
        top1 = float((sim.argmax(1) == idx).float().mean())
        loss = float(F.cross_entropy(sim / self.cfg.temperature, idx))
        return {"val": top1, "loss": loss, "peak": float((phi.amax(1) / phi.mean(1)).mean())}

    def fit(self, resume: bool = False) -> TrainResult:
        """Train with SGD + gradient accumulation; early stopping on the validation metric."""
        cfg = self.cfg
        t_start = time.perf_counter()
        torch.set_num_threads(cfg.threads)
        self.load_views()
        params = list(self.attention.parameters())
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else Path(cfg.output).with_suffix(".ckpt")
        ckpt_path = ckpt_dir / CHECKPOINT
        start_epoch, history = 1, []
        uniform_val = self.validate(uniform=True)
        baseline = uniform_val["val"]
        initial = self.validate()
        best = {"epoch": 0, "metric": initial["val"], "loss": initial["loss"], "state": attention_state(self.attention)}
        metric_name = self.metric_name
        self.log(
            f"{metric_name}: uniform weights {baseline:.4f}, initial attention {best['metric']:.4f}{_extras(uniform_val)}"
        )
        if resume:
            start_epoch, history, best = self._restore(ckpt_path, opt)
        n = len(self.train_items)
        step_batch = cfg.batch
        head_times = []
        stale = history[-1]["epoch"] - best["epoch"] if history else 0
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stale >= cfg.patience:
                self.log(f"early stop: no better {metric_name} for {cfg.patience} epochs")
                break
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            if cfg.objective == "landmark":
                batches = self.landmark.batches(gen, cfg.batch, cfg.per_landmark)
            else:
                order = torch.randperm(n, generator=gen)
                batches = [order[s * step_batch : (s + 1) * step_batch] for s in range(math.ceil(n / step_batch))]
            steps = len(batches)
            total, opt_steps = 0.0, 0
            opt.zero_grad(set_to_none=True)
            self.attention.train()
            for s, idx in enumerate(batches):
                if cfg.objective == "contrastive" and len(idx) < 2:
                    continue
                loss = self._loss(idx, gen)
                (loss / cfg.accumulate).backward()
                total += float(loss.detach())
                if (s + 1) % cfg.accumulate == 0 or s == steps - 1:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    opt_steps += 1
                if self.progress is not None:
                    self.progress(f"epoch {epoch}/{cfg.epochs}", s + 1, steps)
            self.attention.eval()
            head_times.append(time.perf_counter() - t0)
            val = self.validate()
            row = {
                "epoch": epoch,
                "loss": total / steps,
                metric_name: val["val"],
                "val_loss": val["loss"],
                "peak": val["peak"],
                "s": head_times[-1],
            }
            row.update({k: v for k, v in val.items() if k.endswith("_map")})
            history.append(row)
            # better = higher metric, ties broken by a lower validation loss
            better = (val["val"], -val["loss"]) > (best["metric"], -best["loss"])
            if better or self.val_views is None:
                best = {
                    "epoch": epoch,
                    "metric": val["val"],
                    "loss": val["loss"],
                    "state": attention_state(self.attention),
                }
                stale = 0
            else:
                stale += 1
            self.log(
                f"epoch {epoch}: loss {row['loss']:.4f}  {metric_name} {val['val']:.4f}{_extras(val)}  val loss {val['loss']:.4f}  weight peak/mean {val['peak']:.2f}  "
                f"({head_times[-1]:.1f} s){'  *best' if best['epoch'] == epoch else ''}"
            )
            self._save(ckpt_path, opt, epoch, history, best)
        if best["epoch"] == 0:
            self.log(f"no epoch beat the initial (random) attention on {metric_name}: writing the initial weights")
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(best["state"], out)
        st = self.cache.stats if self.cache is not None else _merged_stats(self.landmark)
        result = TrainResult(
            output=str(out),
            best_epoch=best["epoch"],
            best_metric=best["metric"],
            metric=metric_name,
            baseline_metric=baseline,
            history=history,
            feature_s=self.feature_s,
            views_computed=st.computed,
            views_loaded=st.loaded,
            epoch_head_s=float(np.mean(head_times)) if head_times else float("nan"),
            total_s=time.perf_counter() - t_start,
            baseline_detail={k: v for k, v in uniform_val.items() if k.endswith("_map")},
        )
        out.with_suffix(".json").write_text(json.dumps({"config": asdict(cfg), "result": result.to_json()}, indent=1))
        return result

    def _save(self, path: Path, opt, epoch: int, history: list[dict], best: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "fingerprint": self.cfg.fingerprint(),
            "epoch": epoch,
            "attention": attention_state(self.attention),
            "optimizer": opt.state_dict(),
            "history": json.dumps(history),
            "best_epoch": best["epoch"],
            "best_metric": best["metric"],
            "best_loss": best["loss"],
            "best_state": best["state"],
        }
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)

    def _restore(self, path: Path, opt) -> tuple[int, list[dict], dict]:
        if not path.is_file():
            raise DataError(f"--resume: no checkpoint at {path}")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("fingerprint") != self.cfg.fingerprint():
            raise DataError(f"--resume: {path} was written by a run with other settings")
        from .official import attention_from_state

        restored = attention_from_state(blob["attention"], self.attention.channels, self.cfg.variant, str(path))
        self.attention.load_state_dict(restored.state_dict())
        opt.load_state_dict(blob["optimizer"])
        history = json.loads(blob["history"])
        best = {
            "epoch": int(blob["best_epoch"]),
            "metric": float(blob["best_metric"]),
            "loss": float(blob["best_loss"]),
            "state": blob["best_state"],
        }
        self.log(f"resumed from {path} after epoch {blob['epoch']}")
        return int(blob["epoch"]) + 1, history, best


def _extras(val: dict) -> str:
    """``  (clean_map 0.81, clutter_map 0.55)`` for the landmark objective, else empty."""
    parts = [f"{k} {v:.4f}" for k, v in val.items() if k.endswith("_map")]
    return f" ({', '.join(parts)})" if parts else ""


def _merged_stats(data) -> object:
    from .featcache import CacheStats

    a, b = data.clean.stats, data.clutter.stats
    return CacheStats(a.computed + b.computed, a.loaded + b.loaded, a.compute_s + b.compute_s, a.load_s + b.load_s)


def _prefixed(items: list[Item], folder: str, extra: tuple[str, ...]) -> list[Item]:
    """With several data folders, names carry the folder's name so that they stay unique."""
    if not extra:
        return items
    tag = Path(folder).name
    return [Item(it.path, f"{tag}/{it.name}", it.label) for it in items]


def _stable_index(item: Item) -> int:
    """A per-image integer for seeding its views, stable across splits and folders."""
    import zlib

    return zlib.crc32(item.name.encode())


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print, progress=None) -> TrainResult:
    """Run :class:`Trainer` end to end; see the module docstring."""
    return Trainer(cfg, log, progress).fit(resume=resume)
