"""The paper's per-image times (Kim & Yoon, BMVC 2018; SPEC §4), the only cited numbers."""

from __future__ import annotations

#: seconds per image at S = 1024, ResNet-101 off-the-shelf, 2048-d, L = 5, by attention variant
PAPER_TIMES_S: dict[str, float] = {"none": 0.095, "regional": 0.115, "context": 0.123}
#: what the paper's times were measured on (SPEC §4 gives no GPU model)
PAPER_HARDWARE = "the authors' GPU (model not stated in SPEC §4), PyTorch, S=1024"
#: the paper's row names for the three variants
PAPER_ROWS: dict[str, str] = {
    "none": "Baseline R-MAC + PCA",
    "regional": "+ regional attention",
    "context": "+ context awareness",
}
