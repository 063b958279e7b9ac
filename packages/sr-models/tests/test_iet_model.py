"""IET / IET-light networks: registry, parameter counts against the paper, shapes for awkward sizes,
determinism, dilation handling and gradients (tiny configs on CPU; full size only for counts)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sr_models import create_model, list_models
from sr_models.families.iet import IETConfig

# A few-layer, few-channel variant that exercises every mechanism: DLSG + bias block, two expansions,
# progressive priors across blocks, LePE, SF-FFN, selection down to the last layer.
TINY = {
    "embed_dim": 12,
    "num_heads": 2,
    "ffn_hidden": 8,
    "depths": (2, 2, 2),
    "dlsg_local": 3,
    "dlsg_samples": 3,
    "k_schedule": (18, 12, 16, 12, 12, 8),
    "expand_ks": (8, 8),
    "expand_k1": (4, 3),
    "expand_k2": (3, 2),
    "num_feat": 8,
}

# Paper Tables 4-6 (IET) and Table 5 (IET-light): parameters at x2, x3, x4.
PAPER_PARAMS = {
    ("iet", 2): 19.7e6,
    ("iet", 3): 19.9e6,
    ("iet", 4): 19.8e6,
    ("iet-light", 2): 783e3,
    ("iet-light", 3): 790e3,
    ("iet-light", 4): 801e3,
}


def test_registered() -> None:
    assert {"iet", "iet-light"} <= set(list_models())


@pytest.mark.parametrize(("name", "scale"), sorted(PAPER_PARAMS))
def test_parameter_count_within_two_percent_of_the_paper(name: str, scale: int) -> None:
    with torch.device("meta"):  # no memory, no init cost: only the shapes matter
        model = create_model(name, scale)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / PAPER_PARAMS[name, scale] - 1) < 0.02, (name, scale, count)


def test_config_is_json_and_round_trips() -> None:
    model = create_model("iet-light", 3, **TINY)
    cfg = json.loads(json.dumps(model.config))
    assert cfg["embed_dim"] == 12 and cfg["upsampler"] == "pixelshuffledirect"
    assert cfg["train_dilation"] == 2 and cfg["eval_dilation"] == 3
    again = create_model("iet-light", 3, **cfg)
    assert again.config == model.config
    assert IETConfig(**cfg) == IETConfig(**model.config)
    assert model.model_name == "iet-light" and model.scale == 3 and model.pad_multiple == 1


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"no_such_field": 1}, "no_such_field"),
        ({"embed_dim": 10, "num_heads": 3}, "divisible"),
        ({"upsampler": "nearest"}, "upsampler"),
        ({"k_schedule": (18, 12, 16)}, "k_schedule"),
        ({"rpb_blocks": 2}, "rpb_blocks"),
    ],
)
def test_bad_overrides(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("iet", 2, **{**TINY, **overrides})


@pytest.mark.parametrize(
    ("name", "scale", "batch", "size"),
    [
        ("iet", 2, 2, (13, 11)),  # odd sizes, batch 2, not a multiple of anything
        ("iet", 3, 1, (4, 5)),  # smaller than the DLSG region and than the local window
        ("iet", 4, 1, (1, 7)),  # a single row
        ("iet-light", 2, 2, (9, 6)),
        ("iet-light", 4, 1, (2, 3)),
    ],
)
def test_output_shapes_train_and_eval(name: str, scale: int, batch: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name, scale, **TINY)
    x = torch.rand(batch, 3, *size)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (batch, 3, size[0] * scale, size[1] * scale)
        assert torch.isfinite(y).all()


def test_eval_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(1)
    model = create_model("iet", 2, **TINY).eval()
    x = torch.rand(2, 3, 10, 9)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:], single, rtol=1e-5, atol=1e-5)


def test_dilation_changes_candidates_not_parameters() -> None:
    torch.manual_seed(2)
    model = create_model("iet", 2, **{**TINY, "dlsg_samples": 4, "k_schedule": (25, 12, 16, 12, 12, 8)}).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 24, 22)
    s2 = model.initial_state(1, 24, 22, 2, x.device)
    s3 = model.initial_state(1, 24, 22, 3, x.device)
    assert s2.index.shape == s3.index.shape  # same K: the number of samples is fixed
    assert not torch.equal(s2.index, s3.index)
    with torch.no_grad():
        y3 = model(x)  # eval: dilation 3
        y2 = model(x, dilation=2)
        model.set_dilation(2)
        y2b = model(x)
    assert model.current_dilation() == 2
    model.set_dilation(None)
    assert model.current_dilation() == 3
    model.train()
    assert model.current_dilation() == 2
    assert not torch.allclose(y2, y3)
    assert torch.equal(y2, y2b)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="dilation"):
        model.set_dilation(0)


def test_training_draws_fresh_candidates_from_the_global_rng() -> None:
    model = create_model("iet", 2, **TINY).train()
    x = torch.rand(1, 3, 20, 20)
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    b = model(x)
    c = model(x)
    assert torch.equal(a, b)  # reproducible given the RNG state
    assert not torch.equal(b, c)  # a new random DLSG draw


@pytest.mark.parametrize("name", ["iet", "iet-light"])
def test_every_parameter_receives_a_gradient(name: str) -> None:
    torch.manual_seed(4)
    model = create_model(name, 2, **TINY).train()
    y = model(torch.rand(2, 3, 11, 10))
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_rejects_bad_input() -> None:
    model = create_model("iet", 2, **TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="dilation"):
        model(torch.rand(1, 3, 8, 8), dilation=0)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op returns (numel)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", ["iet", "iet-light"])
def test_no_tensor_grows_faster_than_the_pixel_count(name: str) -> None:
    """No dense N x N map outside the sparse ops: on meta tensors (full-size model, shapes only; the
    custom ops report only their outputs), 4x the pixels gives at most ~4x the largest intermediate
    (an N x N map would give 16x). Inside the ops, the torch CPU backend may build a (B, H, N, N+1)
    map for small N (see sr_layers.iea); the Triton kernels never do."""
    with torch.device("meta"):
        model = create_model(name, 2).eval()
    largest = []
    for side in (24, 48):
        mode = _LargestOutput()
        with torch.no_grad(), mode:
            model(torch.rand(1, 3, side, side, device="meta"))
        largest.append(mode.largest)
    assert largest[1] <= 4.1 * largest[0], largest


@pytest.mark.gpu
def test_cuda_kernels_match_the_cpu_reference() -> None:
    torch.manual_seed(5)
    model = create_model("iet", 2, **TINY).eval()
    x = torch.rand(2, 3, 19, 17)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():
            ref = model(x)
            out = model.cuda()(x.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_peak_memory_is_linear_in_the_pixel_count() -> None:
    model = create_model("iet-light", 2).cuda().eval()
    peaks = []
    for h in (96, 192):
        x = torch.rand(1, 3, h, 160, device="cuda")
        with torch.no_grad():
            model(x)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            model(x)
            torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] <= 2.2 * peaks[0], peaks


def test_safetensors_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sr_models.checkpoint import load_checkpoint, save_safetensors

    torch.manual_seed(6)
    model = create_model("iet-light", 3, **TINY).eval()
    path = save_safetensors(model, tmp_path / "iet.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file saved with today's fields loads without a warning
        again = load_checkpoint(path).eval()
    assert again.model_name == "iet-light" and again.scale == 3 and again.config == model.config
    x = torch.rand(1, 3, 9, 8)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def _legacy_file(tmp_path, model):  # type: ignore[no-untyped-def]
    """``model`` saved as a checkpoint written before issue 16: its config without ``expand_ks``."""
    import json

    from safetensors.torch import load_file, save_file

    from sr_models.checkpoint import save_safetensors

    path = save_safetensors(model, tmp_path / "old.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    del cfg["expand_ks"]
    meta["config"] = json.dumps(cfg)
    save_file(load_file(str(path)), str(path), metadata=meta)
    return path


def test_checkpoint_saved_before_the_defaults_changed_loads_as_trained_with_a_warning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sr_models.checkpoint import load_checkpoint

    torch.manual_seed(8)
    # what such a file held: the all-K output and expansion layers keeping their whole list (k_s = K)
    legacy = {**TINY, "av_on_selected": False, "expand_ks": (12, 12)}
    model = create_model("iet", 2, **legacy).eval()
    path = _legacy_file(tmp_path, model)
    with pytest.warns(UserWarning, match="saved before the IET defaults changed"):
        again = load_checkpoint(path)
    assert again.config["expand_ks"] == [12, 12] and again.config["av_on_selected"] is False
    x = torch.rand(1, 3, 9, 8)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    # today's defaults compute something else with the same weights
    today = create_model("iet", 2, **{**TINY, "av_on_selected": True}).eval()
    today.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(today(x), model(x))


def test_plain_state_dict_of_the_old_default_gives_a_one_line_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sr_models.checkpoint import CheckpointError, load_checkpoint

    old = {**TINY, "dlsg_local": 8, "dlsg_samples": 12, "k_schedule": (208, 12, 16, 12, 12, 8)}
    model = create_model("iet", 2, **old)
    path = tmp_path / "old.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="dlsg_samples=12") as err:
        load_checkpoint(path, name="iet", scale=2)
    assert "\n" not in str(err.value) and ".safetensors" in str(err.value)
