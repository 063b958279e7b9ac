"""Parameter groups and the Muon/AdamW optimizer, checked against the muon-optimizer package and torch."""

from __future__ import annotations

import copy
import importlib.metadata

import muon
import pytest
import torch
from torch import nn

from sr_train.optim import MuonAdamW, build_param_groups, classify_parameters
from sr_train.testing import TinySR

OPTIM = {
    "muon": {"enabled": True, "lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0,
             "lr_adjust": "original", "exclude": []},
    "adamw": {"lr": 1e-3, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.01},
    "grad_clip": None,
}


class _Functional(nn.Module):
    """A shared kernel used through F.conv2d (like ESC's 13x13 plk_filter) and a transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Parameter(torch.randn(4, 4, 13, 13))
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.table = nn.Parameter(torch.zeros(3, 7))


def test_classification_of_every_kind():
    kinds = classify_parameters(TinySR(2))
    assert kinds == {
        "head.weight": "conv", "head.bias": "norm_bias",
        "dw.weight": "conv", "dw.bias": "norm_bias",  # depthwise (C, 1, 3, 3) kernel is a conv kernel
        "norm.weight": "norm_bias", "norm.bias": "norm_bias",
        "mix.weight": "linear", "mix.bias": "norm_bias",
        "gain": "other",
        "to_img.weight": "conv", "to_img.bias": "norm_bias",
    }
    kinds = classify_parameters(_Functional())
    assert kinds == {"shared": "conv", "up.weight": "conv", "up.bias": "norm_bias", "table": "other"}


def test_frozen_parameters_are_left_out():
    m = TinySR(2)
    m.mix.weight.requires_grad_(False)
    assert "mix.weight" not in classify_parameters(m)
    names = [n for g in build_param_groups(m, OPTIM) for n in g["tensor_names"]]
    assert "mix.weight" not in names and len(names) == len(set(names)) == 10


def test_groups_muon_on_and_off_and_exclude():
    m = TinySR(2)
    groups = {g["name"]: g for g in build_param_groups(m, OPTIM)}
    assert set(groups) == {"muon/conv", "adamw/linear", "adamw/norm_bias", "adamw/other"}
    assert groups["muon/conv"]["tensor_names"] == ["head.weight", "dw.weight", "to_img.weight"]
    assert groups["muon/conv"]["use_muon"] and groups["muon/conv"]["lr"] == 0.02
    assert groups["adamw/linear"]["weight_decay"] == 0.01
    assert groups["adamw/norm_bias"]["weight_decay"] == 0.0  # never decay norms and biases
    assert groups["adamw/linear"]["betas"] == (0.9, 0.99)

    off = {**OPTIM, "muon": {**OPTIM["muon"], "enabled": False}}
    groups = {g["name"]: g for g in build_param_groups(m, off)}
    assert "muon/conv" not in groups and groups["adamw/conv"]["tensor_names"] == ["head.weight", "dw.weight", "to_img.weight"]

    excl = {**OPTIM, "muon": {**OPTIM["muon"], "exclude": [r"^head\.", r"^to_img\."]}}
    groups = {g["name"]: g for g in build_param_groups(m, excl)}
    assert groups["muon/conv"]["tensor_names"] == ["dw.weight"]
    assert groups["adamw/conv"]["tensor_names"] == ["head.weight", "to_img.weight"]


@pytest.mark.skipif(importlib.metadata.version("muon-optimizer") != "0.1.0", reason="documents muon-optimizer 0.1.0")
def test_package_optimizer_crashes_on_4d_weights():
    """The reason MuonAdamW exists: the package's own class fails on a conv kernel (performance.md 4.2)."""
    p = nn.Parameter(torch.randn(16, 8, 3, 3))
    p.grad = torch.randn_like(p)
    opt = muon.SingleDeviceMuonWithAuxAdam([{"params": [p], "use_muon": True}])
    with pytest.raises(RuntimeError):
        opt.step()


def test_muon_on_4d_matches_package_on_the_flattened_matrices():
    """Oracle: the package's SingleDeviceMuon (correct for 2-D) on each (out, in*kh*kw) matrix.

    Includes several kernels of one shape (stacked into one batched Newton-Schulz call), a depthwise
    kernel, ESC's 13x13 shared-kernel shape and a tall matrix (scale sqrt(rows/cols) > 1, applied
    in fp32 by us and in bf16 by the package, hence the looser tolerance there).
    """
    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (16, 8, 3, 3), (16, 8, 3, 3), (8, 1, 7, 7), (12, 20, 1, 1), (4, 4, 13, 13), (40, 2, 2, 2)]
    ours_p = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref_p = [nn.Parameter(p.detach().reshape(p.shape[0], -1).clone()) for p in ours_p]
    start = [p.detach().clone() for p in ours_p]
    ours = MuonAdamW([{"params": ours_p, "use_muon": True, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}])
    ref = muon.SingleDeviceMuon(ref_p, lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        for p, q in zip(ours_p, ref_p):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.reshape(q.shape).clone()
        ours.step()
        ref.step()
    for p, q, w0 in zip(ours_p, ref_p, start):
        tall = q.shape[0] > q.shape[1]
        torch.testing.assert_close(p.detach().reshape(q.shape), q.detach(), rtol=0, atol=2e-3 if tall else 1e-6)
        torch.testing.assert_close(ours.state[p]["momentum_buffer"].reshape(q.shape), ref.state[q]["momentum_buffer"])
        assert not torch.equal(p.detach(), w0)


def test_muon_update_is_orthogonalised():
    """Newton-Schulz output has singular values near 1 (Keller: roughly within [0.5, 1.5])."""
    p = nn.Parameter(torch.zeros(32, 16, 3, 3))
    p.grad = torch.randn(32, 16, 3, 3) * 1e-3
    MuonAdamW([{"params": [p], "use_muon": True, "lr": 1.0, "momentum": 0.0, "nesterov": False}]).step()
    s = torch.linalg.svdvals(-p.detach().reshape(32, -1))
    assert s.min() > 0.4 and s.max() < 1.6


def test_match_rms_adamw_scaling():
    torch.manual_seed(1)
    g = torch.randn(24, 6, 3, 3)
    outs = {}
    for mode in ("original", "match_rms_adamw"):
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        MuonAdamW([{"params": [p], "use_muon": True, "lr": 1.0, "lr_adjust": mode}]).step()
        outs[mode] = p.detach()
    # rows 24 < cols 54: original scale 1, matched scale 0.2 * sqrt(54)
    torch.testing.assert_close(outs["match_rms_adamw"], outs["original"] * 0.2 * 54**0.5, rtol=1e-5, atol=1e-7)


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(2)
    w0 = torch.randn(5, 7)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    ours = MuonAdamW([{"params": [a], "use_muon": False, "lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8,
                       "weight_decay": 0.1}])
    ref = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5, 7)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_optimizer_state_dict_round_trip_continues_identically():
    torch.manual_seed(3)
    m1 = TinySR(2, dropout=0.0)
    m2 = TinySR(2, dropout=0.0)
    m2.load_state_dict(m1.state_dict())
    o1 = MuonAdamW(build_param_groups(m1, OPTIM))
    x = torch.rand(2, 3, 8, 8)
    for _ in range(2):
        o1.zero_grad()
        m1(x).square().mean().backward()
        o1.step()
    m2.load_state_dict(m1.state_dict())
    o2 = MuonAdamW(build_param_groups(m2, OPTIM))
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))  # as if read back from disk: no shared buffers
    for m, o in ((m1, o1), (m2, o2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1, p2), n


def test_muon_rejects_1d_parameters():
    with pytest.raises(ValueError, match="ndim >= 2"):
        MuonAdamW([{"params": [nn.Parameter(torch.zeros(4))], "use_muon": True}])
