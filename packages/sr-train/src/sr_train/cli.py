"""The ``sr-train`` command (also ``python -m sr_train``, e.g. under ``torchrun``).

Bad input (unknown model or preset, missing data root, unusable dataset, incompatible resume,
``--out`` naming a file, a batch that the pre-flight memory check finds too big) prints one line ``sr-train: error: ...`` to stderr and exits with status 2;
failures during training (a failed checkpoint write, out of memory including allocator failures,
OS errors, anything unexpected) exit 1, also in one line, without a traceback
(``SR_TRAIN_DEBUG=1`` shows one) and without overwriting earlier files. Ctrl-C or SIGTERM
checkpoints the current iteration and exits 130 with one line naming what was saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  sr-train --model iet --preset quick                                   # 20-iteration smoke run, CPU is fine
  sr-train --model iet --dataset df2k --data-root /data/DF2K            # stage 1 (iet-stage1)
  sr-train --model iet --preset stage2 --set model.init_from=runs/iet_x2_iet-stage1/weights/iet_x2.safetensors
  torchrun --nproc-per-node 8 -m sr_train --model sst-l --dataset df2k --data-root /data/DF2K
  sr-train --model iet --resume auto                                     # continue the run in --out
Every config key can be set with --set section.key=value (values are YAML); see the presets in
sr_train/presets/*.yaml and the defaults in sr_train/config.py.
"""


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, ``sr-train: error: ... (see sr-train --help)``, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sr-train``."""
    p = _OneLineParser(
        prog="sr-train",
        description="Train a super-resolution model from a paper recipe (preset) on the embedded sample data "
        "or a real dataset.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="registered model name (see --list-models), e.g. iet, iet-light, esc-light, sst-l")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="upscaling factor (default: the preset's, usually 2)")
    p.add_argument("--dataset", help="training set: sample (default, embedded), div2k, df2k, flickr2k, lsdir, dflip, folder")
    p.add_argument("--data-root", help="directory holding the training dataset (needed for every dataset but sample)")
    p.add_argument("--preset", help="recipe of the model, e.g. stage1, stage2, finetune-x4, quick (default: the model's own)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file merged over the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set optim.adamw.lr=2e-4 (repeatable)")
    p.add_argument("--iters", type=int, help="total training iterations (the warm-up and lr milestones are NOT "
                   "rescaled unless --set schedule.rescale=true)")
    p.add_argument("--out", help="run directory (default runs/<model>_x<scale>_<preset>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="auto: continue from the newest checkpoint in --out (fresh start if none); or a checkpoint file")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="fp32 (default) or bf16 autocast")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-models", action="store_true", help="list the registered models and exit")
    p.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")
    return p


def _cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    cli: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = cli
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    put("model.scale", args.scale)
    put("data.dataset", args.dataset)
    put("data.root", args.data_root)
    put("train.iters", args.iters)
    put("train.precision", args.precision)
    put("out", args.out)
    return cli


def _warn_cpu_bf16(cfg: dict[str, Any]) -> None:
    """bf16 autocast on a CPU without fast bf16 units is many times slower than fp32: say so."""
    if cfg["train"]["precision"] != "bf16":
        return
    import torch

    device = str(cfg["train"]["device"])
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        print("sr-train: warning: --precision bf16 on the CPU is usually much slower than fp32 (most CPUs have "
              "no fast bf16 matrix units); it saves memory, not time", file=sys.stderr)


def _is_allocator_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _unexpected(exc: BaseException) -> int:
    """An error sr-train has no message for: still one line; SR_TRAIN_DEBUG=1 re-raises for a traceback."""
    if os.environ.get("SR_TRAIN_DEBUG"):
        raise exc
    return _fail(f"internal error: {type(exc).__name__}: {exc} (set SR_TRAIN_DEBUG=1 for a traceback)", 1)


def _fail(msg: str, code: int = 2) -> int:
    first = " ".join(str(msg).split("\n")[0].split())
    print(f"sr-train: error: {first}", file=sys.stderr)
    return code


def _recipe_note(cfg: dict[str, Any]) -> str:
    r = cfg.get("recipe") or {}
    if not r:
        return ""
    parts = [f"  preset {r.get('preset', cfg['preset'])}: {r.get('summary', '')}".rstrip()]
    if r.get("dataset"):
        parts.append(f"  data: --dataset {r['dataset']} --data-root DIR" + (f" ({r['data_note']})" if r.get("data_note") else ""))
    if r.get("compute"):
        parts.append(f"  compute: {r['compute']}")
    if r.get("next"):
        name, scale = cfg["model"]["name"], cfg["model"]["scale"]
        recipe_preset = r.get("preset", cfg["preset"])  # the run the hint means: this one, or the full recipe's
        run = cfg["out"] if recipe_preset == cfg["preset"] else str(Path("runs") / f"{name}_x{scale}_{recipe_preset}")
        nxt = str(r["next"]).replace("<this run>", run).replace("<model>", name)
        parts.append(f"  next: {nxt}")
    return "the full recipe:\n" + "\n".join(parts)


def _interrupted_message(cfg: dict[str, Any] | None) -> str:
    """What an interrupt that saved nothing new leaves: the newest checkpoint, or none at all."""
    if cfg is None:
        return "interrupted before training started; nothing was written"
    from sr_train.checkpoint import list_checkpoints

    found = list_checkpoints(cfg["out"])
    if not found:
        return "interrupted; no checkpoint was written, so a rerun starts from iteration 0"
    it, path = found[-1]
    return f"interrupted; nothing saved since {path} (iteration {it}); continue from it with --resume auto"


def _data_errors() -> tuple[type[BaseException], ...]:
    from sr_data import DataError, ImageReadError

    return (DataError, ImageReadError)


def _oom_error() -> type[BaseException]:
    import torch

    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 on success)."""
    args = build_parser().parse_args(argv)
    from sr_train.config import list_presets, resolve_config
    from sr_train.errors import CheckpointWriteError, TrainError
    from sr_train.interrupt import TrainingInterrupted

    cfg: dict[str, Any] | None = None

    try:
        if args.list_presets:
            from sr_train.config import load_preset

            for name in list_presets():
                pr = load_preset(name)
                print(f"{name:<22} for {', '.join(pr.get('applies_to') or ['any']):<28} {pr.get('description', '')}")
            return 0
        import sr_models

        if args.list_models:
            print("\n".join(sr_models.list_models()))
            return 0
        if not args.model:
            return _fail("--model is required (see --list-models)")
        known = sr_models.list_models()
        if args.model not in known:
            return _fail(f"unknown model {args.model!r}; known models: {', '.join(known) or 'none'}")
        cfg = resolve_config(args.model, preset=args.preset, config_file=args.config, cli=_cli_overrides(args),
                             sets=args.sets)
        if args.print_config:
            from sr_train.config import dump_config

            print(dump_config(cfg), end="")
            return 0
        from sr_train.trainer import train

        _warn_cpu_bf16(cfg)
        t0 = time.perf_counter()
        result = train(cfg, resume=args.resume)
    except BrokenPipeError:  # `sr-train --list-models | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except TrainingInterrupted as exc:  # a signal: the checkpoint of the current iteration was written
        print(f"sr-train: {exc}", file=sys.stderr)
        return 130
    except CheckpointWriteError as exc:
        return _fail(str(exc), 1)
    except TrainError as exc:
        return _fail(str(exc), 2)
    except _data_errors() as exc:  # a bad image met while training (sr-data names the file)
        return _fail(f"training data: {exc}", 2)
    except _oom_error() as exc:
        return _fail(f"out of memory ({str(exc).splitlines()[0][:120]}); lower data.batch_size or data.patch_size, "
                     "or use --precision bf16", 1)
    except (RuntimeError, MemoryError) as exc:
        if not _is_allocator_failure(exc):
            return _unexpected(exc)
        detail = " ".join(str(exc).split())
        detail = detail[detail.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in detail else detail
        return _fail(f"out of memory ({(detail or 'MemoryError')[:120]}); lower data.batch_size or data.patch_size, "
                     "data.num_workers, or raise the memory limit (ulimit -v)", 1)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:
        return _unexpected(exc)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing new was saved
        return _fail(_interrupted_message(cfg), 130)
    if int(os.environ.get("RANK", "0")) == 0:
        minutes = (time.perf_counter() - t0) / 60
        print(f"done: {result.iteration} iterations in {minutes:.1f} min; run directory {result.run_dir}")
        if result.val:
            line = f"validation ({cfg['val']['dataset']}): PSNR {result.val['psnr']:.3f} dB, SSIM {result.val['ssim']:.4f}"
            if "psnr_raw" in result.val:
                line += (f" (EMA weights); live weights PSNR {result.val['psnr_raw']:.3f} dB, "
                         f"SSIM {result.val['ssim_raw']:.4f}")
            print(line)
        if result.weights is not None:
            kind = "EMA" if cfg["train"]["ema_decay"] else "live"
            print(f"weights: {result.weights} ({kind} weights; load with sr_models.load_checkpoint)")
        note = _recipe_note(cfg)
        if note:
            print(note)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
