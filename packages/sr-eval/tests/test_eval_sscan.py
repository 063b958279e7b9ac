"""sr-eval with the SSCAN family: the pad policy the model exposes is the one it applies itself, and
``profile_model`` counts its FLOPs (SDPA by torch, the window selection by sr_kernels' formula)."""

from __future__ import annotations

import pytest
import torch

from sr_eval import forward_padded
from sr_eval.inference import pad_policy
from sr_eval.profiling import profile_model
from sr_models import create_model
from sr_models.families.sscan import sscan_macs

TINY = {"embed_dim": 8, "num_heads": 2, "n_blocks": 2, "depth": 2, "window_size": 4, "topk": 2, "num_feat": 8}


@pytest.mark.parametrize("name", ["sscan", "sscan-light"])
def test_pad_policy_is_the_window_and_matches_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 3, **TINY).eval()
    pol = pad_policy(model)
    assert (pol.multiple, pol.mode) == (4, "reflect")
    x = torch.rand(1, 3, 10, 7)
    with torch.no_grad():
        torch.testing.assert_close(forward_padded(model, x), model(x))


def test_profile_counts_flops_on_meta() -> None:
    model = create_model("sscan-light", 4)
    res = profile_model(model, output_size=(1280, 720), device="cpu")
    assert res["flops_method"] == "meta" and res["padded_input_size"] == "320x184"
    assert res["flops"] == 2 * sscan_macs(model.cfg, 4, 180, 320)["total"]
    assert res["params"] == sum(p.numel() for p in model.parameters())
