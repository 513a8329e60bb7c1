"""Runtime backends behind :class:`engine.serve.runtime.Backend` (``run(feats, demo, mask) -> (mean, std)``).

=============  ===========================================================================
``torch``      :class:`engine.serve.runtime.TorchBackend` - CPU (the sampler as is); CUDA with
               bf16/fp16 autocast and the whole sampling loop in one CUDA graph per batch bucket
``onnxruntime`` :class:`engine.serve.backends.ort.OrtBackend` - the exported graphs (CPU; CUDA EP when
               onnxruntime-gpu provides it) + the DDIM loop in numpy
``tensorrt``   :class:`engine.serve.backends.tensorrt.TensorRTBackend` - engines built from the same
               ONNX (fp16, batch profile), device buffers, whole loop in a CUDA graph
=============  ===========================================================================

``make_backend("auto", ...)`` picks, by what is installed: on CUDA ``tensorrt`` if it imports,
else ``torch``; on the CPU ``onnxruntime`` if it imports (faster than torch eager here, see the
README), else ``torch``.

The backend modules are imported on use: importing any ``engine.serve.backends.<module>`` (as
:mod:`engine.serve.runtime` and :mod:`engine.serve.onnx_graphs` do) runs this ``__init__`` first,
so it must not import the modules that import those.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch

from p2es.errors import P2esError

if TYPE_CHECKING:
    from engine.model.checkpoint import Entry
    from engine.serve.runtime import Backend, TorchBackend

BACKENDS = ("torch", "onnxruntime", "tensorrt")
CHOICES = ("auto",) + BACKENDS

__all__ = ["BACKENDS", "CHOICES", "available_backends", "resolve_backend", "make_backend"]


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _tensorrt_ok() -> bool:
    from engine.serve.backends.tensorrt import tensorrt_available  # lazy: import cycle (module docstring)

    return tensorrt_available()


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


def available_backends(device: str = "cpu") -> list[str]:
    """Backends that can run on ``device`` with what is installed, in preference order last-best."""
    cuda = str(device).startswith("cuda")
    out = ["torch"]
    if _importable("onnxruntime"):
        if not cuda:
            out.append("onnxruntime")
        else:
            import onnxruntime as ort  # lazy: optional dependency (extra "onnx")

            if "CUDAExecutionProvider" in ort.get_available_providers():
                out.append("onnxruntime")
    if cuda and _cuda_ok() and _tensorrt_ok():
        out.append("tensorrt")
    return out


def resolve_backend(name: str, device: str = "cpu") -> str:
    """``auto`` -> a concrete backend for ``device``; a concrete name is checked for availability."""
    if name not in CHOICES:
        raise P2esError(f"unknown backend {name!r} (choose from {', '.join(CHOICES)})")
    cuda = str(device).startswith("cuda")
    if name == "auto":
        avail = available_backends(device)
        if cuda:
            return "tensorrt" if "tensorrt" in avail else "torch"
        return "onnxruntime" if "onnxruntime" in avail else "torch"
    if name == "onnxruntime" and not _importable("onnxruntime"):
        raise P2esError("backend onnxruntime needs the onnxruntime package (pip install 'p2es[onnx]')")
    if name == "tensorrt":
        if not cuda:
            raise P2esError("backend tensorrt runs on a CUDA GPU only (use --device cuda)")
        from engine.serve.backends.tensorrt import require_tensorrt  # lazy: import cycle (module docstring)

        require_tensorrt()
    return name


def make_backend(
    name: str,
    entry: Entry,
    *,
    device: str = "cpu",
    steps: int = 10,
    k: int = 4,
    seed: int = 0,
    threads: int | None = None,
    **opts: Any,
) -> Backend:
    """A ready backend for a checkpoint entry.  ``opts`` go to the backend (unknown ones ignored):
    torch: ``precision``, ``cuda_graphs``, ``max_batch``; onnxruntime: ``model_dir``,
    ``cache_dir``; tensorrt: ``cache_dir``, ``max_batch``, ``opt_batch``, ``fp16``, ``cuda_graphs``."""
    which = resolve_backend(name, device)
    if which == "torch":
        from engine.serve.runtime import TorchBackend  # lazy: import cycle (module docstring)

        return TorchBackend(entry, device=device, steps=steps, k=k, seed=seed, threads=threads, **opts)
    if which == "onnxruntime":
        from engine.serve.backends.ort import OrtBackend  # lazy: import cycle (module docstring)

        return OrtBackend(entry, device=device, steps=steps, k=k, seed=seed, threads=threads, **opts)
    from engine.serve.backends.tensorrt import TensorRTBackend  # lazy: import cycle (module docstring)

    return TensorRTBackend(entry, device=device, steps=steps, k=k, seed=seed, threads=threads, **opts)


def __getattr__(name: str) -> type[TorchBackend]:  # engine.serve.backends.TorchBackend (see make_backend)
    if name == "TorchBackend":
        from engine.serve.runtime import TorchBackend  # lazy: import cycle (module docstring)

        return TorchBackend
    raise AttributeError(name)
