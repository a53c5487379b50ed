"""The reductions a hook runs on a tensor: each returns a small float32 tensor on the tensor's device
(nothing is brought to the host here)."""

from __future__ import annotations

import torch

# Saturation: the local derivative is below 1% of its maximum.
#   sigmoid: s(1-s) < 0.0025  <=>  |s - 0.5| > 0.4975   (|pre-activation| > ~6.0)
#   tanh:    1 - t^2 < 0.01   <=>  |t| > 0.99499        (|pre-activation| > ~3.0)
SIGMOID_SAT = 0.497494
TANH_SAT = 0.994987


def sumsq(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares (a 0-d float32 tensor; the squared L2 norm), which is also the NaN/Inf detector: it is
    non-finite exactly when the tensor holds NaN/Inf, or values so large (around 1e19 and up) that their
    squares overflow float32, which a float32 model's next normalisation or loss would overflow on too.
    One kernel per tensor (counting with isfinite() costs ~10x more); on the CPU a BLAS dot product is
    ~1.8x faster than vector_norm for contiguous float32 tensors."""
    if t.is_sparse:
        t = t.coalesce().values()
    if t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu":
        flat = t.view(-1)
        return torch.dot(flat, flat)
    if t.dtype in (torch.float64, torch.complex128):
        return torch.linalg.vector_norm(t).square().to(torch.float32)
    return torch.linalg.vector_norm(t, dtype=torch.float32).square()


def has_nonfinite(t: torch.Tensor) -> torch.Tensor:
    """1.0 when the tensor holds NaN/Inf, else 0.0: exact (no overflow), used in the diagnosis pass."""
    if t.is_sparse:
        t = t.coalesce().values()
    return torch.isfinite(t).logical_not_().any().to(torch.float32)


def sumsq_many(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sums of squares of many tensors as one float32 vector: one _foreach_norm call when they are all
    float32 and dense (one fused launch on a GPU; on the CPU one C++ loop, which measured 1.3x faster
    than per-tensor dot products for 200 256x256 weights and ~10x for a small CNN's 48 small tensors,
    where a Python call per tensor dominates); otherwise sumsq per tensor."""
    dev = tensors[0].device
    if all(t.dtype == torch.float32 and t.layout == torch.strided and t.device == dev for t in tensors):
        return torch.stack(torch._foreach_norm(tensors, 2)).square()
    return torch.stack([sumsq(t).to(dev) for t in tensors])   # (a model spread over devices: one place)


def nonfinite_count(t: torch.Tensor) -> torch.Tensor:
    """Count of NaN/Inf values (used only for the input batch, once per pass)."""
    return torch.isfinite(t).logical_not_().sum(dtype=torch.float32)


def sigmoid_saturated(out: torch.Tensor) -> torch.Tensor:
    return (out - 0.5).abs_().gt_(SIGMOID_SAT).sum(dtype=torch.float32)


def tanh_saturated(out: torch.Tensor) -> torch.Tensor:
    return out.abs().gt_(TANH_SAT).sum(dtype=torch.float32)


def unit_moments(acc: torch.Tensor | None, t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Per-unit sums and sums of squares over `dims`, added into `acc`, a (2, units) float64 tensor (a new one
    when acc is None), which is returned. Two passes: the per-unit mean, then the centred sum of squares (one
    temporary of the tensor's size, squared in place), so that values far from 0, as a large bias makes
    them, keep their spread; the float64 accumulator takes n * mean and m2 + n * mean^2 in place (7 small
    kernels; 11 when each call built its own float64 result and the caller added it: 1.5 -> 0.9 ms for
    32x16x32x32 on the CPU). (torch.var_mean over the non-contiguous unit dims measured 4-7x slower on the
    CPU: 158 vs 37 us for 64x256, 3.7 vs 0.56 ms for 32x16x32x32.)"""
    x = t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)
    if not dims:   # a 1-d tensor: every value is its own unit
        x64 = x.to(torch.float64)
        if acc is None:
            return torch.stack((x64, x64 * x64))
        acc[0].add_(x64)
        acc[1].addcmul_(x64, x64)
        return acc
    mean = x.mean(dims, keepdim=True)
    m2 = (x - mean).square_().sum(dims)
    mean = mean.reshape(m2.shape)
    n = x.numel() // max(mean.numel(), 1)
    if acc is None:
        acc = torch.zeros((2,) + tuple(m2.shape), dtype=torch.float64, device=x.device)
    acc[0].add_(mean, alpha=n)
    acc[1].add_(m2).addcmul_(mean, mean, value=n)
    return acc
