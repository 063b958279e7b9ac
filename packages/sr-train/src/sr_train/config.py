"""The training configuration: defaults, presets, user files and ``--set`` overrides.

A config is a plain nested dict. It is resolved in this order, later layers winning:

1. :data:`DEFAULTS` (every key that exists, with its default value),
2. the preset (``sr_train/presets/<name>.yaml``; a model's default preset when none is named),
3. the user's ``--config FILE.yaml``,
4. the named command-line options (``--scale``, ``--dataset``, ``--iters`` ...),
5. ``--set a.b=value`` overrides (values parsed as YAML: ``1e-3``, ``[1, 2]``, ``null``, ``true``).

``schedule.reference_iters``, when left None, becomes ``train.iters`` as layers 1-3 set it: the run
length the preset's warm-up and milestones were written for (``schedule.rescale`` scales them by
``train.iters / reference_iters``).

A key that :data:`DEFAULTS` does not have is an error naming the key, except below the free-form
sections in :data:`FREE_FORM` (model constructor overrides, dataset options, recipe notes).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sr_train.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "preset": None,  # set by resolve_config: the preset the config was built from
    "out": None,  # run directory; None -> runs/<model>_x<scale>_<preset>
    "model": {
        "name": None,
        "scale": 2,
        "overrides": {},  # keyword overrides passed to sr_models.create_model
        "init_from": None,  # weights to start from (.safetensors or an sr-train checkpoint): stage 2, x3/x4
        "init_strict": False,  # False: load matching tensors, interpolate the upsampler across scales
        "require_init": False,  # True (stage 2, fine-tunes): refuse to start without model.init_from
    },
    "data": {
        "dataset": "sample",  # sample|div2k|flickr2k|df2k|lsdir|diverseg|dflip|folder
        "root": None,
        "patch_size": 64,  # LR patch side; the HR patch is patch_size * scale
        "batch_size": 16,  # GLOBAL batch (summed over all ranks); must divide by the world size
        "num_workers": 0,  # DataLoader workers per rank (0: load in the training process)
        "lr_source": "bicubic",
        "seed": 0,  # seeds the sampling order and sr-data's per-sample augmentation
        "options": {},  # extra keyword arguments for sr_data.build_train_dataset
        # arbitrary-scale training (LTE, ESC+LTE): sr_data.build_continuous_train_dataset items (LR
        # patch_size at a per-item scale U[scale_min, scale_max], sample_q HR coordinates), L1 on them
        "continuous": {"enabled": False, "scale_min": 1.0, "scale_max": 4.0, "sample_q": 2304},
    },
    "optim": {
        "muon": {
            "enabled": False,  # True: Muon on convolution kernels, AdamW on everything else
            "lr": 1.0e-3,
            "momentum": 0.95,
            "nesterov": True,
            "ns_steps": 5,
            "weight_decay": 0.0,
            "lr_adjust": "original",  # original: sqrt(max(1, rows/cols)); match_rms_adamw: 0.2*sqrt(max(rows, cols))
            "exclude": [],  # regexes on parameter names kept out of Muon (sent to AdamW)
        },
        "adamw": {
            "lr": 5.0e-4,
            "betas": [0.9, 0.9],
            "eps": 1.0e-8,
            "weight_decay": 0.0,  # applied to AdamW matrices; never to norms and biases
        },
        "grad_clip": None,  # max global gradient norm, or None for no clipping
    },
    "schedule": {
        "warmup_iters": 0,  # linear warm-up from 0 over the first N iterations
        "milestones": [],  # absolute iterations after which the lr is multiplied by gamma
        "gamma": 0.5,
        # true: warm-up and milestones are scaled by train.iters / reference_iters (a short run keeps
        # the recipe's shape); false (the default): they stay absolute, as the recipe wrote them
        "rescale": False,
        "reference_iters": None,  # the run length the schedule was written for; None -> the preset's train.iters
    },
    "train": {
        "iters": 500000,
        "accumulate": 1,  # micro-steps per iteration: data.batch_size stays the effective batch (split in K)
        "loss": "l1",  # l1|mse|charbonnier
        "ema_decay": 0.999,  # 0 or None disables the EMA (validation then uses the live weights)
        # warm-up of the EMA decay: update t (0-based) uses min(ema_decay, (1 + t) / (10 + t)), so
        # the average follows the live weights from the first steps (timm/TF style); it reaches
        # 0.999 after ~9k iterations, so long recipes are unaffected. false: ema_decay from step 1
        "ema_warmup": True,
        # before the first step, measure one training step's memory at a small batch, scale it to
        # the configured batch and stop with a one-line message when it cannot fit the free memory
        "memory_check": True,
        # CPU threads of the training process: auto -> the cores not already busy (1-minute load
        # average) minus DataLoader workers, at least 1 (2 OpenMP threads on 2 busy cores run up to
        # 6x slower than 1); a resumed run keeps its first run's count. An integer fixes it.
        "threads": "auto",
        "precision": "fp32",  # fp32|bf16 (bf16 autocast; weights and optimizer state stay fp32)
        "seed": 0,  # global RNG seed; rank r uses seed + r
        "device": "auto",  # auto|cpu|cuda
    },
    "val": {
        "dataset": "sample",
        "root": None,
        "every": 5000,  # iterations between validations (0: only at the end)
        "max_images": None,
        "center_crop": None,  # crop LR images to this side (HR to side*scale) for fast validation
        "tile": None,  # tile size for sr_eval.upscale_tensor, None for whole images
    },
    "log": {
        "every": 100,  # iterations between JSONL/TensorBoard loss records
        "tensorboard": True,
        "progress": True,
    },
    "checkpoint": {
        "every": 5000,  # iterations between checkpoints (a last one is always written at the end)
        "keep_last": 3,
        "export_safetensors": True,  # EMA weights with model name, scale and config as metadata
    },
    "recipe": {},  # notes on the full recipe (dataset, GPUs, hours), printed at the end of a run
    # real-world training (Real-ESRGAN degradation, perceptual and adversarial losses): sr_train.gan_config
    "degradation": {
        "preset": None,  # null: the dataset's LR; realesrgan-x4plus (sr-data) or a YAML file: LR made on the device
        "overrides": {},  # keys of the degradation preset (its scale follows model.scale)
        "sharpen_input": True,  # degrade the USM-sharpened HR (Real-ESRGAN and Real-ESRNet)
        "pool_size": 0,  # Real-ESRGAN's training pair pool (queue_size 180); 0: off
        "seed": None,  # degradation generator seed; null: train.seed (rank r adds r)
    },
    "loss": {
        "pixel_weight": 1.0,  # weight of train.loss
        "perceptual_weight": 0.0,  # VGG19 perceptual loss (Real-ESRGAN: 1.0)
        "adversarial_weight": 0.0,  # vanilla GAN loss with the U-Net discriminator (Real-ESRGAN: 0.1)
        "usm_targets": [],  # losses whose target is the USM-sharpened HR: pixel, perceptual, adversarial
        "perceptual": {
            "weights": None,  # VGG19 weights file; null: torchvision's cache; random: tests only
            "layer_weights": {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0},
            "criterion": "l1",
            "input_norm": True,  # ImageNet mean/std
            "range_norm": False,  # map [-1, 1] to [0, 1] first
        },
    },
    "gan": {  # Real-ESRGAN's UNetDiscriminatorSN and its Adam (lr follows the generator's schedule)
        "num_feat": 64,
        "skip_connection": True,
        "lr": 1.0e-4,
        "betas": [0.9, 0.99],
        "eps": 1.0e-8,
        "weight_decay": 0.0,
    },
}

FREE_FORM: frozenset[str] = frozenset({"model.overrides", "data.options", "recipe", "degradation.overrides",
                                       "loss.perceptual.layer_weights"})
PRESET_META_KEYS: frozenset[str] = frozenset({"description", "applies_to", "default_for", "extends"})
_PRESET_PACKAGE = "sr_train.presets"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` and ``5e5`` as numbers (YAML 1.1 needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# ----------------------------------------------------------------------------- merging


def _is_free_form(path: str) -> bool:
    return any(path == f or path.startswith(f + ".") for f in FREE_FORM)


def merge_into(base: dict[str, Any], update: Mapping[str, Any], *, source: str, prefix: str = "") -> None:
    """Deep-merge ``update`` into ``base`` in place; unknown keys raise ConfigError naming key and source."""
    if not isinstance(update, Mapping):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {type(update).__name__}")
    for key, value in update.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {key!r}")
        path = f"{prefix}{key}"
        if key not in base and not _is_free_form(path):
            known = ", ".join(sorted(base)) if base else "none"
            raise ConfigError(f"{source}: unknown config key {path!r} (known keys here: {known})")
        free = _is_free_form(path)
        if isinstance(base.get(key), dict) and not free and not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {path!r} is a section; set its fields ({path}.<field>) instead")
        if isinstance(base.get(key), dict) and isinstance(value, Mapping) and base.get(key):
            merge_into(base[key], value, source=source, prefix=path + ".")
        elif free and value is not None and not isinstance(value, Mapping) and isinstance(base.get(key), dict):
            raise ConfigError(f"{source}: {path!r} must be a mapping, got {value!r}")
        else:
            base[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)


def parse_set(item: str) -> dict[str, Any]:
    """Turn ``"a.b.c=value"`` into ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.adamw.lr=2e-4")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from None
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; ConfigError naming the file if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


# ----------------------------------------------------------------------------- presets


def _preset_files() -> dict[str, Any]:
    root = importlib.resources.files(_PRESET_PACKAGE)
    return {f.name[: -len(".yaml")]: f for f in root.iterdir() if f.name.endswith(".yaml")}


def list_presets() -> list[str]:
    """Names of the bundled presets (``sr_train/presets/*.yaml``), sorted."""
    return sorted(_preset_files())


@functools.cache
def _read_preset(name: str) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(files))}")
    data = yaml.load(files[name].read_text(encoding="utf-8"), Loader=_Loader) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name!r} must hold a mapping")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The raw preset mapping ``name`` (including its meta keys ``description``, ``applies_to`` ...)."""
    return copy.deepcopy(_read_preset(name))


def default_preset(model: str) -> str | None:
    """The preset whose ``default_for`` lists ``model``, or None if no preset claims it."""
    for name in list_presets():
        if model in (load_preset(name).get("default_for") or []):
            return name
    return None


def find_preset(model: str, preset: str | None) -> str | None:
    """Resolve ``--preset`` for ``model``; None when no preset is named and the model has no default.

    A preset is found by its full name (``iet-stage2``) or by its suffix after a family prefix
    (``stage2``, ``finetune-x4``) among the presets whose ``applies_to`` lists the model. A named
    preset that does not apply to the model, or an unknown name, is a ConfigError.
    """
    if preset is None:
        return default_preset(model)
    names = list_presets()
    usable = [n for n in names if model in (load_preset(n).get("applies_to") or [model])]
    if preset in names:
        if preset not in usable:
            applies = load_preset(preset).get("applies_to") or []
            raise ConfigError(f"preset {preset!r} is for models {', '.join(applies)}, not {model!r}")
        return preset
    matches = [n for n in usable if n.endswith("-" + preset)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:  # e.g. iet-finetune-x4 and iet-light-finetune-x4 both end in finetune-x4
        exact = [n for n in matches if n == f"{model}-{preset}"]
        if exact:
            return exact[0]
    raise ConfigError(f"unknown preset {preset!r} for model {model!r}; presets for it: {', '.join(usable) or 'none'}")


def preset_layers(model: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    """The (name, mapping) layers a preset expands to: ``extends: default`` puts the model's default
    preset first, ``extends: <preset name>`` that preset (e.g. quick-gan over esc-real-gan). Meta keys
    are removed."""
    raw = load_preset(name)
    layers: list[tuple[str, dict[str, Any]]] = []
    if raw.get("extends") == "default":
        base = default_preset(model)
        if base is not None:  # a model without a default preset starts from DEFAULTS
            layers += preset_layers(model, base)
    elif isinstance(raw.get("extends"), str) and raw["extends"] in list_presets() and raw["extends"] != name:
        layers += preset_layers(model, raw["extends"])
    elif raw.get("extends") is not None:
        raise ConfigError(f"preset {name!r}: 'extends' must be 'default' or another preset's name, got {raw['extends']!r}")
    layers.append((name, {k: v for k, v in raw.items() if k not in PRESET_META_KEYS}))
    return layers


# ----------------------------------------------------------------------------- resolution


def resolve_config(
    model: str,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    cli: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> dict[str, Any]:
    """Build the fully resolved config for ``model`` (see the module docstring for the layer order).

    ``cli`` is a nested mapping of the named command-line options that were given (None values are
    ignored by the caller before this point). Raises ConfigError naming the key or file at fault.
    """
    cfg = copy.deepcopy(DEFAULTS)
    preset_name = find_preset(model, preset)
    if preset_name is not None:
        for layer_name, data in preset_layers(model, preset_name):
            if isinstance(data.get("recipe"), dict):  # which preset the recipe notes describe
                data["recipe"].setdefault("preset", layer_name)
            merge_into(cfg, data, source=f"preset {layer_name!r}")
    cfg["preset"] = preset_name
    if config_file is not None:
        merge_into(cfg, load_yaml_file(config_file), source=f"config file {str(config_file)!r}")
    schedule_length = cfg["train"]["iters"]  # what the preset / config file wrote the schedule for
    if cli:
        merge_into(cfg, cli, source="command line")
    for item in sets:
        merge_into(cfg, parse_set(item), source=f"--set {item.partition('=')[0]}")
    cfg["model"]["name"] = model
    if cfg["schedule"]["reference_iters"] is None:
        cfg["schedule"]["reference_iters"] = _integral(schedule_length)
    validate_config(cfg)
    if cfg["out"] is None:
        cfg["out"] = str(Path("runs") / f"{model}_x{cfg['model']['scale']}_{preset_name or 'default'}")
    return cfg


def _check(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} {what}, got {value!r}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_INT_KEYS = (
    "model.scale", "data.patch_size", "data.batch_size", "data.continuous.sample_q", "data.num_workers", "data.seed", "optim.muon.ns_steps",
    "schedule.warmup_iters", "schedule.milestones", "schedule.reference_iters", "train.iters", "train.accumulate",
    "train.seed", "val.every", "val.max_images",
    "val.center_crop", "val.tile", "log.every", "checkpoint.every", "checkpoint.keep_last",
    "degradation.pool_size", "degradation.seed", "gan.num_feat",
)


def _integral(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_integral(x) for x in v]
    return v


def validate_config(cfg: dict[str, Any]) -> None:
    """Check value types and ranges (integral floats such as ``5e5`` become ints in place).

    Raises ConfigError naming the first bad key.
    """
    for path in _INT_KEYS:
        section, _, key = path.rpartition(".")
        node = cfg
        for part in section.split("."):
            node = node[part]
        node[key] = _integral(node[key])
    m, d, o, s, t, v, lg, c = (cfg[k] for k in ("model", "data", "optim", "schedule", "train", "val", "log", "checkpoint"))
    _check(isinstance(m["name"], str) and m["name"], "model.name", "must be a model name", m["name"])
    _check(m["scale"] in (2, 3, 4) and _int(m["scale"]), "model.scale", "must be 2, 3 or 4", m["scale"])
    _check(isinstance(m["overrides"], dict), "model.overrides", "must be a mapping", m["overrides"])
    _check(m["init_from"] is None or isinstance(m["init_from"], str), "model.init_from", "must be a path or null",
           m["init_from"])
    if m["require_init"] and not m["init_from"]:
        raise ConfigError(f"preset {cfg.get('preset')!r} starts from trained weights: set --set model.init_from=PATH "
                          "(or --set model.require_init=false to train from scratch)")
    _check(isinstance(d["dataset"], str), "data.dataset", "must be a dataset name", d["dataset"])
    for key in ("patch_size", "batch_size"):
        _check(_int(d[key]) and d[key] > 0, f"data.{key}", "must be a positive integer", d[key])
    _check(_int(d["num_workers"]) and d["num_workers"] >= 0, "data.num_workers", "must be an integer >= 0", d["num_workers"])
    _check(_int(d["seed"]), "data.seed", "must be an integer", d["seed"])
    _check(isinstance(d["options"], dict), "data.options", "must be a mapping", d["options"])
    cs = d["continuous"]
    _check(isinstance(cs["enabled"], bool), "data.continuous.enabled", "must be true or false", cs["enabled"])
    _check(_num(cs["scale_min"]) and _num(cs["scale_max"]) and 1 <= cs["scale_min"] <= cs["scale_max"],
           "data.continuous.scale_min/scale_max", "must satisfy 1 <= scale_min <= scale_max", (cs["scale_min"], cs["scale_max"]))
    _check(_int(cs["sample_q"]) and 1 <= cs["sample_q"], "data.continuous.sample_q", "must be a positive integer",
           cs["sample_q"])
    if cs["enabled"] and cs["sample_q"] > d["patch_size"] ** 2:
        raise ConfigError(f"config key 'data.continuous.sample_q' ({cs['sample_q']}) must not exceed data.patch_size^2 "
                          f"({d['patch_size'] ** 2}, the HR pixels of a patch at scale 1)")
    mu, aw = o["muon"], o["adamw"]
    _check(isinstance(mu["enabled"], bool), "optim.muon.enabled", "must be true or false", mu["enabled"])
    for key in ("lr", "momentum", "weight_decay"):
        _check(_num(mu[key]) and mu[key] >= 0, f"optim.muon.{key}", "must be a number >= 0", mu[key])
    _check(_int(mu["ns_steps"]) and mu["ns_steps"] > 0, "optim.muon.ns_steps", "must be a positive integer", mu["ns_steps"])
    _check(mu["lr_adjust"] in ("original", "match_rms_adamw"), "optim.muon.lr_adjust",
           "must be 'original' or 'match_rms_adamw'", mu["lr_adjust"])
    _check(isinstance(mu["exclude"], list), "optim.muon.exclude", "must be a list of regexes", mu["exclude"])
    for key in ("lr", "eps", "weight_decay"):
        _check(_num(aw[key]) and aw[key] >= 0, f"optim.adamw.{key}", "must be a number >= 0", aw[key])
    _check(isinstance(aw["betas"], list | tuple) and len(aw["betas"]) == 2 and all(_num(b) and 0 <= b < 1 for b in aw["betas"]),
           "optim.adamw.betas", "must be two numbers in [0, 1)", aw["betas"])
    _check(o["grad_clip"] is None or (_num(o["grad_clip"]) and o["grad_clip"] > 0), "optim.grad_clip",
           "must be null or a positive number", o["grad_clip"])
    _check(_int(s["warmup_iters"]) and s["warmup_iters"] >= 0, "schedule.warmup_iters", "must be an integer >= 0", s["warmup_iters"])
    _check(isinstance(s["milestones"], list) and all(_int(x) and x > 0 for x in s["milestones"]),
           "schedule.milestones", "must be a list of positive integers", s["milestones"])
    _check(_num(s["gamma"]) and s["gamma"] > 0, "schedule.gamma", "must be a positive number", s["gamma"])
    _check(isinstance(s["rescale"], bool), "schedule.rescale", "must be true or false", s["rescale"])
    _check(s["reference_iters"] is None or (_int(s["reference_iters"]) and s["reference_iters"] > 0),
           "schedule.reference_iters", "must be null or a positive integer", s["reference_iters"])
    _check(_int(t["iters"]) and t["iters"] > 0, "train.iters", "must be a positive integer", t["iters"])
    _check(_int(t["accumulate"]) and t["accumulate"] >= 1, "train.accumulate", "must be an integer >= 1", t["accumulate"])
    if d["batch_size"] % t["accumulate"]:
        raise ConfigError(f"config key 'train.accumulate' ({t['accumulate']}) must divide data.batch_size "
                          f"({d['batch_size']}): the batch is split into that many micro-batches")
    _check(isinstance(t["ema_warmup"], bool), "train.ema_warmup", "must be true or false", t["ema_warmup"])
    _check(isinstance(t["memory_check"], bool), "train.memory_check", "must be true or false", t["memory_check"])
    _check(t["threads"] == "auto" or (_int(t["threads"]) and t["threads"] >= 1), "train.threads",
           "must be 'auto' or a positive integer", t["threads"])
    _check(t["loss"] in ("l1", "mse", "charbonnier"), "train.loss", "must be l1, mse or charbonnier", t["loss"])
    _check(t["ema_decay"] is None or (_num(t["ema_decay"]) and 0 <= t["ema_decay"] < 1), "train.ema_decay",
           "must be null or a number in [0, 1)", t["ema_decay"])
    _check(t["precision"] in ("fp32", "bf16"), "train.precision", "must be fp32 or bf16", t["precision"])
    _check(_int(t["seed"]), "train.seed", "must be an integer", t["seed"])
    _check(t["device"] in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda", t["device"])
    _check(v["dataset"] is None or isinstance(v["dataset"], str), "val.dataset", "must be a dataset name or null", v["dataset"])
    _check(_int(v["every"]) and v["every"] >= 0, "val.every", "must be an integer >= 0", v["every"])
    for key in ("max_images", "center_crop", "tile"):
        _check(v[key] is None or (_int(v[key]) and v[key] > 0), f"val.{key}", "must be null or a positive integer", v[key])
    _check(_int(lg["every"]) and lg["every"] > 0, "log.every", "must be a positive integer", lg["every"])
    _check(_int(c["every"]) and c["every"] >= 0, "checkpoint.every", "must be an integer >= 0", c["every"])
    _check(_int(c["keep_last"]) and c["keep_last"] >= 1, "checkpoint.keep_last", "must be an integer >= 1", c["keep_last"])
    from sr_train.gan_config import validate_realworld

    validate_realworld(cfg)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (keys in definition order)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)
