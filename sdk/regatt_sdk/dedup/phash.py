"""A 64-bit DCT perceptual hash (the classic pHash construction), written for this project.

The image goes to grey, is resized to 32 x 32 with area averaging, and its 2-D DCT-II is taken;
the 8 x 8 lowest frequencies (including the DC term's row and column, the DC term itself
excluded from the median) are compared with their median: one bit per coefficient, packed
row-major, most significant bit first, into one ``uint64``. Similar pictures differ in few bits.

Shapes: one image BGR or grey uint8 ``(H, W[, 3])`` -> ``np.uint64``; ``hashes`` ``(N,)`` uint64.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_BITS = 64
_SIDE = 32
_LOW = 8


def phash(image: np.ndarray) -> np.uint64:
    """The 64-bit perceptual hash of a BGR or grey uint8 image ``(H, W[, 3])``."""
    if image.ndim == 3:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 2:
        grey = image
    else:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    small = cv2.resize(grey, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:_LOW, :_LOW].reshape(-1)
    median = np.median(low[1:])  # the DC term is the mean brightness: kept out of the median
    bits = (low > median).astype(np.uint8)
    return np.uint64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each ``uint64`` in ``x`` (any shape) -> same shape ``int64``."""
    x = np.asarray(x, dtype=np.uint64)
    return np.unpackbits(x.reshape(-1, 1).view(np.uint8), axis=1).sum(1).reshape(x.shape).astype(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between ``uint64`` hashes ``a`` and ``b`` (broadcast)."""
    return popcount64(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


def hash_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - hamming / 64`` in [0, 1] (float32), broadcast like :func:`hamming`."""
    return (1.0 - hamming(a, b) / HASH_BITS).astype(np.float32)
