"""A minimal ONNX protobuf writer for one-node graphs (no ``onnx`` package needed).

Only what the GEMM probes need: a ``ModelProto`` with graph inputs/outputs of fixed
shapes and a single node. Field numbers are those of ``onnx.proto``.
"""

from __future__ import annotations

FLOAT = 1  # TensorProto.FLOAT
UINT8 = 2  # TensorProto.UINT8
INT8 = 3  # TensorProto.INT8
INT32 = 6  # TensorProto.INT32
IR_VERSION = 8
OPSET = 17


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _field_str(field: int, text: str) -> bytes:
    return _field_bytes(field, text.encode())


def value_info(name: str, shape: tuple[int, ...], elem_type: int = FLOAT) -> bytes:
    """``ValueInfoProto`` of a tensor with a fixed shape."""
    dims = b"".join(_field_bytes(1, _field_varint(1, d)) for d in shape)  # Dimension.dim_value
    tensor_type = _field_varint(1, elem_type) + _field_bytes(2, dims)  # elem_type, shape
    return _field_str(1, name) + _field_bytes(2, _field_bytes(1, tensor_type))


def node(op_type: str, inputs: list[str], outputs: list[str], name: str = "") -> bytes:
    """``NodeProto`` without attributes."""
    body = b"".join(_field_str(1, i) for i in inputs) + b"".join(_field_str(2, o) for o in outputs)
    return body + _field_str(3, name or op_type) + _field_str(4, op_type)


def model(nodes: list[bytes], inputs: list[bytes], outputs: list[bytes], name: str = "graph") -> bytes:
    """Serialized ``ModelProto`` (default domain, opset :data:`OPSET`)."""
    graph = b"".join(_field_bytes(1, n) for n in nodes) + _field_str(2, name)
    graph += b"".join(_field_bytes(11, i) for i in inputs) + b"".join(_field_bytes(12, o) for o in outputs)
    opset = _field_str(1, "") + _field_varint(2, OPSET)
    return (
        _field_varint(1, IR_VERSION) + _field_str(2, "regatt-bench") + _field_bytes(7, graph) + _field_bytes(8, opset)
    )


def matmul_model(m: int, k: int, n: int) -> bytes:
    """``C (m, n) = A (m, k) @ B (k, n)``, all float32 graph inputs."""
    return model(
        [node("MatMul", ["A", "B"], ["C"])],
        [value_info("A", (m, k)), value_info("B", (k, n))],
        [value_info("C", (m, n))],
        name="gemm_probe",
    )


def matmul_integer_model(m: int, k: int, n: int) -> bytes:
    """``C (m, n) int32 = A (m, k) uint8 @ B (k, n) int8`` (``MatMulInteger``, zero points 0)."""
    return model(
        [node("MatMulInteger", ["A", "B"], ["C"])],
        [value_info("A", (m, k), UINT8), value_info("B", (k, n), INT8)],
        [value_info("C", (m, n), INT32)],
        name="gemm_int8_probe",
    )
