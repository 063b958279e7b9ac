"""The training loop (BasicSR's, iteration based): data, model, Muon/AdamW, schedule, EMA, validation,
checkpoints and logs, single-process or under torchrun/DDP.

Order of events per iteration ``it`` (1-based): set the lr for ``it``; read batch ``it - 1`` of the
resumable sampler; split it into ``train.accumulate`` micro-batches and for each run the forward
(bf16 autocast if asked), the loss divided by the micro-step count and the backward (under DDP the
gradients are all-reduced only on the last micro-step); optional clipping, step; EMA update; log;
validate (every ``val.every``: the EMA and the live weights); checkpoint (every
``checkpoint.every``). Everything that can fail on bad input (model, preset, data, resume
checkpoint, a batch that cannot fit the free memory) is checked before the run directory is created
or any file is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sr_train.checkpoint import (
    CKPT_DIR,
    FORMAT_VERSION,
    capture_rng_state,
    check_compatible,
    export_weights,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    restore_rng_state,
    save_checkpoint,
)
from sr_train.config import dump_config
from sr_train.cpu_threads import apply_threads, resolve_threads
from sr_train.distributed import DistEnv, all_reduce_sum, any_rank, cleanup_distributed, init_distributed
from sr_train.ema import ModelEMA
from sr_train.errors import CheckpointWriteError, ConfigError, MemoryCheckError, ResumeError, TrainError
from sr_train.gan_config import realworld_enabled
from sr_train.interrupt import StopRequest, TrainingInterrupted, ignore_stop_signals_in_worker
from sr_train.optim import build_optimizer, describe_groups
from sr_train.sampler import EpochIndexedDataset, ResumableBatchSampler
from sr_train.schedule import WarmupMultiStepLR, effective_schedule, schedule_warning
from sr_train.validate import validate

Log = Callable[[str], None]


@dataclass
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    iteration: int
    last_checkpoint: Path | None
    weights: Path | None
    val: dict[str, float] = field(default_factory=dict)  # psnr/ssim (EMA if any), psnr_raw/ssim_raw with an EMA
    final_loss: float = float("nan")
    model: nn.Module | None = None  # the trained (unwrapped) model
    ema_model: nn.Module | None = None  # its EMA copy (None without EMA)
    discriminator: nn.Module | None = None  # real-world GAN training's discriminator (sr_train.gan)


# ----------------------------------------------------------------------------- builders


def build_model(cfg: dict[str, Any]) -> nn.Module:
    """``sr_models.create_model`` for the config's model section; ConfigError on an unknown name/field."""
    import sr_models

    m = cfg["model"]
    if m["name"] not in sr_models.list_models():
        raise ConfigError(f"unknown model {m['name']!r}; known models: {', '.join(sr_models.list_models())}")
    try:
        return sr_models.create_model(m["name"], scale=m["scale"], **m["overrides"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {m['name']!r} x{m['scale']} with overrides {m['overrides']}: {exc}") from None


def _check_root(root: Any, key: str) -> None:
    if root is not None and not Path(root).exists():
        raise ConfigError(f"config key {key!r}: data root {str(root)!r} does not exist")


def build_datasets(cfg: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """(training patches, validation images or None) from sr-data; DataError/ValueError -> ConfigError."""
    import sr_data

    d, v, scale = cfg["data"], cfg["val"], cfg["model"]["scale"]
    _check_root(d["root"], "data.root")
    if d["dataset"] != "sample" and d["root"] is None and d["dataset"] not in ("div2k", "df2k", "flickr2k", "lsdir",
                                                                                "diverseg", "dflip"):
        raise ConfigError(f"config key 'data.root': dataset {d['dataset']!r} needs --data-root")
    try:
        cs = d["continuous"]
        if cs["enabled"]:  # arbitrary-scale training: LR patches at random scales, sampled HR coordinates
            train_ds = sr_data.build_continuous_train_dataset(
                d["dataset"], root=d["root"], patch_size=d["patch_size"], scale_min=float(cs["scale_min"]),
                scale_max=float(cs["scale_max"]), sample_q=cs["sample_q"], seed=d["seed"], **d["options"],
            )
        else:
            train_ds = sr_data.build_train_dataset(
                d["dataset"], root=d["root"], scale=scale, patch_size=d["patch_size"], lr_source=d["lr_source"],
                seed=d["seed"], **d["options"],
            )
    except (ValueError, OSError, TypeError) as exc:
        raise ConfigError(f"training data ({d['dataset']}): {exc}") from None
    if len(train_ds) == 0:  # type: ignore[arg-type]
        raise ConfigError(f"training data ({d['dataset']}): no usable images")
    val_ds = None
    if v["dataset"]:
        _check_root(v["root"], "val.root")
        try:
            val_ds = sr_data.build_eval_dataset(v["dataset"], root=v["root"], scale=scale)
        except (ValueError, OSError, TypeError) as exc:
            raise ConfigError(f"validation data ({v['dataset']}): {exc}") from None
        if len(val_ds) == 0:  # type: ignore[arg-type]
            raise ConfigError(f"validation data ({v['dataset']}): no usable images")
    return train_ds, val_ds


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Pixel loss by name: ``l1`` (mean absolute error), ``mse``, ``charbonnier`` (eps 1e-3)."""
    if name == "l1":
        return F.l1_loss
    if name == "mse":
        return F.mse_loss
    if name == "charbonnier":
        return lambda sr, hr: torch.sqrt((sr - hr) ** 2 + 1e-6).mean()
    raise ConfigError(f"config key 'train.loss': unknown loss {name!r}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds the legacy global RNG other code may use)
    torch.manual_seed(seed)


def export_metadata(ema: ModelEMA | None) -> dict[str, str]:
    """Safetensors metadata naming which weights an export holds: ``sr_train_weights`` is ``ema`` (with
    ``sr_train_ema_decay``, ``sr_train_ema_warmup`` and ``sr_train_ema_updates``) or ``raw``."""
    if ema is None:
        return {"sr_train_weights": "raw"}
    return {"sr_train_weights": "ema", "sr_train_ema_decay": str(ema.decay), "sr_train_ema_warmup": str(ema.warmup).lower(),
            "sr_train_ema_updates": str(ema.updates)}


class MetricsLog:
    """JSONL metrics file plus TensorBoard events, written by rank 0 only.

    A run that starts at iteration ``start`` (a resume, or 0 for a fresh run in a directory left
    without checkpoints) first truncates ``metrics.jsonl`` to the records of iterations up to
    ``start`` (dropping a half-written last line too; rewritten atomically), and opens TensorBoard
    with ``purge_step=start + 1``, which makes TensorBoard discard the earlier events after
    ``start``: no iteration appears twice. ``dropped`` counts the JSONL records removed.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, start: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.dropped = self._truncate(start) if enabled else 0
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            old_events = any((run_dir / "tb").glob("events.out.tfevents.*"))
            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start + 1 if old_events else None)

    def _truncate(self, start: int) -> int:
        if not self.path.is_file():
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                ok = int(rec["iter"]) <= start
            except (ValueError, KeyError, TypeError):
                ok = False  # a half-written line of a crashed run
            if ok:
                keep.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            from sr_train.checkpoint import atomic_write

            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(keep), encoding="utf-8"))
        return dropped

    def write(self, iteration: int, values: dict[str, float], kind: str) -> None:
        if not self.enabled:
            return
        rec = {"iter": iteration, "kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- the run


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two resolved configs (ignoring ``train.iters`` and ``recipe``)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and k != "train.iters" and not k.startswith("recipe."))


def _gather_rng(env: DistEnv) -> list[dict[str, Any]]:
    state = capture_rng_state()
    if not env.distributed:
        return [state]
    out: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(out, state)
    return out


def _interrupted(signame: str, done: int, iters: int, start: int, ckpt: Path | None,
                 weights: Path | None) -> TrainingInterrupted:
    """The exception (and one-line message) of a run stopped by ``signame`` after iteration ``done``."""
    if done == start and start == 0:
        msg = f"stopped by {signame} before iteration 1 finished; nothing was saved (a rerun starts from iteration 0)"
        return TrainingInterrupted(msg, iteration=0, checkpoint=None, weights=None)
    if done == start:
        msg = (f"stopped by {signame} before iteration {start + 1} finished; nothing new to save: "
               f"{ckpt or 'the checkpoint resumed from'} holds iteration {start}; continue with --resume auto")
        return TrainingInterrupted(msg, iteration=start, checkpoint=ckpt, weights=None)
    saved = f"saved {ckpt} (model, EMA, optimizer, schedule, RNG states and data position at iteration {done})"
    if weights is not None:
        saved += f" and {weights}"
    msg = f"stopped by {signame} after iteration {done} of {iters}: {saved}; continue with --resume auto"
    return TrainingInterrupted(msg, iteration=done, checkpoint=ckpt, weights=weights)


def _check_memory(cfg: dict[str, Any], env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
                  criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], autocast_dtype: torch.dtype | None,
                  log: Log) -> None:
    """The pre-flight memory check (:mod:`sr_train.memory`); MemoryCheckError on every rank if any rank
    cannot fit one step. Skipped (with a note) where memory cannot be measured."""
    from sr_train.memory import describe, free_memory, measure_step_memory, memory_message, plan_memory

    d, t = cfg["data"], cfg["train"]
    free = free_memory(env.device)
    micro = d["batch_size"] // env.world_size // t["accumulate"]
    ddp_buckets = sum(p.numel() * p.element_size() for p in model.parameters()) if env.distributed else 0
    step = None
    probe_model, probe_loss, probe_scale = model, criterion, cfg["model"]["scale"]
    if d["continuous"]["enabled"]:  # the step queries sample_q coordinates, not a whole HR patch
        from sr_train.continuous import SampledQueryProbe

        probe_model, probe_scale = SampledQueryProbe(model, d["continuous"]["sample_q"]), 1
        probe_loss = SampledQueryProbe.loss(criterion)
    if free is not None:
        step = measure_step_memory(probe_model, device=env.device, patch=d["patch_size"], scale=probe_scale,
                                   micro_batch=micro, loss_fn=probe_loss, autocast_dtype=autocast_dtype,
                                   optimizer=optimizer, extra_fixed_bytes=ddp_buckets, budget_bytes=free)
    message = ""
    if step is None or free is None:
        log("memory check: skipped (the free or used memory of this device cannot be read)")
    else:
        plan = plan_memory(step, batch_size=d["batch_size"], world_size=env.world_size, accumulate=t["accumulate"],
                           free_bytes=free)
        if plan.fits:
            log(describe(step, plan, env.device))
        else:
            message = memory_message(plan, model=cfg["model"]["name"], scale=cfg["model"]["scale"],
                                     batch_size=d["batch_size"], patch=d["patch_size"], accumulate=t["accumulate"],
                                     device=str(env.device))
    if any_rank(bool(message), env):
        raise MemoryCheckError(message or "not enough memory for one training step on another process")


def train(cfg: dict[str, Any], *, resume: str | None = None, log: Log = print) -> RunResult:
    """Run the training described by the resolved config ``cfg`` (see :func:`sr_train.config.resolve_config`).

    ``resume``: None (fresh run; error if the run directory already has checkpoints), ``"auto"``
    (newest checkpoint of the run directory, fresh if none) or a checkpoint file / run directory.
    Initialises and tears down the process group when launched by torchrun. The torch thread count
    set for the run (``train.threads``) is restored on return.
    """
    env = init_distributed(cfg["train"]["device"])
    threads_before = torch.get_num_threads()
    try:
        return _train(cfg, env, resume=resume, log=log if env.is_main else (lambda _msg: None))
    finally:
        cleanup_distributed()
        apply_threads(threads_before)


def _train(cfg: dict[str, Any], env: DistEnv, *, resume: str | None, log: Log) -> RunResult:
    t_cfg, d_cfg, o_cfg, s_cfg, c_cfg, v_cfg = (cfg[k] for k in ("train", "data", "optim", "schedule", "checkpoint", "val"))
    name, scale = cfg["model"]["name"], cfg["model"]["scale"]
    run_dir = Path(cfg["out"])
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} is an existing file, not a directory; choose another --out")
    accumulate = t_cfg["accumulate"]
    if d_cfg["batch_size"] % (env.world_size * accumulate):
        raise ConfigError(f"config key 'data.batch_size' ({d_cfg['batch_size']}) is the global batch and must "
                          f"divide by the number of processes ({env.world_size}) times train.accumulate ({accumulate})")
    per_rank_batch = d_cfg["batch_size"] // env.world_size
    note = schedule_warning(s_cfg, t_cfg["iters"])
    if note:
        log(note)

    # --- everything that can fail on bad input, before anything is written
    ckpt_state = None
    ckpt_path = None
    if resume is None:
        existing = list_checkpoints(run_dir)
        if existing:
            raise ResumeError(f"run directory {str(run_dir)!r} already holds checkpoints (up to iteration "
                              f"{existing[-1][0]}); pass --resume auto to continue it or choose another --out")
    else:
        ckpt_path = find_resume_checkpoint(resume, run_dir)
        if ckpt_path is None:
            log(f"--resume auto: no checkpoint in {run_dir / CKPT_DIR}; starting from iteration 0")
        if ckpt_path is not None:
            ckpt_state = load_checkpoint_file(ckpt_path)
            check_compatible(ckpt_state, model=name, scale=scale, path=ckpt_path)
            if ckpt_state["iteration"] >= t_cfg["iters"]:
                raise ResumeError(f"checkpoint {str(ckpt_path)!r} is at iteration {ckpt_state['iteration']}, "
                                  f"not before train.iters={t_cfg['iters']}; raise --iters to train further")
    threads = None
    if env.device.type == "cpu" or t_cfg["threads"] != "auto":
        threads, why = resolve_threads(t_cfg["threads"], workers=d_cfg["num_workers"],
                                       resumed=(ckpt_state or {}).get("threads"))
        apply_threads(threads)
        if env.device.type == "cpu":
            log(f"CPU threads: {threads} ({why}; --set train.threads=N to choose)")
    seed_everything(t_cfg["seed"] + env.rank)
    model = build_model(cfg)
    train_ds, val_ds = build_datasets(cfg)
    if ckpt_state is None and cfg["model"]["init_from"]:
        from sr_train.transfer import load_init_weights

        rep = load_init_weights(model, cfg["model"]["init_from"], scale=scale, strict=cfg["model"]["init_strict"])
        log(f"init from {cfg['model']['init_from']}: {len(rep['copied'])} copied, {len(rep['interpolated'])} "
            f"interpolated across scales, {len(rep['skipped'])} skipped, {len(rep['missing'])} missing")

    model.to(env.device)
    ema = ModelEMA(model, t_cfg["ema_decay"], warmup=t_cfg["ema_warmup"]) if t_cfg["ema_decay"] else None
    optimizer = build_optimizer(model, o_cfg)
    warmup_iters, milestones = effective_schedule(s_cfg, t_cfg["iters"])
    if s_cfg["rescale"]:
        log(f"schedule rescaled to {t_cfg['iters']} of {s_cfg['reference_iters']} iterations: warm-up {warmup_iters}, "
            f"milestones {milestones}")
    scheduler = WarmupMultiStepLR(optimizer, warmup_iters=warmup_iters, milestones=milestones, gamma=s_cfg["gamma"])
    stage = None  # real-world training: degradation, perceptual and adversarial losses (sr_train.gan)
    if realworld_enabled(cfg):
        from sr_train.gan import RealWorldStage

        stage = RealWorldStage(cfg, env, warmup_iters=warmup_iters, milestones=milestones, log=log)
    start = 0
    if ckpt_state is not None:
        try:
            model.load_state_dict(ckpt_state["model"])
            if ema is not None and ckpt_state.get("ema") is not None:
                ema.load_state_dict(ckpt_state["ema"])
            optimizer.load_state_dict(ckpt_state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(f"checkpoint {str(ckpt_path)!r} does not fit this model/optimizer: "
                              f"{str(exc).splitlines()[0]}") from None
        scheduler.load_state_dict(ckpt_state["scheduler"])
        if stage is not None:
            stage.load_state_dict(ckpt_state.get("gan"), ckpt_path)
        if ema is not None:  # one EMA update per iteration (checkpoints before the warm-up had no counter)
            ema.updates = int(ckpt_state.get("ema_updates", ckpt_state["iteration"]))
        rngs = ckpt_state["rng"]
        restore_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
        start = int(ckpt_state["iteration"])
        changed = _config_changes(ckpt_state.get("config") or {}, cfg)
        if changed:
            log(f"note: resuming with config changes against the checkpoint: {', '.join(changed[:8])}")
        # A different world size changes the data order; the run still continues from the same step.
        if ckpt_state.get("world_size", 1) != env.world_size:
            log(f"warning: checkpoint written with {ckpt_state.get('world_size')} processes, resuming with "
                f"{env.world_size}: the data order differs from an uninterrupted run")

    criterion = loss_function(t_cfg["loss"])
    autocast_dtype = torch.bfloat16 if t_cfg["precision"] == "bf16" else None
    if t_cfg["memory_check"]:
        _check_memory(cfg, env, model, optimizer, criterion, autocast_dtype, log)

    # --- the run directory (rank 0 writes)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_text = dump_config(cfg)
        cfg_file = run_dir / "config.yaml" if start == 0 else run_dir / f"config_resume_{start:08d}.yaml"
        cfg_file.write_text(cfg_text, encoding="utf-8")
    metrics = MetricsLog(run_dir, enabled=env.is_main, tensorboard=cfg["log"]["tensorboard"], start=start)
    if metrics.dropped:
        log(f"dropped {metrics.dropped} record(s) after iteration {start} from {metrics.path} "
            "(they were logged after the checkpoint); TensorBoard hides the events after it too")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {name} x{scale}: {n_params:,} parameters; preset {cfg['preset']}; device {env.device}; "
        f"{env.world_size} process(es); global batch {d_cfg['batch_size']} of {d_cfg['patch_size']}x{d_cfg['patch_size']} LR patches"
        + (f" in {accumulate} micro-steps" if accumulate > 1 else ""))
    log(describe_groups(optimizer.param_groups))
    log(f"run directory: {run_dir}" + (f" (resuming from {ckpt_path} at iteration {start})" if start else ""))

    train_model: nn.Module = model
    if env.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    sampler = ResumableBatchSampler(len(train_ds), per_rank_batch, seed=d_cfg["seed"], rank=env.rank,  # type: ignore[arg-type]
                                    world_size=env.world_size, start_step=start)
    # A private generator: creating the loader's iterator must not draw from the global torch RNG,
    # whose state a resumed run has just restored (worker seeds do not affect the data: sr-data seeds
    # every item by (seed, epoch, index)).
    loader = DataLoader(EpochIndexedDataset(train_ds), batch_sampler=sampler, num_workers=d_cfg["num_workers"],
                        pin_memory=env.device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(d_cfg["seed"] + env.rank),
                        worker_init_fn=ignore_stop_signals_in_worker)
    batches = iter(loader)
    eval_model = ema.module if ema is not None else model

    def run_validation(it: int) -> dict[str, float]:
        if val_ds is None:
            return {}
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
            res = validate(eval_model, val_ds, scale=scale, env=env, val_cfg=v_cfg, precision=t_cfg["precision"])
            if ema is not None:  # the live weights too: a young EMA can trail them by several dB
                raw = validate(model, val_ds, scale=scale, env=env, val_cfg=v_cfg, precision=t_cfg["precision"])
                res = {**res, "psnr_raw": raw["psnr"], "ssim_raw": raw["ssim"]}
        line = (f"[iter {it}] validation ({v_cfg['dataset']}, {res['images']} images): "
                f"{'EMA' if ema else 'live'} weights PSNR {res['psnr']:.3f} dB  SSIM {res['ssim']:.4f}")
        if ema is not None:
            line += f"; live weights PSNR {res['psnr_raw']:.3f} dB  SSIM {res['ssim_raw']:.4f}"
        log(line)
        metrics.write(it, {k: res[k] for k in ("psnr", "ssim", "psnr_raw", "ssim_raw") if k in res}, "val")
        return res

    weights_path = run_dir / "weights" / f"{name}_x{scale}.safetensors"

    def write_checkpoint(it: int) -> Path | None:
        rngs = _gather_rng(env)
        gan_state = stage.state_dict() if stage is not None else None  # every rank (it gathers)
        error = ""
        path = None
        if env.is_main:
            state = {
                "format": "sr-train", "format_version": FORMAT_VERSION, "model_name": name, "scale": scale,
                "iteration": it, "world_size": env.world_size, "threads": threads, "config": cfg,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema": ema.state_dict() if ema is not None else None,
                "ema_updates": ema.updates if ema is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
            }
            if gan_state is not None:
                state["gan"] = gan_state
            try:
                path = save_checkpoint(run_dir, it, state, keep_last=c_cfg["keep_last"])
                if c_cfg["export_safetensors"]:
                    export_weights(eval_model, weights_path, extra_metadata={
                        "sr_train_iteration": str(it), "sr_train_config": json.dumps(cfg),
                        **export_metadata(ema)})
            except CheckpointWriteError as exc:
                error = str(exc)
        if any_rank(bool(error), env):
            raise CheckpointWriteError(error or "checkpoint write failed on rank 0")
        return path

    iters = t_cfg["iters"]
    log_every = cfg["log"]["every"]
    from tqdm import tqdm

    bar = tqdm(total=iters, initial=start, disable=not (env.is_main and cfg["log"]["progress"]), dynamic_ncols=True,
               unit="it", desc=f"{name} x{scale}", mininterval=0.5)
    last_ckpt = None
    val_res: dict[str, float] = {}
    loss_sum, loss_n, loss_val = 0.0, 0, float("nan")
    t_last, it_last = time.perf_counter(), start
    train_model.train()
    stop = StopRequest()
    done_it, saved_it = start, start  # last finished iteration; iteration of the newest checkpoint

    def stopping() -> bool:  # every rank stops at the same iteration
        return any_rank(stop.requested, env) if env.distributed else stop.requested

    def validating() -> Any:  # a signal while validating stops at once (single process only)
        return contextlib.nullcontext() if env.distributed else stop.at_once()

    stop.install()
    try:
        for it in range(start + 1, iters + 1):
            scheduler.set_iteration(it)
            batch = next(batches)
            optimizer.zero_grad(set_to_none=True)
            micro_batches: Any = ()
            if stage is not None:  # real-world training makes its own batch and losses (sr_train.gan)
                loss = stage.generator_backward(batch, train_model, accumulate=accumulate, criterion=criterion,
                                                autocast_dtype=autocast_dtype)
            else:
                lr_parts = batch["lr"].to(env.device, non_blocking=True).chunk(accumulate)
                # continuous-scale batches (data.continuous): the target is the RGB at sampled coordinates
                queries = "coord" in batch
                hr_parts = batch["gt" if queries else "hr"].to(env.device, non_blocking=True).chunk(accumulate)
                no_queries = (None,) * len(lr_parts)
                coord_parts = batch["coord"].to(env.device, non_blocking=True).chunk(accumulate) if queries else no_queries
                cell_parts = batch["cell"].to(env.device, non_blocking=True).chunk(accumulate) if queries else no_queries
                micro_batches = zip(lr_parts, hr_parts, coord_parts, cell_parts, strict=True)
                loss = torch.zeros((), device=env.device)
            for k, (lr_img, hr_img, coord, cell) in enumerate(micro_batches):
                # DDP all-reduces the gradients on the last micro-step only
                sync = k == accumulate - 1 or not env.distributed
                with contextlib.nullcontext() if sync else train_model.no_sync():  # type: ignore[operator]
                    with torch.autocast(env.device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        if coord is not None:
                            sr = train_model(lr_img, coord=coord, cell=cell)
                        else:
                            sr = train_model(lr_img)
                    micro_loss = criterion(sr.float(), hr_img)
                    if accumulate > 1:  # equal micro-batches: the mean of their means is the batch mean
                        micro_loss = micro_loss / accumulate
                    micro_loss.backward()
                loss += micro_loss.detach()
            if o_cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o_cfg["grad_clip"])
            optimizer.step()
            if ema is not None:
                ema.update(model)
            if stage is not None:
                stage.discriminator_step(it)
                stage.end_iteration()
            loss_val = loss.item()
            loss_sum += loss_val
            loss_n += 1
            lr_now = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr_now:.2e}", refresh=False)
            bar.update(1)
            if it % log_every == 0 or it == iters:
                mean_loss = all_reduce_sum([loss_sum, float(loss_n)], env)
                if not math.isfinite(mean_loss[0]):  # checked on the reduced value: every rank stops together
                    raise TrainError(f"the loss became {mean_loss[0]} by iteration {it}; lower the learning rate "
                                     "(optim.*.lr) or enable optim.grad_clip")
                now = time.perf_counter()
                rate = (it - it_last) / max(now - t_last, 1e-9)
                rec = {"loss": mean_loss[0] / max(mean_loss[1], 1), "it_per_s": rate,
                       "samples_per_s": rate * d_cfg["batch_size"]}
                rec.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
                if stage is not None:
                    rec.update(stage.pop_means())
                metrics.write(it, rec, "train")
                loss_sum, loss_n, t_last, it_last = 0.0, 0, now, it
            done_it = it
            if v_cfg["every"] and it % v_cfg["every"] == 0 and it != iters:
                with validating():
                    val_res = run_validation(it)
            if c_cfg["every"] and it % c_cfg["every"] == 0 and it != iters:
                last_ckpt, saved_it = write_checkpoint(it), it
            if stopping():
                raise KeyboardInterrupt
        bar.close()
        with validating():
            val_res = run_validation(iters) or val_res
        last_ckpt = write_checkpoint(iters)
    except KeyboardInterrupt:
        if not stop.requested or stop.count > 1:
            raise  # not our signal, or a second one: stop now, without saving
        bar.close()
        if done_it > saved_it:
            last_ckpt, saved_it = write_checkpoint(done_it), done_it
        raise _interrupted(stop.name, done_it, iters, start, last_ckpt or ckpt_path,
                           weights_path if c_cfg["export_safetensors"] and saved_it == done_it > start else None) from None
    finally:
        stop.restore()
        bar.close()
        metrics.close()
    return RunResult(run_dir=run_dir, iteration=iters, last_checkpoint=last_ckpt,
                     weights=weights_path if c_cfg["export_safetensors"] else None, val=val_res, final_loss=loss_val,
                     model=model, ema_model=ema.module if ema is not None else None,
                     discriminator=stage.net_d if stage is not None else None)
