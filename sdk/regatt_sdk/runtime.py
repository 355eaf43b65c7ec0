"""onnxruntime session creation: providers, CUDA options for varying image sizes, threads,
and an explicit check that the provider asked for is the one running."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .errors import MissingExtraError, ModelError


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", "cpu", "running a model") from None
    return ort


def cpu_count() -> int:
    """CPUs this process may use: affinity mask and cgroup CPU quota, whichever is smaller."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    return max(1, min(n, quota) if quota else n)


def _cgroup_cpu_limit() -> int | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return max(1, int(int(text[0]) / int(text[1]) + 0.5))
    except (OSError, ValueError, IndexError):
        return None
    return None


def cuda_provider_options() -> dict[str, Any]:
    """CUDA options suited to images of many sizes: heuristic cuDNN algorithm search (no
    exhaustive benchmark per new shape) and an arena that grows only by what is requested."""
    return {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }


def choose_providers(device: str) -> list[Any]:
    ort = import_ort()
    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda", "tensorrt"):
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or tensorrt")
    providers: list[Any] = []
    if device == "tensorrt" or (device == "auto" and "TensorrtExecutionProvider" in available):
        if "TensorrtExecutionProvider" in available:
            cache = os.environ.get("REGATT_TRT_CACHE", str(Path.home() / ".cache" / "regatt" / "trt"))
            providers.append(
                ("TensorrtExecutionProvider", {"trt_engine_cache_enable": "1", "trt_engine_cache_path": cache})
            )
    if device in ("cuda", "tensorrt") or (device == "auto" and "CUDAExecutionProvider" in available):
        providers.append(("CUDAExecutionProvider", cuda_provider_options()))
    providers.append("CPUExecutionProvider")
    return providers


def create_session(model_path: str | Path, device: str = "auto", threads: int | None = None):
    """An ``InferenceSession`` for ``model_path``; warns (with the fix) if CUDA fell back to CPU."""
    ort = import_ort()
    path = Path(model_path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found (make one with  regatt export -o {path})")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or cpu_count()
    opts.log_severity_level = 3
    providers = choose_providers(device)
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    asked = [p[0] if isinstance(p, tuple) else p for p in providers]
    running = sess.get_providers()
    if device in ("cuda", "tensorrt") and asked[0] not in running:
        message = (
            f"{asked[0]} was requested but onnxruntime runs on {running}: "
            + fallback_reason(ort)
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return sess


def fallback_reason(ort) -> str:
    """Why CUDA is not running, and how to fix it."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return (
            "this onnxruntime build has no CUDA provider. Install the GPU build instead of the CPU one: "
            "pip uninstall -y onnxruntime && pip install 'regatt[gpu]'"
        )
    return (
        "the CUDA provider is built in but could not start (CUDA/cuDNN libraries not found or no GPU visible). "
        "Run  regatt doctor  to see which libraries are missing."
    )


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def runs_on_gpu(session) -> bool:
    """True when ``session``'s first provider is CUDA or TensorRT (the IO-binding path pays)."""
    providers = session.get_providers()
    return bool(providers) and providers[0] in GPU_PROVIDERS


def run_bound(session, input_name: str, feed, output_name: str):
    """Run with IO binding: ``feed`` is uploaded once to the session's device and the output is
    bound on the host, so no intermediate host copies or per-run allocations of the input."""
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, feed)
    binding.bind_output(output_name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]
