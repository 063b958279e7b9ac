"""Config sections of real-world (degradation + perceptual + GAN) training and their checks.

Kept free of torch so that ``sr_train.config`` stays light. The sections (defaults in
:data:`sr_train.config.DEFAULTS`):

* ``degradation``: ``preset`` (null: train on the dataset's LR, as before; a name of sr-data's
  degradation presets, e.g. ``realesrgan-x4plus``, or a YAML file: every step makes the LR batch
  from the HR batch on the training device), ``overrides`` (keys of that preset; its ``scale``
  always follows ``model.scale``), ``sharpen_input`` (degrade the USM-sharpened HR, as Real-ESRGAN
  and Real-ESRNet do), ``pool_size`` (Real-ESRGAN's ``queue_size`` pair pool; 0: off), ``seed``
  (of the degradation generator; null: ``train.seed``; rank r adds r);
* ``loss``: ``pixel_weight`` (of ``train.loss``), ``perceptual_weight``, ``adversarial_weight``,
  ``usm_targets`` (which losses compare against the USM-sharpened HR: any of pixel, perceptual,
  adversarial; Real-ESRGAN's ``l1_gt_usm``, ``percep_gt_usm``, ``gan_gt_usm``), ``perceptual``
  (``weights``: path | null for torchvision's cache | random; ``layer_weights``, ``criterion``,
  ``input_norm``, ``range_norm``);
* ``gan``: the discriminator (``num_feat``, ``skip_connection``) and its Adam optimizer (``lr``,
  ``betas``, ``eps``, ``weight_decay``); its lr follows the generator's schedule.

Real-world training is on when :func:`realworld_enabled` says so; otherwise the trainer runs
exactly as before.
"""

from __future__ import annotations

from typing import Any

from sr_train.errors import ConfigError

USM_TARGETS = ("pixel", "perceptual", "adversarial")


def realworld_enabled(cfg: dict[str, Any]) -> bool:
    """True when the config asks for anything beyond plain pixel-loss training on dataset LR."""
    d, lo = cfg["degradation"], cfg["loss"]
    return bool(d["preset"] or lo["perceptual_weight"] or lo["adversarial_weight"] or lo["pixel_weight"] != 1.0
                or lo["usm_targets"])


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} {what}, got {value!r}")


def validate_realworld(cfg: dict[str, Any]) -> None:
    """Type/range checks of the ``degradation``, ``loss`` and ``gan`` sections; ConfigError names the key."""
    d, lo, g = cfg["degradation"], cfg["loss"], cfg["gan"]
    _check(d["preset"] is None or (isinstance(d["preset"], str) and d["preset"]), "degradation.preset",
           "must be null, a degradation preset name or a YAML file", d["preset"])
    _check(isinstance(d["overrides"], dict), "degradation.overrides", "must be a mapping", d["overrides"])
    _check(isinstance(d["sharpen_input"], bool), "degradation.sharpen_input", "must be true or false", d["sharpen_input"])
    _check(isinstance(d["pool_size"], int) and not isinstance(d["pool_size"], bool) and d["pool_size"] >= 0,
           "degradation.pool_size", "must be an integer >= 0", d["pool_size"])
    _check(d["seed"] is None or (isinstance(d["seed"], int) and not isinstance(d["seed"], bool)), "degradation.seed",
           "must be null or an integer", d["seed"])
    for key in ("pixel_weight", "perceptual_weight", "adversarial_weight"):
        _check(_num(lo[key]) and lo[key] >= 0, f"loss.{key}", "must be a number >= 0", lo[key])
    if not (lo["pixel_weight"] or lo["perceptual_weight"] or lo["adversarial_weight"]):
        raise ConfigError("config keys 'loss.pixel_weight', 'loss.perceptual_weight' and 'loss.adversarial_weight' "
                          "are all 0: nothing to train")
    _check(isinstance(lo["usm_targets"], list) and all(t in USM_TARGETS for t in lo["usm_targets"]), "loss.usm_targets",
           f"must be a list of {', '.join(USM_TARGETS)}", lo["usm_targets"])
    p = lo["perceptual"]
    _check(p["weights"] is None or (isinstance(p["weights"], str) and p["weights"]), "loss.perceptual.weights",
           "must be a file path, random, or null (torchvision's cache)", p["weights"])
    _check(isinstance(p["layer_weights"], dict) and p["layer_weights"] and all(_num(v) for v in p["layer_weights"].values()),
           "loss.perceptual.layer_weights", "must map VGG19 layer names to numbers", p["layer_weights"])
    _check(p["criterion"] in ("l1", "mse"), "loss.perceptual.criterion", "must be l1 or mse", p["criterion"])
    for key in ("input_norm", "range_norm"):
        _check(isinstance(p[key], bool), f"loss.perceptual.{key}", "must be true or false", p[key])
    _check(isinstance(g["num_feat"], int) and not isinstance(g["num_feat"], bool) and g["num_feat"] > 0, "gan.num_feat",
           "must be a positive integer", g["num_feat"])
    _check(isinstance(g["skip_connection"], bool), "gan.skip_connection", "must be true or false", g["skip_connection"])
    for key in ("lr", "eps", "weight_decay"):
        _check(_num(g[key]) and g[key] >= 0, f"gan.{key}", "must be a number >= 0", g[key])
    _check(isinstance(g["betas"], list | tuple) and len(g["betas"]) == 2 and all(_num(b) and 0 <= b < 1 for b in g["betas"]),
           "gan.betas", "must be two numbers in [0, 1)", g["betas"])
    if lo["adversarial_weight"] and cfg["data"]["patch_size"] * cfg["model"]["scale"] % 8:
        raise ConfigError(f"the U-Net discriminator needs HR patches divisible by 8: data.patch_size "
                          f"({cfg['data']['patch_size']}) x model.scale ({cfg['model']['scale']}) is not")
