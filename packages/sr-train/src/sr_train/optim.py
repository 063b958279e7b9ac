"""Muon for convolution kernels, AdamW for everything else: parameter groups and the optimizer.

Parameter kinds (:func:`classify_parameters`), following the IET recipe (supplementary F:
"Convolution kernels are optimized with Muon, while linear projection layers use AdamW"):

* ``conv``: the kernel of every ``nn.Conv1d/2d/3d`` and transposed conv, and every other parameter
  with 4 or more dimensions (e.g. ESC's shared 13x13 kernel, used through ``F.conv2d``). All of them,
  including the first and last convolutions, depthwise kernels ``(C, 1, k, k)`` and 1x1 convs, go to
  Muon when it is enabled: the paper says "convolution kernels" without exceptions, so we take it
  literally. Names matching ``optim.muon.exclude`` (regexes) are sent to AdamW instead.
* ``linear``: ``nn.Linear`` weights (AdamW, with ``optim.adamw.weight_decay``).
* ``norm_bias``: biases, normalisation weights and any 1-D parameter (AdamW, never weight decay).
* ``other``: anything else (position-bias tables, 2-D/3-D parameters of custom modules) (AdamW).

Muon treats a kernel of shape ``(out, in, kh, kw)`` as the matrix ``(out, in*kh*kw)``. The update is
the muon-optimizer package's ``muon_update`` rule (momentum, Nesterov, then its
``zeropower_via_newtonschulz5``, bf16 Newton-Schulz) applied to that 2-D view and reshaped back,
with one batched Newton-Schulz call per matrix shape; the package's own optimizer classes (0.1.0)
crash on 4-D weights because they never reshape the update back (see ``performance.md`` 4.2).
Under DDP the gradients are already averaged, so every rank computes the same update.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import muon
import torch
from torch import nn

from sr_train.errors import ConfigError

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)
KINDS = ("conv", "linear", "norm_bias", "other")


@dataclass(frozen=True)
class ParamInfo:
    """One trainable parameter: its qualified name, kind (one of :data:`KINDS`) and shape."""

    name: str
    kind: str
    shape: tuple[int, ...]


def classify_parameters(model: nn.Module) -> dict[str, str]:
    """Map every trainable parameter name of ``model`` to its kind (``conv|linear|norm_bias|other``)."""
    owner: dict[str, nn.Module] = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    kinds: dict[str, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mod = owner.get(name)
        leaf = name.rsplit(".", 1)[-1]
        if (isinstance(mod, _CONV_TYPES) and leaf == "weight") or p.ndim >= 4:
            kinds[name] = "conv"
        elif isinstance(mod, nn.Linear) and leaf == "weight":
            kinds[name] = "linear"
        elif p.ndim <= 1 or leaf == "bias" or isinstance(mod, _NORM_TYPES):
            kinds[name] = "norm_bias"
        else:
            kinds[name] = "other"
    return kinds


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a kernel ``(out, in, *k)`` as the matrix ``(out, in*prod(k))``; 2-D tensors are returned as is."""
    return t.reshape(t.shape[0], -1)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer holding Muon groups (``use_muon=True``) and AdamW groups (``use_muon=False``).

    Muon group keys: ``lr, momentum, nesterov, ns_steps, weight_decay, lr_adjust``; parameters of any
    shape with ``ndim >= 2`` (viewed as ``(shape[0], -1)`` matrices). AdamW group keys: ``lr, betas,
    eps, weight_decay``; any shape. Both use decoupled weight decay ``p *= 1 - lr * wd``. Every group
    may carry a ``name`` (printed by :func:`describe_groups`).

    ``lr_adjust``: ``"original"`` scales the orthogonalised update by ``sqrt(max(1, rows/cols))`` of the
    matrix view (the package's rule, applied to the 2-D view rather than to the kernel's last two
    dims); ``"match_rms_adamw"`` scales it by ``0.2 * sqrt(max(rows, cols))`` (Moonshot's rule, as in
    ``torch.optim.Muon``).
    """

    def __init__(self, param_groups: Sequence[dict[str, Any]]) -> None:
        groups = []
        for g in param_groups:
            g = dict(g)
            if "use_muon" not in g:
                raise ValueError("MuonAdamW: every param group needs use_muon=True|False")
            if g["use_muon"]:
                g.setdefault("lr", 0.02)
                g.setdefault("momentum", 0.95)
                g.setdefault("nesterov", True)
                g.setdefault("ns_steps", 5)
                g.setdefault("weight_decay", 0.0)
                g.setdefault("lr_adjust", "original")
                for p in g["params"]:
                    if p.ndim < 2:
                        raise ValueError(f"MuonAdamW: Muon needs parameters with ndim >= 2, got shape {tuple(p.shape)}")
            else:
                g.setdefault("lr", 1e-3)
                g.setdefault("betas", (0.9, 0.999))
                g.setdefault("eps", 1e-8)
                g.setdefault("weight_decay", 0.0)
            groups.append(g)
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every parameter that has a gradient (parameters without one are skipped)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        beta, lr = group["momentum"], group["lr"]
        pending: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            grad = as_matrix(p.grad.float())
            buf = as_matrix(state["momentum_buffer"])  # a view: the buffer is contiguous
            buf.lerp_(grad, 1 - beta)  # the package's muon_update, without mutating p.grad
            update = grad.lerp(buf, beta) if group["nesterov"] else buf.clone()
            pending.setdefault((update.shape[0], update.shape[1]), []).append((p, update))
        # One batched Newton-Schulz call per matrix shape (the package's function is batched).
        for (rows, cols), items in pending.items():
            ortho = muon.zeropower_via_newtonschulz5(torch.stack([u for _, u in items]), steps=group["ns_steps"])
            if group["lr_adjust"] == "match_rms_adamw":
                scale = 0.2 * math.sqrt(max(rows, cols))
            else:
                scale = math.sqrt(max(1.0, rows / cols))
            for (p, _), o in zip(items, ortho):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(o.reshape(p.shape).to(p.dtype), alpha=-lr * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            update = muon.adam_update(p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                                      (beta1, beta2), group["eps"])
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])


def build_param_groups(model: nn.Module, optim_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The optimizer's explicit parameter groups for ``model`` from the ``optim`` config section.

    Returns up to four groups, each ``{"name", "use_muon", "params", "tensor_names", <hyper-params>}``:
    ``muon/conv`` (if Muon is enabled), ``adamw/conv`` (if not), ``adamw/linear``, ``adamw/norm_bias``
    and ``adamw/other``. Empty groups are dropped.
    """
    mu, aw = optim_cfg["muon"], optim_cfg["adamw"]
    try:
        excludes = [re.compile(x) for x in mu["exclude"]]
    except re.error as exc:
        raise ConfigError(f"config key 'optim.muon.exclude' holds a bad regex: {exc}") from None
    kinds = classify_parameters(model)
    params = dict(model.named_parameters())
    buckets: dict[str, list[str]] = {k: [] for k in ("muon", *KINDS)}
    for name, kind in kinds.items():
        if kind == "conv" and mu["enabled"] and not any(rx.search(name) for rx in excludes):
            buckets["muon"].append(name)
        else:
            buckets[kind].append(name)
    adam_common = {"use_muon": False, "lr": float(aw["lr"]), "betas": tuple(float(b) for b in aw["betas"]),
                   "eps": float(aw["eps"])}
    groups = []
    if buckets["muon"]:
        groups.append({"name": "muon/conv", "use_muon": True, "lr": float(mu["lr"]), "momentum": float(mu["momentum"]),
                       "nesterov": bool(mu["nesterov"]), "ns_steps": int(mu["ns_steps"]),
                       "weight_decay": float(mu["weight_decay"]), "lr_adjust": mu["lr_adjust"],
                       "tensor_names": buckets["muon"]})
    for kind in KINDS:
        if buckets[kind]:
            wd = 0.0 if kind == "norm_bias" else float(aw["weight_decay"])
            groups.append({"name": f"adamw/{kind}", **adam_common, "weight_decay": wd, "tensor_names": buckets[kind]})
    for g in groups:
        g["params"] = [params[n] for n in g["tensor_names"]]
    return groups


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any]) -> MuonAdamW:
    """A :class:`MuonAdamW` over :func:`build_param_groups` (each group keeps its ``tensor_names``)."""
    return MuonAdamW(build_param_groups(model, optim_cfg))


def describe_groups(groups: Iterable[dict[str, Any]]) -> str:
    """A readable table of parameter groups: name, tensor count, parameter count, lr, and examples."""
    lines = []
    for g in groups:
        n_params = sum(p.numel() for p in g["params"])
        extra = (f"momentum={g['momentum']} ns_steps={g['ns_steps']} wd={g['weight_decay']} adjust={g['lr_adjust']}"
                 if g["use_muon"] else f"betas={tuple(g['betas'])} eps={g['eps']} wd={g['weight_decay']}")
        names = g.get("tensor_names") or []
        sample = ", ".join(names[:3]) + (f", ... (+{len(names) - 3})" if len(names) > 3 else "")
        lines.append(f"  {g.get('name', '?'):<16} {len(g['params']):>4} tensors {n_params:>11,} params  "
                     f"lr={g.get('initial_lr', g['lr']):g} {extra}  [{sample}]")
    return "parameter groups:\n" + "\n".join(lines)
