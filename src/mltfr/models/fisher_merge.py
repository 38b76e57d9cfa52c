"""Fisher-weighted semantic consensus: diagonal empirical Fisher, merge, and the file between rounds.

Round 1 trains the model (its consensus expert is the authors' frozen random copy of the first
group expert). `fisher_diagonal` then makes one seeded pass over the training batches with
dropout off and records, for every expert parameter, the mean of its squared batch gradient (a
diagonal empirical Fisher F_m). `merge_experts` merges the experts of
the same-D group element-wise, theta = sum F_m theta_m / (sum F_m + 1e-12) (plain mean for the
ablation), and `save_consensus` writes it to safetensors; round 2 (a fresh model) loads it with
`load_consensus` and passes it to `build_branch(..., shared_state=...)`, where it stays frozen.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mltfr.errors import ConfigError, DataError
from mltfr.io import atomic_path
from mltfr.models.mltfr import resolve_consensus_group

FISHER_EPS = 1e-12   # keeps the merge defined where every Fisher entry is zero


def expert_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable expert parameters of `model.branch`, by their full names in `model`."""
    branch = getattr(model, "branch", None)
    if branch is None:
        raise ConfigError("the model has no LLM branch, so there is no expert for the Fisher pass; "
                          "use a variant with LLMs (e.g. mltfr)")
    prefix = "branch.experts."
    return {name: p for name, p in model.named_parameters() if name.startswith(prefix) and p.requires_grad}


@contextlib.contextmanager
def _fisher_mode(model: nn.Module):
    """Dropout off (eval) but gradients on; the training mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    """The global torch RNG seeded with `seed` inside, the caller's state restored after: the
    filter's Gumbel noise (faithful evaluation noise) draws from it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def fisher_diagonal(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None,
                    seed: int = 0) -> dict[str, Tensor]:
    """Mean over `batches` of the squared batch gradient of every expert parameter.

    loss_fn(model, batch) -> scalar; default `model.loss(batch, gen)` with a generator seeded by
    `seed`, so BERT4Rec masking and negative sampling still work. Every random draw of the pass
    (negatives, masks, Gumbel noise) comes from `seed`: the same batches give the same Fisher.
    """
    params = expert_parameters(model)
    device = next(model.parameters()).device           # backbones want gen on the batch's device
    if loss_fn is None:
        gen = torch.Generator(device=device).manual_seed(seed)
        loss_fn = lambda m, batch: m.loss(batch, gen)  # noqa: E731
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    n = 0
    with _fisher_mode(model), _seeded_global_rng(seed, device):
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), list(params.values()), allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    sums[name] += g.detach() ** 2
            n += 1
    if n == 0:
        raise DataError("the Fisher pass got no training batches; check the training split is not empty")
    return {name: s / n for name, s in sums.items()}


def per_expert(named: dict[str, Tensor], n_experts: int) -> list[dict[str, Tensor]]:
    """Split full-name tensors ('branch.experts.{m}.key.weight') into one dict per expert."""
    out: list[dict[str, Tensor]] = [{} for _ in range(n_experts)]
    for name, tensor in named.items():
        m, _, local = name.removeprefix("branch.experts.").partition(".")
        out[int(m)][local] = tensor
    return out


def merge_experts(expert_states: list[dict[str, Tensor]],
                  fishers: list[dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
    """Element-wise sum F*theta / (sum F + eps) over the experts; fishers None = plain mean."""
    if len(expert_states) < 2:
        raise ConfigError(f"a merge needs at least two experts, got {len(expert_states)}")
    keys = set(expert_states[0])
    if any(set(s) != keys for s in expert_states) or (fishers and any(set(f) != keys for f in fishers)):
        raise ConfigError("the experts to merge have different parameters; they must come from LLMs "
                          "of the same token dimension")
    merged = {}
    for key in sorted(keys):
        theta = torch.stack([s[key].detach().float() for s in expert_states])    # (G, ...)
        if fishers is None:
            merged[key] = theta.mean(0)
            continue
        weight = torch.stack([f[key].detach().float() for f in fishers])        # (G, ...)
        merged[key] = (weight * theta).sum(0) / (weight.sum(0) + FISHER_EPS)
    return merged


def consensus_state(model: nn.Module, group: list[int], fisher: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The merged expert of `group` from a round-1 model (fisher None = plain mean)."""
    experts = model.branch.experts
    states = [{k: v.detach().cpu() for k, v in experts[m].state_dict().items()} for m in group]
    fishers = None
    if fisher is not None:
        split = per_expert(fisher, len(experts))
        fishers = [{k: v.cpu() for k, v in split[m].items()} for m in group]
    return merge_experts(states, fishers)


def merge_round1(model: nn.Module, batches: Iterable, seed: int = 0) -> tuple[dict[str, Tensor], dict]:
    """The whole step between the rounds: (merged expert, meta for `save_consensus`).

    Fisher pass over `batches` when the branch's consensus is "fisher", plain mean when "mean".
    """
    branch = model.branch
    cfg = branch.cfg
    if cfg.consensus == "none":
        raise ConfigError("this variant has no consensus expert (consensus 'none'), so there is nothing "
                          "to merge; drop the Fisher step for it")
    group = resolve_consensus_group(cfg, branch.dims)
    fisher = fisher_diagonal(model, batches, seed=seed) if cfg.consensus == "fisher" else None
    meta = {"llms": [branch.names[m] for m in group], "dim": branch.dims[group[0]], "d": cfg.d,
            "method": cfg.consensus}
    return consensus_state(model, group, fisher), meta


def save_consensus(path: str | Path, state: dict[str, Tensor], meta: dict) -> None:
    """Write the merged expert atomically; `meta` (JSON-able: llms, dims, method) goes alongside."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path, SafetensorError) as tmp:
        save_file(tensors, str(tmp), metadata={"mltfr": json.dumps(meta, sort_keys=True)})


def load_consensus(path: str | Path, expect_llms: list[str] | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read a merged expert written by `save_consensus` -> (state, meta).

    expect_llms: the round-2 consensus group's LLM names; a file merged from others is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"merged consensus expert {path} does not exist; run the Fisher step "
                        "(round 1 + `mltfr fisher`) before round 2")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("mltfr", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"merged consensus expert {path} is unreadable ({err}); delete it and "
                        "rerun the Fisher step") from None
    if expect_llms is not None and meta.get("llms") != list(expect_llms):
        raise DataError(f"merged consensus expert {path} was merged from {meta.get('llms')}, but round 2 "
                        f"uses the group {list(expect_llms)}; rerun the Fisher step for these LLMs")
    return state, meta
