"""The composition layer: the one way every front end (CLI commands, the server, the Ray actors,
the bench) builds an :class:`~regatt_sdk.encoder.Encoder` and opens a feature store.

- :class:`EncoderOptions`: what configures an encoder (device, engine, precision, memory plan,
  threads, max side S, query scales), checked when made; :func:`open_encoder` builds the
  encoder from them. An option is honoured by every front end or refused with a message.
- :func:`check_compatible` / :func:`open_store`: the one rule between a model and a store (or
  ANN index, or table): made by this model (its card hash, or the card's hash before tool
  versions left it, :meth:`~regatt_sdk.card.ModelCard.matches`) and of its dimension, else a
  :class:`~regatt_sdk.store.StoreError`.
- :func:`parse_roi` (``"x1,y1,x2,y2"``) and :func:`resolve_image` (a store row's file).

``tests/test_composition.py`` checks that no front end builds an ``Encoder`` or opens a
``FeatureStore`` except through this module and :mod:`regatt_sdk.collection`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .engines.choose import CHOICES as ENGINES  # engine names (None: the device's engine)
from .engines.choose import PRECISION_CHOICES as PRECISIONS  # auto + compute precisions (INT8/fp16: files)
from .errors import RegattError

if TYPE_CHECKING:
    from .card import ModelCard
    from .encoder import Encoder
    from .store import FeatureStore

log = logging.getLogger(__name__)

Roi = tuple[float, float, float, float]
ScalesSpec = Union[str, float, tuple[float, ...], None]

#: the smallest longest side S an encoder accepts
MIN_MAX_SIDE = 16


class OptionError(RegattError):
    """An encoder option with a value no engine accepts, or one a front end cannot honour."""


class RoiError(RegattError):
    """A region of interest that is not ``x1,y1,x2,y2`` with ``x1 < x2`` and ``y1 < y2``."""


@dataclass(frozen=True)
class EncoderOptions:
    """Everything that configures an :class:`~regatt_sdk.encoder.Encoder` besides the model.

    ``device``: any form :func:`regatt_sdk.engines.parse_device` accepts; ``engine``:
    ``onnxruntime``, ``openvino``, ``auto`` or ``None`` (the device's engine); ``precision``:
    ``fp32``, ``bf16`` or ``auto`` (the fastest variant that passes the retrieval gate here);
    ``memory``: the onnxruntime memory plan (``pattern``, ``arena``, ``lean``); ``threads``: inference threads (``None``: the engine's default); ``max_side``: S
    (``None``: the model card's); ``query_scales``: multiples of S queries are described at
    (``None``: as the database). Values are checked when the options are made
    (:class:`OptionError`); whether the engine runs this model here is checked (gated) when the
    encoder opens.
    """

    device: str = "auto"
    engine: str | None = None
    precision: str = "fp32"
    memory: str = "pattern"
    threads: int | None = None
    max_side: int | None = None
    query_scales: ScalesSpec = None

    def __post_init__(self) -> None:
        from .engines import parse_device
        from .engines.ort import MEMORY_PLANS

        parse_device(self.device)  # raises with the accepted forms
        if self.engine is not None and self.engine not in ENGINES:
            raise OptionError(f"unknown engine {self.engine!r}: use {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise OptionError(
                f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)} "
                "(INT8 and fp16 are separate files: regatt export --int8 / --fp16)"
            )
        if self.memory not in MEMORY_PLANS:
            raise OptionError(f"unknown memory plan {self.memory!r}: use {', '.join(MEMORY_PLANS)}")
        if self.threads is not None and int(self.threads) < 1:
            raise OptionError(f"threads must be at least 1, got {self.threads}")
        if self.max_side is not None and int(self.max_side) < MIN_MAX_SIDE:
            raise OptionError(f"max side {self.max_side} is too small: use at least {MIN_MAX_SIDE}")

    def replace(self, **changes: Any) -> EncoderOptions:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """``{field: value}`` (e.g. to pass the options to another process)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def encoder_kwargs(self) -> dict[str, Any]:
        """The :class:`~regatt_sdk.encoder.Encoder` keywords these options stand for."""
        kwargs: dict[str, Any] = {
            "device": self.device,
            "max_side": self.max_side,
            "threads": self.threads,
            "engine": self.engine,
            "precision": self.precision,
            "memory": self.memory,
        }
        if self.query_scales is not None:
            kwargs["query_scales"] = self.query_scales
        return kwargs

    @property
    def non_default(self) -> dict[str, Any]:
        """The fields set to something other than their defaults (for messages)."""
        base = EncoderOptions()
        return {k: v for k, v in self.as_dict().items() if v != getattr(base, k)}


def open_encoder(model: str | os.PathLike, options: EncoderOptions | None = None) -> Encoder:
    """The :class:`~regatt_sdk.encoder.Encoder` of ``model`` with ``options`` (default: all
    defaults). Raises :class:`~regatt_sdk.errors.ModelError` for a missing or card-less model
    and when the engine/precision asked for fails its gate here."""
    from .encoder import Encoder

    options = options or EncoderOptions()
    encoder = Encoder(model, **options.encoder_kwargs())
    if log.isEnabledFor(logging.INFO):
        d = encoder.engine.describe()
        why = f" ({encoder.choice.reason})" if encoder.choice is not None and encoder.choice.reason else ""
        log.info(
            "%s: %s %s on %s%s, threads %s, S=%d (prepared at %d), card %s",
            model, d.get("engine"), d.get("version", ""), d.get("device"), why, d.get("threads"),
            encoder.max_side, encoder.prepare_side, encoder.card.hash,
        )  # fmt: skip
    return encoder


# -- one rule between a model and a store ----------------------------------------------------
def check_compatible(card: ModelCard, card_hash: str, dim: int, what: str, model: object = None) -> None:
    """Refuse (:class:`~regatt_sdk.store.StoreError`) a store, index or table ``what`` recording
    ``card_hash`` and ``dim`` that this model (``card``, file ``model``) did not make."""
    from .store import StoreError

    if not card.matches(card_hash):
        held = f"; it holds {dim}-d descriptors" if int(dim) != int(card.dim) else ""
        raise StoreError(
            f"{what} was made with another model (card {card_hash}{held}) than {model or 'this one'} "
            f"(card {card.hash}, {card.dim}-d): use the model that made it, or encode the images again"
        )
    if int(dim) != int(card.dim):  # same card, another dimension: a damaged manifest
        raise StoreError(f"{what} holds {dim}-d descriptors but {model or 'the model'} gives {card.dim}-d")


def open_store(
    path: str | os.PathLike, model: Encoder | ModelCard | None = None, *, allow_empty: bool = False
) -> FeatureStore:
    """The feature store at ``path``, read-only, checked against ``model`` (an encoder or a
    card: :func:`check_compatible`) and, unless ``allow_empty``, holding at least one row."""
    from .card import ModelCard
    from .store import FeatureStore, StoreError

    store = FeatureStore.open(Path(path))
    log.debug("%s: %d rows x %d, card %s", path, store.count, store.dim, store.card_hash)
    if store.count == 0 and not allow_empty:
        raise StoreError(f"feature store {path} is empty: encode images into it first (regatt encode)")
    if model is not None:
        card = model if isinstance(model, ModelCard) else model.card
        where = model.model_path if not isinstance(model, ModelCard) else None
        check_compatible(card, store.card_hash, store.dim, f"feature store {path}", where)
    return store


def store_card_hash(path: str | os.PathLike) -> str | None:
    """The card hash recorded by the store at ``path`` (``None`` when there is no store yet)."""
    from .store import MANIFEST, FeatureStore

    if not (Path(path) / MANIFEST).exists():
        return None
    return FeatureStore.open(Path(path)).card_hash


class _CardAs:
    """A model card that reports another (compatible) ``hash``: the one a store recorded."""

    def __init__(self, card: ModelCard, card_hash: str):
        self._card = card
        self.hash = card_hash

    def __getattr__(self, name: str) -> Any:
        return getattr(self._card, name)


class _EncoderAs:
    """An encoder whose card reports the hash a store made before the hash change recorded, so
    that the pipeline (which compares hashes exactly) appends to it."""

    def __init__(self, encoder: Encoder, card_hash: str):
        self._encoder = encoder
        self.card = _CardAs(encoder.card, card_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


def encoder_for_store(encoder: Encoder, path: str | os.PathLike) -> Any:
    """``encoder`` as :func:`regatt_sdk.pipeline.encode_to_store` should see it to append to the
    store at ``path``: itself, or (for a store recording this model's legacy hash) a view
    reporting that hash. A store of another model is left for the pipeline to refuse."""
    recorded = store_card_hash(path)
    if recorded is not None and recorded != encoder.card.hash and encoder.card.matches(recorded):
        log.info("%s records this model's legacy card hash %s: appending under it", path, recorded)
        return _EncoderAs(encoder, recorded)
    return encoder


# -- regions of interest, image files ------------------------------------------------------------
def parse_roi(text: str | None, what: str = "--roi") -> Roi | None:
    """``"x1,y1,x2,y2"`` (original pixels; commas or spaces) -> a float box; ``None`` or ``""``
    -> ``None``; anything else raises :class:`RoiError` naming ``what``."""
    if text is None or str(text).strip() == "":
        return None
    parts = [p for p in str(text).replace(" ", ",").split(",") if p]
    try:
        x1, y1, x2, y2 = (float(p) for p in parts)
    except ValueError:
        raise RoiError(
            f"{what} {text!r}: expected four numbers x1,y1,x2,y2 in original pixels, e.g. 10,20,300,400"
        ) from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise RoiError(f"{what} {text!r}: the four numbers must be finite (no inf, no nan)")
    if not (x2 > x1 and y2 > y1):
        raise RoiError(f"{what} {text!r}: need x1 < x2 and y1 < y2")
    return (x1, y1, x2, y2)


#: extensions tried after a store name under an images folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG")


def resolve_image(name: str, images: str | os.PathLike | None = None) -> Path | None:
    """The image file of a store row: the name itself when it is a file, else ``images/name``,
    else ``images/name`` + one of :data:`IMAGE_SUFFIXES`; each also for the file name a displayed
    name's escapes stand for (:func:`regatt_sdk.names.candidates`: a ``--db`` table holds the
    displayed name); ``None`` when none exists."""
    from .names import candidates

    found: list[Path] = []
    for n in candidates(name):
        found.append(Path(n))
        if images is not None:
            root = Path(images)
            found.append(root / n)
            found += [root / f"{n}{ext}" for ext in IMAGE_SUFFIXES]
    return next((c for c in found if c.is_file()), None)
