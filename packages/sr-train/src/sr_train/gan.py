"""Real-world training (Real-ESRGAN's recipe) inside sr-train's loop: on-device degradation, pixel +
perceptual + adversarial losses, the U-Net discriminator and its optimizer.

The trainer builds a :class:`RealWorldStage` when :func:`sr_train.gan_config.realworld_enabled` and
then, per iteration ``it``, instead of its plain pixel-loss micro-steps calls
:meth:`RealWorldStage.generator_backward` (the generator's gradients) and
:meth:`RealWorldStage.discriminator_step` (one discriminator update), before its own gradient
clipping, generator step and EMA update. Order of events, as Real-ESRGAN's ``RealESRGANModel``:

1. LR from HR (``degradation.preset``): ``degrade(usm(hr) or hr)`` on the device with the stage's
   generator, then the pair pool; otherwise the dataset's LR;
2. targets: ``usm(hr)`` for the losses listed in ``loss.usm_targets``, else ``hr``;
3. generator: ``pixel_weight * train.loss(sr, t) + perceptual_weight * VGG(sr, t) +
   adversarial_weight * BCE(D(sr), real)`` with the discriminator frozen (its parameters take no
   gradient; the generator's do, through D);
4. discriminator: ``BCE(D(t_adv), real)`` and ``BCE(D(sr.detach()), fake)``, each backpropagated
   separately (two forwards, as Real-ESRGAN; spectral norm does one power iteration per forward),
   then one Adam step. Its lr follows the generator's warm-up/milestone schedule.

Everything a resumed run needs is in :meth:`state_dict`: the discriminator, its optimizer and
schedule, the degradation generator of every process, and the pair pool.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sr_train.distributed import DistEnv, all_reduce_sum
from sr_train.errors import ConfigError, ResumeError
from sr_train.schedule import WarmupMultiStepLR

Log = Any


def _gather(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


class RealWorldStage:
    """Degradation, losses and discriminator of real-world training (module docstring).

    ``cfg``: the resolved config; ``env``: the process's device and rank; ``warmup_iters`` and
    ``milestones``: the generator's effective schedule (the discriminator follows it).
    """

    def __init__(self, cfg: dict[str, Any], env: DistEnv, *, warmup_iters: int, milestones: list[int],
                 log: Log = print) -> None:
        from sr_data.degradations import PairPool, load_degradation_settings

        self.env, self.device = env, env.device
        d, lo, g = cfg["degradation"], cfg["loss"], cfg["gan"]
        scale = cfg["model"]["scale"]
        self.settings = None
        if d["preset"]:
            from sr_data import DataError

            try:
                self.settings = load_degradation_settings(d["preset"], {**d["overrides"], "scale": scale})
            except DataError as exc:
                raise ConfigError(f"config key 'degradation.preset': {exc}") from None
        seed = cfg["train"]["seed"] if d["seed"] is None else d["seed"]
        # its own stream (the global torch RNG also starts from train.seed + rank)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + env.rank + 0x5EED)
        self.pool = PairPool(d["pool_size"] if self.settings is not None else 0)
        per_rank = cfg["data"]["batch_size"] // env.world_size
        if self.pool.size % per_rank:
            raise ConfigError(f"config key 'degradation.pool_size' ({self.pool.size}) must be a multiple of the batch "
                              f"per process ({per_rank} = data.batch_size / {env.world_size} processes)")
        self.sharpen_input = d["sharpen_input"]
        self.usm_targets = set(lo["usm_targets"])
        self.w_pix, self.w_per, self.w_adv = lo["pixel_weight"], lo["perceptual_weight"], lo["adversarial_weight"]
        self.perceptual = None
        if self.w_per:
            from sr_train.perceptual import PerceptualLoss

            p = lo["perceptual"]
            self.perceptual = PerceptualLoss(p["layer_weights"], weights=p["weights"], criterion=p["criterion"],
                                             input_norm=p["input_norm"], range_norm=p["range_norm"]).to(self.device)
            log(f"perceptual loss: {self.perceptual.source}; layers {self.perceptual.layer_weights}")
        self.net_d: nn.Module | None = None
        self.d_optimizer: torch.optim.Optimizer | None = None
        self.d_scheduler: WarmupMultiStepLR | None = None
        self.d_train: nn.Module | None = None
        if self.w_adv:
            from sr_train.discriminator import UNetDiscriminatorSN

            self.net_d = UNetDiscriminatorSN(3, g["num_feat"], g["skip_connection"]).to(self.device)
            self.d_optimizer = torch.optim.Adam(self.net_d.parameters(), lr=g["lr"], betas=tuple(g["betas"]),
                                                eps=g["eps"], weight_decay=g["weight_decay"])
            self.d_scheduler = WarmupMultiStepLR(self.d_optimizer, warmup_iters=warmup_iters, milestones=milestones,
                                                 gamma=cfg["schedule"]["gamma"])
            self.d_train = self.net_d
            if env.distributed:
                self.d_train = nn.parallel.DistributedDataParallel(
                    self.net_d, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            n = sum(p.numel() for p in self.net_d.parameters())
            log(f"discriminator UNetDiscriminatorSN(num_feat={g['num_feat']}): {n:,} parameters; Adam lr {g['lr']}")
        if self.settings is not None:
            log(f"degradation: {d['preset']} x{scale} on {self.device} (JPEG {self.settings.jpeg_backend}), "
                f"pool {self.pool.size}, sharpened input {self.sharpen_input}")
        self._fakes: list[torch.Tensor] = []
        self._reals: list[torch.Tensor] = []
        self._sums: dict[str, float] = {}
        self._n = 0

    # ------------------------------------------------------------------ data

    def _usm(self, x: torch.Tensor) -> torch.Tensor:
        from sr_data.degradations import usm_sharpen

        return usm_sharpen(x)

    @torch.no_grad()
    def make_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR ``(B, 3, h, w)``, HR ``(B, 3, H, W)``) on the device for one iteration (steps 1 of the module docstring)."""
        hr = batch["hr"].to(self.device, non_blocking=True)
        if self.settings is None:
            return batch["lr"].to(self.device, non_blocking=True), hr
        from sr_data.degradations import degrade

        src = self._usm(hr) if self.sharpen_input else hr
        lr = degrade(src, self.settings, self.generator)
        return self.pool(lr, hr, self.generator)

    # ------------------------------------------------------------------ steps

    def _add(self, name: str, value: torch.Tensor | float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(value)

    def generator_backward(self, batch: dict[str, Any], train_model: nn.Module, *, accumulate: int,
                           criterion: Any, autocast_dtype: torch.dtype | None) -> torch.Tensor:
        """Gradients of the generator loss for one iteration (micro-batched); returns the loss (detached)."""
        lr, hr = self.make_batch(batch)
        usm_hr = self._usm(hr) if self.usm_targets else hr
        t_pix = usm_hr if "pixel" in self.usm_targets else hr
        t_per = usm_hr if "perceptual" in self.usm_targets else hr
        t_adv = usm_hr if "adversarial" in self.usm_targets else hr
        if self.net_d is not None:
            self.net_d.requires_grad_(False)
        self._fakes, self._reals = [], []
        parts = list(zip(lr.chunk(accumulate), t_pix.chunk(accumulate), t_per.chunk(accumulate), t_adv.chunk(accumulate),
                         strict=True))
        total = torch.zeros((), device=self.device)
        for k, (lr_k, pix_k, per_k, adv_k) in enumerate(parts):
            sync = k == accumulate - 1 or not self.env.distributed
            with contextlib.nullcontext() if sync else train_model.no_sync():  # type: ignore[operator]
                with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    sr = train_model(lr_k)
                sr = sr.float()
                loss = torch.zeros((), device=self.device)
                if self.w_pix:
                    l_pix = criterion(sr, pix_k) * self.w_pix
                    loss = loss + l_pix
                    self._add("l_pix", l_pix.detach() / accumulate)
                if self.perceptual is not None:
                    l_per = self.perceptual(sr, per_k) * self.w_per
                    loss = loss + l_per
                    self._add("l_percep", l_per.detach() / accumulate)
                if self.net_d is not None:
                    fake_logit = self.net_d(sr)
                    l_gan = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit)) * self.w_adv
                    loss = loss + l_gan
                    self._add("l_g_gan", l_gan.detach() / accumulate)
                    self._fakes.append(sr.detach())
                    self._reals.append(adv_k)
                loss = loss / accumulate
                loss.backward()
            total += loss.detach()
        return total

    def discriminator_step(self, it: int) -> None:
        """One discriminator update on this iteration's real targets and generator outputs (no-op without GAN)."""
        if self.net_d is None or self.d_optimizer is None or self.d_scheduler is None or self.d_train is None:
            return
        self.d_scheduler.set_iteration(it)
        self.net_d.requires_grad_(True)
        self.d_optimizer.zero_grad(set_to_none=True)
        n = len(self._fakes)
        for k, (real, fake) in enumerate(zip(self._reals, self._fakes, strict=True)):
            sync = k == n - 1 or not self.env.distributed
            with contextlib.nullcontext() if sync else self.d_train.no_sync():  # type: ignore[operator]
                real_logit = self.d_train(real)
                l_real = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) / n
                l_real.backward()
                fake_logit = self.d_train(fake)
                l_fake = F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)) / n
                l_fake.backward()
            self._add("l_d_real", l_real.detach())
            self._add("l_d_fake", l_fake.detach())
            self._add("out_d_real", real_logit.detach().mean() / n)
            self._add("out_d_fake", fake_logit.detach().mean() / n)
        self.d_optimizer.step()
        self._fakes, self._reals = [], []

    def end_iteration(self) -> None:
        """Count one iteration for the running means of :meth:`pop_means`."""
        self._n += 1

    def pop_means(self) -> dict[str, float]:
        """Means over the iterations since the last call (and over processes) of every loss part."""
        keys = sorted(self._sums)
        if not keys:
            self._n = 0
            return {}
        vals = all_reduce_sum([self._sums[k] for k in keys] + [float(self._n)], self.env)
        n = max(vals[-1], 1.0)
        self._sums, self._n = {}, 0
        out = {k: v / n for k, v in zip(keys, vals[:-1], strict=True)}
        if self.d_optimizer is not None:
            out["lr/discriminator"] = self.d_optimizer.param_groups[0]["lr"]
        return out

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Resume state; call on every process (it gathers the per-process generators and pools)."""
        return {
            "net_d": None if self.net_d is None else {k: v.detach().cpu() for k, v in self.net_d.state_dict().items()},
            "d_optimizer": None if self.d_optimizer is None else self.d_optimizer.state_dict(),
            "d_scheduler": None if self.d_scheduler is None else self.d_scheduler.state_dict(),
            "degradation_rng": _gather(self.generator.get_state(), self.env),
            "pool": _gather(self.pool.state_dict(), self.env) if self.pool.size else None,
        }

    def load_state_dict(self, state: dict[str, Any] | None, path: Any) -> None:
        """Restore :meth:`state_dict` from checkpoint ``path``; ResumeError names what does not fit."""
        if state is None:
            raise ResumeError(f"checkpoint {str(path)!r} was written without real-world training (no discriminator or "
                              "degradation state); start this stage with --set model.init_from=<that checkpoint>")
        try:
            if self.net_d is not None:
                if state["net_d"] is None:
                    raise ResumeError(f"checkpoint {str(path)!r} has no discriminator; this config trains one "
                                      "(loss.adversarial_weight > 0): start it with model.init_from instead")
                self.net_d.load_state_dict(state["net_d"])
                assert self.d_optimizer is not None and self.d_scheduler is not None
                self.d_optimizer.load_state_dict(state["d_optimizer"])
                self.d_scheduler.load_state_dict(state["d_scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(f"checkpoint {str(path)!r}: the discriminator state does not fit: "
                              f"{str(exc).splitlines()[0]}") from None
        rngs = state["degradation_rng"]
        self.generator.set_state(rngs[self.env.rank] if self.env.rank < len(rngs) else rngs[0])
        pools = state.get("pool")
        if self.pool.size and pools:
            self.pool.load_state_dict(pools[self.env.rank] if self.env.rank < len(pools) else pools[0], self.device)
