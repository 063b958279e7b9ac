"""Real-world GAN training: U-Net discriminator, VGG19 perceptual loss and its weight files, the
presets, and exact resume of both networks (10 + resume + 10 == 20 iterations)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sr_train.checkpoint import list_checkpoints, load_checkpoint_file
from sr_train.cli import main
from sr_train.config import resolve_config
from sr_train.discriminator import UNetDiscriminatorSN
from sr_train.errors import ConfigError
from sr_train.perceptual import PerceptualLoss, load_vgg_weights, vgg19_features, vgg19_layer_names
from sr_train.testing import register_tiny_model

FAST = ["--set", "val.max_images=1", "--set", "val.center_crop=16", "--set", "log.progress=false",
        "--set", "log.tensorboard=false", "--set", "train.threads=1", "--set", "train.memory_check=false"]

# torchvision's vgg19().features: the indices of its 16 convolutions (conv1_1 ... conv5_4)
TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


# ----------------------------------------------------------------------------- VGG19


def test_vgg19_layout_matches_torchvision_keys() -> None:
    f = vgg19_features()
    convs = [i for i, m in enumerate(f) if isinstance(m, torch.nn.Conv2d)]
    assert convs == TORCHVISION_CONV_INDICES and len(f) == 37
    names = vgg19_layer_names()
    assert [names[i] for i in (2, 7, 16, 25, 34)] == ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"]
    assert f[34].weight.shape == (512, 512, 3, 3) and f[0].weight.shape == (64, 3, 3, 3)


def _fake_torchvision_file(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {f"features.{k}": torch.randn(v.shape, generator=g) for k, v in vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the classifier is ignored
    torch.save(state, path)
    return state


def test_vgg_weights_load_from_a_torchvision_file(tmp_path) -> None:
    state = _fake_torchvision_file(tmp_path / "vgg19-dcbb9e9d.pth")
    f = vgg19_features("conv2_2")
    assert "VGG19 weights from" in load_vgg_weights(f, str(tmp_path / "vgg19-dcbb9e9d.pth"))
    assert torch.equal(f[7].weight, state["features.7.weight"])


def test_vgg_weight_errors_name_file_and_setting(tmp_path, monkeypatch) -> None:
    f = vgg19_features("conv1_2")
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=r"nope\.pth.*loss\.perceptual\.weights") as err:
        load_vgg_weights(f, str(missing))
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"hub/checkpoints/vgg19-dcbb9e9d.pth.*torchvision's cache"):
        load_vgg_weights(f, None)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"partial.pth.*no tensor 'features.0.bias'"):
        load_vgg_weights(f, str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot read VGG19 weights.*junk.pth"):
        load_vgg_weights(f, str(tmp_path / "junk.pth"))


def test_perceptual_loss_is_the_weighted_sum_of_pre_relu_features() -> None:
    loss = PerceptualLoss({"conv1_2": 0.1, "conv2_2": 1.0}, weights="random")
    assert len(loss.features) == 8  # truncated after conv2_2 (index 7)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = loss.features

    def tap(t: torch.Tensor, upto: int) -> torch.Tensor:
        t = (t - mean) / std
        for m in list(feats)[: upto + 1]:
            t = m(t)
        return t

    want = 0.1 * F.l1_loss(tap(x, 2), tap(y, 2)) + 1.0 * F.l1_loss(tap(x, 7), tap(y, 7))
    torch.testing.assert_close(loss(x, y), want)
    assert (loss.extract(x)["conv1_2"] < 0).any()  # before the ReLU
    assert float(loss(x, x)) == 0.0
    assert not any(p.requires_grad for p in loss.parameters())
    with pytest.raises(ConfigError, match="conv9_9"):
        PerceptualLoss({"conv9_9": 1.0}, weights="random")


# ----------------------------------------------------------------------------- discriminator


def test_unet_discriminator_shapes_names_and_spectral_norm() -> None:
    torch.manual_seed(0)
    d = UNetDiscriminatorSN(3, num_feat=8)
    out = d(torch.rand(2, 3, 32, 24))
    assert out.shape == (2, 1, 32, 24)
    keys = set(d.state_dict())
    assert {"conv0.weight", "conv0.bias", "conv1.weight_orig", "conv1.weight_u", "conv1.weight_v", "conv9.bias"} <= keys
    assert "conv1.bias" not in keys and "conv8.weight_orig" in keys
    for _ in range(40):  # power iterations converge: the effective weight has spectral norm ~1
        d(torch.rand(1, 3, 16, 16))
    w = d.conv2.weight.detach().flatten(1)
    assert abs(float(torch.linalg.matrix_norm(w, ord=2)) - 1) < 0.02
    with pytest.raises(ValueError, match="divisible by 8"):
        d(torch.rand(1, 3, 20, 16))


# ----------------------------------------------------------------------------- presets and config


def test_presets_resolve_with_the_papers_numbers() -> None:
    s1 = resolve_config("esc-real")  # default preset of esc-real: stage 1
    assert s1["preset"] == "esc-real-psnr" and s1["model"]["scale"] == 4
    assert s1["data"]["batch_size"] == 48 and s1["data"]["patch_size"] == 64 and s1["train"]["iters"] == 400000
    assert s1["degradation"]["preset"] == "realesrgan-x4plus" and s1["loss"]["adversarial_weight"] == 0
    with pytest.raises(ConfigError, match=r"model.init_from"):
        resolve_config("esc-real", preset="esc-real-gan")
    s2 = resolve_config("esc-real", preset="esc-real-gan", sets=["model.init_from=x.safetensors"])
    lo = s2["loss"]
    assert (lo["pixel_weight"], lo["perceptual_weight"], lo["adversarial_weight"]) == (1.0, 1.0, 0.1)
    assert lo["perceptual"]["layer_weights"] == {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0,
                                                 "conv5_4": 1.0}
    assert s2["gan"]["lr"] == 1e-4 and s2["optim"]["adamw"]["betas"] == [0.9, 0.99]
    assert s2["degradation"]["preset"] == "realesrgan-x4plus" and s2["data"]["batch_size"] == 48
    q = resolve_config("esc-real", preset="quick-gan")
    assert q["loss"]["perceptual"]["weights"] == "random" and q["train"]["iters"] == 20
    with pytest.raises(ConfigError, match=r"loss.usm_targets"):
        resolve_config("esc-real", preset="quick-gan", sets=["loss.usm_targets=[colour]"])
    with pytest.raises(ConfigError, match="all 0"):
        resolve_config("esc-real", preset="quick-gan", sets=["loss.pixel_weight=0", "loss.perceptual_weight=0",
                                                             "loss.adversarial_weight=0"])
    with pytest.raises(ConfigError, match="divisible by 8"):
        resolve_config("esc-real", preset="quick-gan", sets=["data.patch_size=15"])


def test_missing_vgg_file_is_a_one_line_cli_error(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["--model", "esc-real", "--preset", "quick-gan", "--out", str(out), *FAST,
               "--set", f"loss.perceptual.weights={tmp_path / 'vgg19.pth'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and not out.exists()
    assert len(err) == 1 and "vgg19.pth" in err[0] and "loss.perceptual.weights" in err[0]


# ----------------------------------------------------------------------------- training


def _tiny_gan(tmp_path: Path, name: str, iters: int, *extra: str) -> list[str]:
    tiny = register_tiny_model()
    return ["--model", tiny, "--preset", "quick-gan", "--iters", str(iters), "--out", str(tmp_path / name),
            "--set", "data.patch_size=8", "--set", "data.batch_size=2", "--set", "gan.num_feat=8",
            "--set", "degradation.pool_size=4", "--set", "val.every=0", *FAST, *extra]


def _same(a: object, b: object) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_gan_resume_is_exact_for_both_networks(tmp_path, capsys) -> None:
    assert main(_tiny_gan(tmp_path, "a", 20)) == 0
    assert main(_tiny_gan(tmp_path, "b", 10)) == 0
    assert main([*_tiny_gan(tmp_path, "b", 20), "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "discriminator UNetDiscriminatorSN" in out and "degradation: realesrgan-x4plus" in out
    sa = load_checkpoint_file(list_checkpoints(tmp_path / "a")[-1][1])
    sb = load_checkpoint_file(list_checkpoints(tmp_path / "b")[-1][1])
    assert sa["iteration"] == sb["iteration"] == 20
    for key in ("model", "ema"):
        for name, t in sa[key].items():
            assert torch.equal(t, sb[key][name]), f"{key}.{name}"
    ga, gb = sa["gan"], sb["gan"]
    for name, t in ga["net_d"].items():
        assert torch.equal(t, gb["net_d"][name]), f"net_d.{name}"
    for pid, st in ga["d_optimizer"]["state"].items():
        for k, v in st.items():
            assert _same(v, gb["d_optimizer"]["state"][pid][k]), f"d_optimizer {pid}.{k}"
    for pid, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            assert _same(v, sb["optimizer"]["state"][pid][k]), f"optimizer {pid}.{k}"
    assert torch.equal(ga["degradation_rng"][0], gb["degradation_rng"][0])
    assert ga["pool"][0]["filled"] == 4 and torch.equal(ga["pool"][0]["hr"], gb["pool"][0]["hr"])
    # the discriminator trained: its weights left their initial values
    start = load_checkpoint_file(list_checkpoints(tmp_path / "b")[0][1]) if len(list_checkpoints(tmp_path / "b")) > 1 else None
    assert start is None or not torch.equal(start["gan"]["net_d"]["conv0.weight"], ga["net_d"]["conv0.weight"])
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert any('"l_g_gan"' in ln and '"l_d_real"' in ln and '"l_percep"' in ln for ln in lines)


def test_adversarial_loss_alone_moves_the_generator(tmp_path) -> None:
    args = _tiny_gan(tmp_path, "adv", 2, "--set", "loss.pixel_weight=0", "--set", "loss.perceptual_weight=0",
                     "--set", "loss.adversarial_weight=1", "--set", "train.ema_decay=0", "--set", "degradation.pool_size=0")
    assert main(args) == 0
    from sr_train.trainer import build_model, seed_everything

    cfg = resolve_config(register_tiny_model(), preset="quick-gan", sets=["data.patch_size=8"])
    seed_everything(cfg["train"]["seed"])
    init = build_model(cfg).state_dict()
    final = load_checkpoint_file(list_checkpoints(tmp_path / "adv")[-1][1])["model"]
    assert any(not torch.equal(init[k], final[k]) for k in init)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gan_run_keeps_both_networks_in_sync(tmp_path) -> None:
    import socket
    import time

    import torch.multiprocessing as mp

    from sr_train.testing import TINY_NAME, ddp_worker

    register_tiny_model()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = resolve_config(TINY_NAME, preset="quick-gan", sets=[
        "data.patch_size=8", "data.batch_size=4", "train.accumulate=2", "train.iters=4", "gan.num_feat=8",
        "degradation.pool_size=2", "checkpoint.every=2", "val.max_images=2", "val.center_crop=16", "train.threads=1",
        "train.memory_check=false", "log.progress=false", "log.tensorboard=false", "train.device=cpu",
        f"out={tmp_path / 'run'}"])
    ctx = mp.start_processes(ddp_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 150
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail("DDP GAN run did not finish in 150 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for key in ("model", "discriminator"):
        for name, t in r0[key].items():
            assert torch.equal(t, r1[key][name]), f"{key}.{name}"
    state = load_checkpoint_file(list_checkpoints(tmp_path / "run")[-1][1])
    rngs = state["gan"]["degradation_rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0], rngs[1])  # each rank degrades its own images
    assert len(state["gan"]["pool"]) == 2
    for name, t in state["gan"]["net_d"].items():
        assert torch.equal(t, r0["discriminator"][name])


@pytest.mark.parametrize("model", ["iet", "iet-light", "esc", "esc-light", "sst", "sscan"])
def test_other_recipes_stay_plain_pixel_training(model: str) -> None:
    from sr_train.gan_config import realworld_enabled

    cfg = resolve_config(model)
    assert not realworld_enabled(cfg) and not realworld_enabled(resolve_config(model, preset="quick"))
