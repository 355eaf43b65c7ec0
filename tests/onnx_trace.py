"""Tracing small test networks to ONNX (torch imported when called: runtime tests never do)."""

from __future__ import annotations

import io


def dynamic_hw_onnx(net) -> bytes:
    """``net`` (an image network on ``(N, 3, H, W)`` float32) as ONNX bytes: input ``x`` with
    dynamic H and W, output ``y``, opset 17, traced once at ``torch.randn(1, 3, 32, 32)`` (drawn
    from torch's global generator, so a seeded caller gets the same file)."""
    import torch

    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 32, 32),),
        buf,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {2: "h", 3: "w"}},
        opset_version=17,
        dynamo=False,
    )
    return buf.getvalue()
