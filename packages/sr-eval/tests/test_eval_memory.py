"""Issue 17, case 1: memory-bounded inference (probe, free memory, planning, tiling, isolation).

The reported failure: ``sr-upscale DIR -o OUT`` with no ``--tile`` on a folder holding one large
photo was killed by the OOM killer (exit 137), 0 of 12 images written. Here a model that needs
24 kB per LR pixel (``safety-hungry``) plays the transformer: a 400x300 image would need ~3 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sr_eval.inference import effective_tile, forward_tiled
from sr_eval.memory import (
    SAFETY,
    MemoryCost,
    MemoryPlanError,
    available_memory,
    count_tiles,
    measure_cost,
    outside_bytes,
    parse_size,
    plan_image,
)
from sr_eval.runner import Upscaler

TESTS = str(Path(__file__).parent)
sys.path.insert(0, TESTS)  # the test models, importable by child processes too
import _safety_models as sm  # noqa: E402

MiB = 1 << 20


@pytest.fixture(autouse=True, scope="module")
def _models():
    sm.register()
    yield
    sm.unregister()


def _rand_image(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _child(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the test models registered."""
    prelude = f"import sys; sys.path.insert(0, {TESTS!r}); import _safety_models as sm; sm.register()\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- the probe


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_probe_measures_the_known_per_pixel_cost():
    """The hungry model holds two (B, 3000, h, w) float32 tensors at its peak: 24,000 B per pixel."""
    from sr_models import create_model

    model = create_model(sm.HUNGRY, scale=2).eval()
    cost = measure_cost(model, "cpu")
    assert 0.9 * 24_000 <= cost.per_pixel <= 1.2 * 24_000, cost
    assert measure_cost(model, "cpu") is cost  # measured once per model, device and precision


def test_available_memory_is_meminfo():
    meminfo = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo")}
    free = available_memory("cpu")
    assert free is not None and free <= meminfo["MemAvailable"] * 1.05 + 256 * MiB


@pytest.mark.parametrize(("text", "value"), [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GiB", int(1.5 * (1 << 30))),
                                              ("2048", 2048), ("300mb", 300 << 20)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "G"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


# ----------------------------------------------------------------------------- planning


class _Model(torch.nn.Module):
    def __init__(self, multiple: int, scale: int = 2, min_size: int = 1) -> None:
        super().__init__()
        self.pad_multiple, self.scale, self.min_input_size = multiple, scale, min_size


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), multiple=st.sampled_from([1, 4, 8, 16, 32]),
       per_pixel=st.integers(100, 50_000), budget_mb=st.integers(50, 20_000), overlap=st.sampled_from([0, 8, 32]))
def test_plan_fits_the_budget_and_is_the_largest_tile(h, w, multiple, per_pixel, budget_mb, overlap):
    model = _Model(multiple)
    cost = MemoryCost(fixed=10 * MiB, per_pixel=per_pixel, device="cpu", precision="fp32")
    budget = budget_mb * MiB
    try:
        plan = plan_image(model, cost, h, w, budget=budget, tile_overlap=overlap)
    except MemoryPlanError as exc:
        smallest = effective_tile(1, overlap, multiple)
        est = cost.forward_bytes(min(smallest, -(-h // multiple) * multiple), min(smallest, -(-w // multiple) * multiple))
        assert est + outside_bytes(h, w, 2, tiled=True) > budget, exc
        return
    assert plan.fits and plan.estimate <= budget
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if plan.tile is None:
        assert plan.estimate == cost.forward_bytes(hp, wp) + outside_bytes(h, w, 2, tiled=False)
        return
    assert plan.whole_estimate > budget  # tiled only when the whole image does not fit
    assert plan.tile % multiple == 0 and plan.tiles == count_tiles(h, w, plan.tile, overlap, multiple) > 1
    bigger = plan.tile + multiple
    if bigger < max(hp, wp):
        est = cost.forward_bytes(min(bigger, hp), min(bigger, wp)) + outside_bytes(h, w, 2, tiled=True)
        assert est > budget  # the tile is the largest that fits


def test_explicit_tile_is_kept_and_refused_when_too_big():
    model = _Model(8)
    cost = MemoryCost(fixed=0, per_pixel=10_000, device="cpu", precision="fp32")
    plan = plan_image(model, cost, 1000, 1000, budget=1 << 40, tile=100, auto=False)
    assert plan.tile == 104 and plan.fits  # rounded up to the multiple
    plan = plan_image(model, cost, 1000, 1000, budget=100 * MiB, tile=512, auto=False)
    assert not plan.fits and plan.estimate > 100 * MiB
    assert plan.estimate == int(SAFETY * 10_000 * 512 * 512) + outside_bytes(1000, 1000, 2, tiled=True)


# ----------------------------------------------------------------------------- runner


def test_upscaler_tiles_when_the_budget_is_small_and_says_so():
    from sr_models import create_model

    model = create_model(sm.HUNGRY, scale=2).eval()
    notes: list[str] = []
    up = Upscaler(model, "cpu", max_memory=200 * MiB, note=notes.append, progress=False)
    x = torch.rand(1, 3, 200, 150, generator=torch.Generator().manual_seed(0))
    y, info = up(x, name="big.png")
    assert info.plan.tile is not None and info.plan.tiles > 1
    assert len(notes) == 1 and "big.png (150x200)" in notes[0] and f"{info.plan.tiles} tiles" in notes[0]
    torch.testing.assert_close(y, torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    assert info.peak < 200 * MiB * 1.1  # measured: the plan held
    _small, info_small = up(torch.rand(1, 3, 20, 20), name="small.png")
    assert info_small.plan.tile is None and len(notes) == 1  # small images run whole, silently


def test_upscaler_retries_smaller_tiles_on_an_allocator_failure():
    """An allocation that fails anyway (estimate too low) halves the tile instead of failing the image."""
    from sr_models import create_model

    model = create_model(sm.NEAREST, scale=2).eval()
    calls = []
    real = model.forward

    def flaky(x):
        calls.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > 40 * 40:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(x)

    model.forward = flaky
    notes: list[str] = []
    up = Upscaler(model, "cpu", max_memory=1 << 40, tile_overlap=4, note=notes.append, progress=False)
    up._cost = MemoryCost(fixed=0, per_pixel=1, device="cpu", precision="fp32")  # skip the probe
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    y, info = up(x, name="x.png")
    assert info.retries >= 1 and info.plan.tile is not None and info.plan.tile <= 40
    assert any("out of memory with the whole image" in n for n in notes)
    torch.testing.assert_close(y, torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


def test_forward_tiled_reports_every_tile():
    from sr_models import create_model

    model = create_model(sm.NEAREST, scale=2).eval()
    seen = []
    forward_tiled(model, torch.rand(1, 3, 50, 70), tile=16, tile_overlap=4, progress=lambda d, t: seen.append((d, t)))
    total = count_tiles(50, 70, 16, 4, 4)
    assert seen == [(k, total) for k in range(1, total + 1)]


# ----------------------------------------------------------------------------- the command


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_folder_with_one_huge_image_is_upscaled_within_the_budget(tmp_path):
    """Case 1 reproduced: whole, the 400x300 image needs ~2.9 GB; with a 300 MB budget and no --tile
    every image is written, the big one in tiles, and the process's peak stays within the budget."""
    src = tmp_path / "in"
    src.mkdir()
    big = _rand_image(src / "a_big.png", 300, 400)  # sorts first, as in the report
    small = [_rand_image(src / f"s{k}.png", 20 + k, 24, seed=k + 1) for k in range(3)]
    out = tmp_path / "out"
    res = _child(f"""
        import json
        from sr_eval.memory import _status_kib
        from sr_models import create_model
        from sr_eval import upscale_cli
        create_model({sm.HUNGRY!r}, scale=2)  # imports done, as the command does before its first image
        base = _status_kib("VmRSS")
        rc = upscale_cli.main([{str(src)!r}, "-o", {str(out)!r}, "--model", {sm.HUNGRY!r}, "--scale", "2",
                               "--allow-random-weights", "--device", "cpu", "--max-memory", "300M"])
        print(json.dumps({{"rc": rc, "base": base, "hwm": _status_kib("VmHWM")}}))
    """)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["rc"] == 0, res.stderr
    assert "a_big.png (400x300): the whole image needs about" in res.stderr and "tiles of" in res.stderr
    assert "wrote 4 of 4 image(s)" in res.stderr
    assert info["hwm"] - info["base"] < 300 * MiB * 1.15, (info, res.stderr)
    whole_need = 24_000 * 304 * 400  # what an untiled forward would have added
    assert whole_need > 8 * 300 * MiB
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_big_x2.png")), big.repeat(2, 0).repeat(2, 1))
    for k, arr in enumerate(small):
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"s{k}_x2.png")), arr.repeat(2, 0).repeat(2, 1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_ulimit_v_allocator_limit_is_planned_for_not_a_traceback(tmp_path):
    """Case 6: an allocator failure under `ulimit -v` printed a traceback. The address-space room is
    part of the free memory, so the image is tiled to fit it; an explicit --tile that cannot fit is
    one line, and the command exits 1 after the other images."""
    src = tmp_path / "in"
    src.mkdir()
    _rand_image(src / "big.png", 300, 400)
    _rand_image(src / "small.png", 16, 16)
    res = _child(f"""
        import resource, sys
        from sr_eval.memory import _status_kib
        from sr_models import create_model
        from sr_eval import upscale_cli
        import sr_eval.image_files, sr_eval.runner, cv2, tqdm  # loaded before the limit, like a real run
        create_model({sm.HUNGRY!r}, scale=2)
        resource.setrlimit(resource.RLIMIT_AS, (_status_kib("VmSize") + (700 << 20), resource.RLIM_INFINITY))
        from sr_eval.memory import available_memory
        print("FREE", available_memory("cpu"))  # the address-space room counts as free memory
        common = [{str(src)!r}, "--model", {sm.HUNGRY!r}, "--scale", "2", "--allow-random-weights", "--device", "cpu"]
        rc1 = upscale_cli.main([*common, "-o", {str(tmp_path / "o1")!r}])
        rc2 = upscale_cli.main([*common, "-o", {str(tmp_path / "o2")!r}, "--tile", "400", "--no-progress"])
        print("RC", rc1, rc2)
    """)
    assert res.returncode == 0, res.stderr
    assert "RC 0 1" in res.stdout, res.stderr
    free = int(res.stdout.split("FREE ")[1].split()[0])
    assert free <= 700 * MiB
    assert "Traceback" not in res.stderr
    assert (tmp_path / "o1" / "big_x2.png").is_file() and (tmp_path / "o2" / "small_x2.png").is_file()
    assert not (tmp_path / "o2" / "big_x2.png").exists()
    assert "--tile 400" in res.stderr and "use a smaller --tile, or leave --tile out" in res.stderr


def test_image_too_big_for_any_tile_fails_alone(tmp_path, capsys):
    from sr_eval import upscale_cli

    src = tmp_path / "in"
    src.mkdir()
    _rand_image(src / "big.png", 300, 400)
    _rand_image(src / "small.png", 8, 8)
    rc = upscale_cli.main([str(src), "-o", str(tmp_path / "out"), "--model", sm.HUNGRY, "--scale", "2",
                           "--allow-random-weights", "--device", "cpu", "--max-memory", "8M", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "big.png: 400x300 needs about" in err and "--max-memory" in err
    assert (tmp_path / "out" / "small_x2.png").is_file() and not (tmp_path / "out" / "big_x2.png").exists()


def test_per_tile_progress_with_eta(tmp_path, capsys):
    from sr_eval import upscale_cli

    _rand_image(tmp_path / "a.png", 120, 160)
    rc = upscale_cli.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--model", sm.NEAREST, "--scale",
                           "2", "--allow-random-weights", "--device", "cpu", "--tile", "32", "--tile-overlap", "8"])
    err = capsys.readouterr().err
    assert rc == 0, err
    n = count_tiles(120, 160, 32, 8, 4)
    assert f"{n}/{n}" in err and ("tile/s" in err or "s/tile" in err)  # tqdm: done/total [elapsed<ETA, rate]
    assert "<" in err


def test_memory_line_of_the_readme_matches_the_code():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    from sr_eval import memory

    assert f"{int(memory.BUDGET_FRACTION * 100)} %" in readme and f"{memory.SAFETY}" in readme

