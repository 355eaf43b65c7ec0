"""The onnxruntime engine: session creation (providers, CUDA options for varying image sizes,
threads), an explicit check that the provider asked for is the one running, and IO binding on
GPUs. The only place in regatt that creates an ``onnxruntime.InferenceSession``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ModelError
from ..optional import require
from .base import NamedIO
from .device import Device, parse_device

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
#: how a session plans its working memory (``memory=``):
#: ``"pattern"``: onnxruntime's default, the CPU arena plus a memory pattern planned per input
#: shape: each run takes one contiguous block for all its tensors, so a new, larger shape or batch
#: extends the arena (in powers of two; it never shrinks) and RSS steps up whenever one first
#: arrives, however late; ``"arena"``: the arena without memory patterns: tensors are allocated one
#: by one from the arena's free chunks, so RSS settles after the first batches whatever the shapes,
#: at the same speed (the server's default); ``"lean"``: neither: each run's buffers go back to
#: malloc, the least memory at rest, about 30 % slower on CPU.
MEMORY_PLANS = ("pattern", "arena", "lean")
#: the onnxruntime config key that lets intra-op worker threads busy-wait for work after a run
SPIN_KEY = "session.intra_op.allow_spinning"
#: whether the Encoder's own sessions spin. Measured (``benchmarks/results/side_by_side.md``, 2
#: cores, default model 384x512, fresh processes): after each run onnxruntime's workers spin
#: ~10-15 ms, so an OpenVINO run right after one in the same process took 1.91x its time alone
#: (fp32; bf16 1.86x) with spinning and 1.10x (bf16 1.17x) without; onnxruntime alone is 8 %
#: slower without spinning (26.2 vs 24.2 ms). Off: engines side by side matter more than 8 %.
#: The SDK's own reference sessions never spin.
ENCODER_SPINNING = False
#: device kind -> the onnxruntime provider it needs
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_ort():
    """``onnxruntime`` or a :class:`MissingExtraError` naming ``pip install 'regatt[cpu]'``."""
    return require("onnxruntime", extra="cpu")


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


def cuda_provider_options(device_id: int | None = None) -> dict[str, Any]:
    """CUDA options suited to images of many sizes: heuristic cuDNN algorithm search (no
    exhaustive benchmark per new shape) and an arena that grows only by what is requested;
    ``device_id`` when a GPU index was given (``cuda:N``)."""
    opts: dict[str, Any] = {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }
    if device_id is not None:
        opts["device_id"] = str(device_id)
    return opts


def tensorrt_provider_options(device_id: int | None = None) -> dict[str, Any]:
    """TensorRT options: an engine cache (``$REGATT_TRT_CACHE``, default ~/.cache/regatt/trt)."""
    cache = os.environ.get("REGATT_TRT_CACHE", str(Path.home() / ".cache" / "regatt" / "trt"))
    opts: dict[str, Any] = {"trt_engine_cache_enable": "1", "trt_engine_cache_path": cache}
    if device_id is not None:
        opts["device_id"] = str(device_id)
    return opts


def choose_providers(device: str | Device, available: Sequence[str] | None = None) -> list[Any]:
    """The onnxruntime ``providers`` list for ``device`` (see :mod:`.device`), best first.

    ``available``: the build's providers (default: asked from onnxruntime). ``auto`` takes
    TensorRT and CUDA when the build has them; ``cuda:N`` / ``tensorrt:N`` pass ``device_id`` N.
    """
    dev = parse_device(device)
    if dev.engine != "onnxruntime":
        raise ModelError(f"device {dev}: not an onnxruntime device (the {dev.engine} engine runs it)")
    if available is None:
        available = import_ort().get_available_providers()
    kind = dev.kind
    providers: list[Any] = []
    if kind == "tensorrt" or (kind == "auto" and "TensorrtExecutionProvider" in available):
        if "TensorrtExecutionProvider" in available:
            providers.append(("TensorrtExecutionProvider", tensorrt_provider_options(dev.index)))
    if kind in ("cuda", "tensorrt") or (kind == "auto" and "CUDAExecutionProvider" in available):
        providers.append(("CUDAExecutionProvider", cuda_provider_options(dev.index)))
    providers.append("CPUExecutionProvider")
    return providers


def check_memory(memory: str) -> str:
    """``memory`` if it is one of :data:`MEMORY_PLANS`, else :class:`ModelError`."""
    if memory not in MEMORY_PLANS:
        raise ModelError(f"memory plan {memory!r}: use one of {', '.join(MEMORY_PLANS)}")
    return memory


def session_options(
    ort, threads: int | None = None, *, optimize: bool = True, memory: str = "pattern", spinning: bool | None = None
):
    """Quiet ``SessionOptions``: all graph optimisations (unless ``optimize=False``), ``threads``
    intra-op threads (default: the CPUs this process may use), the ``memory`` plan (one of
    :data:`MEMORY_PLANS`: ``enable_mem_pattern`` off for ``arena``, that and
    ``enable_cpu_mem_arena`` off for ``lean``); ``spinning``: whether idle worker threads
    busy-wait (:data:`SPIN_KEY`; ``None``: onnxruntime's default, spinning)."""
    check_memory(memory)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = threads or cpu_count()
    opts.log_severity_level = 3
    opts.enable_mem_pattern = memory == "pattern"
    opts.enable_cpu_mem_arena = memory != "lean"
    if spinning is not None:
        opts.add_session_config_entry(SPIN_KEY, "1" if spinning else "0")
    return opts


def spins(session_or_options) -> bool:
    """Whether a session (or its ``SessionOptions``) lets idle worker threads spin."""
    opts = getattr(session_or_options, "get_session_options", None)
    opts = opts() if opts is not None else session_or_options
    try:
        return opts.get_session_config_entry(SPIN_KEY) != "0"
    except Exception:  # no entry: onnxruntime's default, spinning
        return True


def create_session(
    model: str | Path | bytes,
    device: str | Device = "auto",
    threads: int | None = None,
    *,
    options: Any = None,
    providers: Sequence[Any] | None = None,
    memory: str = "pattern",
    spinning: bool | None = None,
):
    """An ``InferenceSession`` for ``model`` (a path, or serialized ONNX bytes).

    ``options``: prepared ``SessionOptions`` (default :func:`session_options` with ``threads``,
    ``memory`` (see :data:`MEMORY_PLANS`) and ``spinning``);
    ``providers``: an explicit providers list (default :func:`choose_providers` of ``device``).
    Warns (with the fix) if CUDA/TensorRT was asked for but onnxruntime fell back to CPU.
    """
    ort = import_ort()
    dev = parse_device(device)
    if isinstance(model, (bytes, bytearray)):
        source: Any = bytes(model)
        label = "<in-memory model>"
    else:
        path = Path(model)
        if not path.exists():
            raise ModelError(f"{path}: model file not found (make one with  regatt export -o {path})")
        if not path.is_file():
            raise ModelError(f"{path}: not a file")
        source, label = str(path), str(path)
    opts = options if options is not None else session_options(ort, threads, memory=memory, spinning=spinning)
    chosen = list(providers) if providers is not None else choose_providers(dev)
    try:
        sess = ort.InferenceSession(source, sess_options=opts, providers=chosen)
    except Exception as exc:
        raise ModelError(f"{label}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    asked = [p[0] if isinstance(p, tuple) else p for p in chosen]
    running = sess.get_providers()
    if dev.gpu and asked[0] not in running:
        message = f"{asked[0]} was requested but onnxruntime runs on {running}: " + fallback_reason(ort)
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


def runs_on_gpu(session) -> bool:
    """True when ``session``'s first provider is CUDA or TensorRT (the IO-binding path pays)."""
    providers = session.get_providers()
    return bool(providers) and providers[0] in GPU_PROVIDERS


def run_bound(session, input_name: str, feed, output_names: str | Sequence[str]):
    """Run with IO binding: ``feed`` is uploaded once to the session's device and the outputs are
    bound on the host, so no intermediate host copies or per-run allocations of the input.
    One output name -> that array; a list of names -> the list of arrays."""
    names = [output_names] if isinstance(output_names, str) else list(output_names)
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, feed)
    for name in names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    outs = binding.copy_outputs_to_cpu()
    return outs[0] if isinstance(output_names, str) else outs


class OrtEngine(NamedIO):
    """An onnxruntime session behind the :class:`~regatt_sdk.engines.base.Engine` interface.

    ``OrtEngine(model, device="auto", threads=None, memory="pattern", spinning=None)``; ``model`` a
    path or ONNX bytes; ``memory`` one of :data:`MEMORY_PLANS`; ``spinning``: whether idle worker
    threads busy-wait (``None``: onnxruntime's default; the Encoder passes :data:`ENCODER_SPINNING`,
    the SDK's reference sessions ``False``). On CUDA or TensorRT, runs use IO binding (input
    uploaded once, outputs on the host). :meth:`close` releases the session (and its threads).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | Path | bytes,
        device: str | Device = "auto",
        threads: int | None = None,
        *,
        options: Any = None,
        providers: Sequence[Any] | None = None,
        memory: str = "pattern",
        spinning: bool | None = None,
    ):
        self.device = parse_device(device)
        self.threads = threads
        #: the memory plan (None when prepared ``options`` were given: they decide)
        self.memory = check_memory(memory) if options is None else None
        self.session = create_session(
            model, self.device, threads, options=options, providers=providers, memory=memory, spinning=spinning
        )
        #: whether the session's idle worker threads spin
        self.spinning = spins(self.session)
        self._input = self.session.get_inputs()[0].name
        self._outputs = tuple(o.name for o in self.session.get_outputs())
        self._bind = runs_on_gpu(self.session)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []

    def close(self) -> None:
        """Release the session and its thread pool now (the engine cannot run afterwards)."""
        self.session = None

    def run(self, feed: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{name: array}`` for ``outputs`` (default all) on the one-input ``feed``."""
        if self.session is None:
            raise ModelError("this onnxruntime engine was closed")
        names = list(outputs) if outputs is not None else list(self._outputs)
        if self._bind:
            arrays = run_bound(self.session, self._input, feed, names)
        else:
            arrays = self.session.run(names, {self._input: feed})
        return dict(zip(names, arrays))

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "device": str(self.device),
            "providers": self.providers,
            "version": getattr(import_ort(), "__version__", "?"),
            "threads": self.threads or cpu_count(),
            "memory": self.memory,
            "spinning": self.spinning,
        }

    def __repr__(self) -> str:
        return f"OrtEngine(device={self.device}, providers={self.providers})"


def open_engine(model: str | Path, device: str | Device = "auto", threads: int | None = None) -> OrtEngine:
    """The engine-module entry point used by :func:`regatt_sdk.engines.open_engine`."""
    return OrtEngine(model, device, threads)
