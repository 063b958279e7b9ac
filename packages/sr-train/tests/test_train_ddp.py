"""Two CPU processes on the gloo backend: the DDP path of the trainer (never hangs: hard timeout)."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from sr_train.checkpoint import list_checkpoints, load_checkpoint_file
from sr_train.config import resolve_config
from sr_train.testing import TINY_NAME, ddp_worker, register_tiny_model

TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo_run(tmp_path):
    register_tiny_model()
    cfg = resolve_config(TINY_NAME, sets=[
        "data.patch_size=12", "data.batch_size=4", "train.iters=6", "optim.muon.enabled=true",
        "train.threads=1", "train.accumulate=2",  # micro-batches of 1 per rank: no_sync on the first, all-reduce on the second
        "val.every=3", "val.max_images=2", "val.center_crop=16", "checkpoint.every=3", "log.every=2",
        "log.progress=false", "log.tensorboard=false", "train.device=cpu", f"out={tmp_path / 'run'}",
    ])
    ctx = mp.start_processes(ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP run did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    # DDP keeps the replicas identical (gradients are averaged before each identical Muon/AdamW step)
    for name, t in r0["model"].items():
        assert torch.equal(t, r1["model"][name]), name
    # validation is sharded over the ranks and reduced: both see the same result over both images
    assert r0["val"] == r1["val"] and r0["val"]["images"] == 2
    # rank 0 alone writes: checkpoints with both ranks' RNG states, one metrics line per event
    ckpts = list_checkpoints(tmp_path / "run")
    assert [i for i, _ in ckpts] == [3, 6]
    state = load_checkpoint_file(ckpts[-1][1])
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds
    for name, t in state["model"].items():
        assert torch.equal(t, r0["model"][name])
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs if r["kind"] == "train"] == [2, 4, 6]
    assert [r["iter"] for r in recs if r["kind"] == "val"] == [3, 6]
