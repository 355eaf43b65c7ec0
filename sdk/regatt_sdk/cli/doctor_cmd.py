"""``regatt doctor``: what onnxruntime build is installed, which providers and CUDA libraries
it can find, and how many threads it will use."""

from __future__ import annotations

import ctypes.util
import importlib.util
import platform

import typer

from ..engines.ort import cpu_count

CUDA_LIBS = ("cudart", "cublas", "cublasLt", "cudnn", "cufft", "curand", "nvinfer")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor() -> None:
    """Report the runtime environment and what to fix for GPU use."""
    typer.echo(f"python        {platform.python_version()} ({platform.machine()})")
    typer.echo(f"cpu threads   {cpu_count()} usable (affinity and cgroup quota)")
    if importlib.util.find_spec("onnxruntime") is None:
        typer.echo("onnxruntime   NOT INSTALLED: pip install 'regatt[cpu]' (or 'regatt[gpu]' for CUDA)")
        raise typer.Exit(1)
    import onnxruntime as ort

    typer.echo(f"onnxruntime   {ort.__version__} ({ort.get_device()} build)")
    providers = ort.get_available_providers()
    typer.echo(f"providers     {', '.join(providers)}")
    for lib in CUDA_LIBS:
        found = ctypes.util.find_library(lib)
        typer.echo(f"  lib{lib:<10} {found or 'not found'}")
    report_engines()
    torch_present = importlib.util.find_spec("torch") is not None
    typer.echo(
        f"torch         {'installed (export, train, whiten available)' if torch_present else 'not installed (runtime only)'}"
    )
    if "CUDAExecutionProvider" not in providers:
        typer.echo(
            "GPU           no CUDA provider in this build: pip uninstall -y onnxruntime && pip install 'regatt[gpu]'"
        )


#: CPU flags that decide which kernels the engines can use
CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)


def report_engines() -> None:
    """CPU model and features, and each engine with what it can run here."""
    from ..engines.choose import cpu_info

    model, flags = cpu_info()
    typer.echo(f"cpu           {model}")
    have = [f for f in CPU_FEATURES if f in flags]
    typer.echo(f"cpu features  {', '.join(have) or 'none of ' + ', '.join(CPU_FEATURES)}")
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    typer.echo(
        f"  int8        {'VNNI dot products' if vnni else 'no VNNI: INT8 gains are limited'}; bf16 {'native' if bf16 else 'not native'}"
    )
    from ..engines.choose import bf16_units

    units = bf16_units(flags)
    typer.echo(
        "  precision auto  "
        + (
            f"tries bf16 on OpenVINO ({', '.join(units)}) beside fp32, keeps the fastest that passes the retrieval gate"
            if units
            else "fp32: no bf16 unit (no amx_bf16 / avx512_bf16 flag), the fastest exact engine"
        )
    )
    typer.echo("engines")
    typer.echo("  onnxruntime fp32 (engine='onnxruntime', the default on CPU and GPU)")
    if importlib.util.find_spec("openvino") is None:
        typer.echo("  openvino    not installed: pip install 'regatt[openvino]'")
        return
    try:
        import openvino as ov

        core = ov.Core()
        for target in core.available_devices:
            caps = core.get_property(target, "OPTIMIZATION_CAPABILITIES")
            precisions = ["fp32"] + (["bf16"] if "BF16" in caps else [])
            typer.echo(
                f"  openvino    {ov.__version__} {target}: {', '.join(precisions)} (engine='openvino', device='openvino:{target}')"
            )
    except Exception as exc:  # a broken install is reported, not fatal
        typer.echo(f"  openvino    installed but not usable: {str(exc).splitlines()[0][:200]}")
