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
    torch_present = importlib.util.find_spec("torch") is not None
    typer.echo(f"torch         {'installed (export, train, whiten available)' if torch_present else 'not installed (runtime only)'}")
    if "CUDAExecutionProvider" not in providers:
        typer.echo("GPU           no CUDA provider in this build: pip uninstall -y onnxruntime && pip install 'regatt[gpu]'")
