"""The training losses: BCE against sampled negatives, and full softmax cross-entropy over all
items computed by `FusedLinearCrossEntropy` (gradients in the forward pass, chunk by chunk)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mltfr.models.base import PAD


def bce_loss(h: Tensor, pos: Tensor, neg: Tensor, items: Tensor) -> Tensor:
    """Binary cross-entropy of positives vs one negative, mean over real positions.

    h (B, L, d) hidden states, pos/neg (B, L) ids (pos 0 = padding, skipped), items (n+1, d).
    Only real positions are gathered, so padding costs nothing; positives and negatives are
    gathered at once (one item-table-sized gradient buffer instead of two).
    """
    real = pos != PAD
    h_real = h[real]  # (n, d)
    logits = (h_real * items[torch.stack([pos[real], neg[real]])]).sum(-1)  # (2, n): pos, neg
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    return F.softplus(-logits[0]).mean() + F.softplus(logits[1]).mean()


def full_ce_loss(h: Tensor, targets: Tensor, items: Tensor, chunk: int | None = None) -> Tensor:
    """Softmax cross-entropy over all items 1..n (padding column 0 excluded), mean over rows.

    h (n, d) hidden states of the real positions only, targets (n,) in 1..n_items,
    items (n_items+1, d). Column 0 is dropped rather than masked to -inf (the same softmax).
    Computed by `FusedLinearCrossEntropy` in row chunks: the (n, n_items) logits are never
    materialised, which saves memory and most of the memory traffic of a plain log-softmax.
    """
    if chunk is None:  # CPU: a (n_items, 64) chunk stays in cache; GPU: fewer, larger kernels
        chunk = 64 if h.device.type == "cpu" else 1024
    return FusedLinearCrossEntropy.apply(h, items[1:], targets - 1, chunk)


def ce_over_rows(h: Tensor, targets: Tensor, table: Tensor, chunk: int | None = None) -> Tensor:
    """Softmax cross-entropy over every row of `table` (the authors' BERT4Rec: n+2 rows, the padding
    and [MASK] rows included), mean over rows; h (n, d), targets (n,) row ids, table (rows, d)."""
    if chunk is None:
        chunk = 64 if h.device.type == "cpu" else 1024
    return FusedLinearCrossEntropy.apply(h, table, targets, chunk)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W.T, t_i), gradients computed in the forward pass, chunk by chunk.

    The loss is a scalar, so backward only rescales the gradients found in forward: three
    matmuls per chunk (logits, dL/dh, dL/dW) and a peak extra memory of n_items x chunk,
    instead of the (n, n_items) logits, their log-softmax and its gradient. The same idea
    as Liger-Kernel's fused linear cross-entropy. Chunks are laid out (n_items, chunk): on CPU
    `W @ h_c.T` runs near matmul peak where `h_c @ W.T` (inner size d = 64) does not, and the
    softmax is max, exp in place, sum (one pass fewer than logsumexp then exp).
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, h.shape[0], chunk):
            h_c, t_c = h[start:start + chunk], targets[start:start + chunk]
            cols = torch.arange(len(t_c), device=h.device)
            probs = (weight @ h_c.T).float()  # (n_items, c) logits
            top = probs.amax(dim=0)  # (c,)
            target_logit = probs[t_c, cols] - top
            z = probs.sub_(top).exp_().sum(dim=0)  # probs now exp(logit - max)
            total += (z.log() - target_logit).sum()  # log-sum-exp - logit, both shifted by max
            if need_h or need_w:
                probs.div_(z)  # softmax
                probs[t_c, cols] -= 1.0  # dCE/dlogits, (n_items, c)
                if need_h:
                    grad_h[start:start + chunk] = probs.T.to(h.dtype) @ weight
                if need_w:
                    grad_w.addmm_(probs, h_c.float())
        n = max(h.shape[0], 1)
        ctx.save_for_backward(*(g / n if g is not None else None for g in (grad_h, grad_w)))
        ctx.dtypes = h.dtype, weight.dtype  # under autocast h may be bf16 while grads accumulate in fp32
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grads = [None if g is None else (g * grad_loss).to(dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return grads[0], grads[1], None, None
