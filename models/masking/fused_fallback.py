"""Whether the fused mask kernels compile on a device, and the one line that says why not.

Where they do not (no C++ compiler, a broken Triton), MaskedModel trains its masks on the eager path
instead: a slower trial rather than a failed one.
"""

from __future__ import annotations

import threading

import torch

from models.masking.fused_sampling import keyed_masked_weight_samples, new_logits

_kernel_errors: dict[str, str | None] = {}  # device -> why the fused kernels fail there, None if they work
_kernel_errors_lock = threading.Lock()


def fused_kernels_error(device: torch.device) -> str | None:
    """None if the fused mask kernels compile and run forward and backward on `device`, else the
    error (and its root cause), one line. Tried once per device and process, on a small matrix and
    a vector (the compiled graphs have dynamic shapes, so the real tensors reuse them)."""
    with _kernel_errors_lock:
        if str(device) not in _kernel_errors:
            _kernel_errors[str(device)] = _try_fused_kernels(torch.device(device))
        return _kernel_errors[str(device)]


def _try_fused_kernels(device: torch.device) -> str | None:
    key = torch.tensor([12345, 678], dtype=torch.int32, device=device)  # fixed: no random state drawn
    try:
        for shape in ((5, 3), (5,)):
            weight = torch.ones(shape, device=device)
            logits = new_logits(weight, 0.0).requires_grad_()
            keyed_masked_weight_samples(weight, logits, key, 2).sum().backward()
            if logits.grad is None or not bool(torch.isfinite(logits.grad).all()):
                return "the compiled backward gave no finite gradient"
    except Exception as error:  # any failure to compile or run them means: use the eager path
        return describe(error)
    return None


def is_compile_failure(error: BaseException) -> bool:
    """Whether torch.compile failed to compile (not a model's or a caller's error)."""
    from torch._dynamo.exc import BackendCompilerFailed  # dynamo is loaded by then: the kernels went through it

    return isinstance(error, BackendCompilerFailed)


def describe(error: BaseException) -> str:
    """The error and its root cause, first line each (a compiler's error wraps the real one)."""
    root, seen = error, set()
    while id(root) not in seen:  # dynamo keeps the backend's error as inner_exception, not as __cause__
        seen.add(id(root))
        root = root.__cause__ or getattr(root, "inner_exception", None) or root
    text = f"{type(error).__name__}: {_first_line(error)}"
    return text if root is error else f"{text} caused by {type(root).__name__}: {_first_line(root)}"


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:300]

