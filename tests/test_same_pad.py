"""Dynamic TF-SAME padding: equal to timm's Conv2dSame at every size, in eager and in ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnx_trace import dynamic_hw_onnx
from regatt_export.backbones.same_pad import SamePadConv2d, replace_same_convs, same_pad_2d

timm_layers = pytest.importorskip("timm.layers")


@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), (3, 1), (5, 1), (1, 1)])
def test_matches_timm_conv2d_same_at_every_parity(kernel, stride):
    torch.manual_seed(kernel * 10 + stride)
    ref = timm_layers.Conv2dSame(4, 6, kernel, stride=stride, groups=2).eval()
    mine = SamePadConv2d(ref).eval()
    for h, w in [(7, 7), (8, 8), (7, 8), (8, 7), (1, 1), (2, 3), (33, 18)]:
        x = torch.randn(2, 4, h, w)
        with torch.no_grad():
            torch.testing.assert_close(mine(x), ref(x), rtol=0, atol=0)


def test_padding_amounts_follow_tensorflow():
    # TF SAME, stride 2, kernel 3: even length pads (0, 1), odd pads (1, 1)
    x = torch.ones(1, 1, 6, 7)
    y = same_pad_2d(x, (3, 3), (2, 2), (1, 1))
    assert tuple(y.shape) == (1, 1, 7, 9)
    assert y[0, 0, :, 0].sum() == 0 and y[0, 0, 0, :].sum() > 0  # odd width pads left, even height does not pad top
    assert y[0, 0, -1, :].sum() == 0 and y[0, 0, :, -1].sum() == 0


def test_gradient_flows_through_the_padding():
    ref = timm_layers.Conv2dSame(2, 3, 3, stride=2)
    mine = SamePadConv2d(ref)
    x1 = torch.randn(1, 2, 9, 10, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ref(x1).square().sum().backward()
    mine(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_onnx_export_is_one_dynamic_pad_and_exact_at_untraced_sizes():
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from regatt_sdk.engines.ort import create_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        timm_layers.Conv2dSame(3, 8, 3, stride=2), torch.nn.ReLU(), timm_layers.Conv2dSame(8, 8, 5, stride=2, groups=8)
    )
    assert replace_same_convs(net) == 2
    net.eval()
    data = dynamic_hw_onnx(net)
    model = onnx.load_from_string(data)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Pad") == 2
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert all(producers.get(n.input[0]) == "Shape" for n in gathers), "a Gather on the data path"
    sess = create_session(data, providers=["CPUExecutionProvider"])
    for h, w in [(32, 32), (31, 17), (8, 45), (1, 1), (64, 3)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            want = net(x).numpy()
        got = sess.run(None, {"x": x.numpy()})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
