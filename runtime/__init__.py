"""Inference engines behind one interface, for serving and benchmarks.

``load_engine(path)`` picks by file: a ``.pt`` checkpoint runs in PyTorch (eager), a ``.onnx`` export from
``python -m tools.export`` runs in ONNX Runtime, which needs no torch: that keeps the edge image small.
OpenVINO runs the same export when asked for (``engine="openvino"``; the benchmarks' common engine).
"""

from pathlib import Path
from typing import Literal

from .card import Detections, Engine, EngineError, ModelCard

EngineName = Literal["auto", "torch", "onnxruntime", "openvino"]


def load_engine(path: str | Path, engine: EngineName = "auto", *, threads: int = 1) -> Engine:
    """A ready engine for the model file at ``path``; ``auto`` means ONNX Runtime for ``.onnx``, else torch."""
    path = Path(path)
    if engine == "auto":
        engine = "onnxruntime" if path.suffix.lower() == ".onnx" else "torch"
    if engine == "onnxruntime":
        from .onnx import OnnxEngine  # imported here so a torch-only install never needs onnxruntime

        return OnnxEngine(path, threads=threads)
    if engine == "openvino":
        from .openvino import OpenVinoEngine

        return OpenVinoEngine(path, threads=threads)
    if engine == "torch":
        try:
            from .eager import TorchEngine
        except ImportError as exc:
            raise EngineError(f"{path}: the torch engine needs torch, which is not installed ({exc})") from exc
        return TorchEngine(path, threads=threads)
    raise EngineError(f"unknown engine {engine!r}; use auto, torch, onnxruntime or openvino")


__all__ = ["Detections", "Engine", "EngineError", "EngineName", "ModelCard", "load_engine"]
