"""Fault tolerance of forkjoin.train's gang (RELIABILITY.md rows 28-29), on 2 gloo CPU ranks.

| case                                   | expected                                              |
|----------------------------------------|-------------------------------------------------------|
| rank 1 SIGKILLed after a checkpoint,   | gang relaunched once, resumes from the checkpoint;   |
| max_restarts=1                         | final parameters equal an uninterrupted run (< 1e-6) |
| rank 1 raises ValueError               | RankError naming rank 1, its traceback as __cause__  |
| rank 1 hangs, timeout=2                | RankTimeoutError naming rank 1, with its stack       |
| rank 1 SIGKILLed, no restarts left     | RankCrashedError naming rank 1 and SIGKILL           |
| the launcher itself is SIGKILLed       | its ranks end themselves (no orphans)                |

Every case is bounded in time, and the conftest leak check proves no process was left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from helpers import started_children
from torch import nn

import forkjoin.train as fjt
from forkjoin.errors import ForkjoinError, TaskTimeoutError, WorkerCrashedError

pytestmark = pytest.mark.timeout(120)

STEPS = 12  # 2k: more than one epoch of 8 batches per rank
KILL_AT = 5


def make_parts(seed: int = 3, optimizer: bool = True) -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2) if optimizer else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    return model, opt, torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)


def train(ckpt_dir: str | None, kill_at: int | None) -> dict[str, torch.Tensor]:
    """A plain loop with resume: dropout (RNG state), AdamW (optimizer state), shuffling
    over more than one epoch (sampler epoch and position) all have to come back."""
    model, opt, loader = fjt.prepare(*make_parts(), strategy="ddp")
    step = 0
    if ckpt_dir:
        ckpt = fjt.load_checkpoint(ckpt_dir, model=model, optimizer=opt, loader=loader)
        step = ckpt.step if ckpt else 0
    while step < STEPS:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if ckpt_dir:
                fjt.save_checkpoint(ckpt_dir, model=model, optimizer=opt, loader=loader,
                                    step=step, keep=2)
            if kill_at == step and fjt.restart_count() == 0 and fjt.rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if step >= STEPS:
                break
    return fjt.full_state_dict(model)


def killed_then_resumed(ckpt_dir: str) -> dict[str, Any]:
    resumed = train(ckpt_dir, KILL_AT)
    # the uninterrupted reference, in the same (relaunched) gang: saves a gang start
    torch.manual_seed(0)
    reference = train(None, None)
    return {"restart": fjt.restart_count(), "resumed": resumed, "reference": reference}


def test_killed_rank_relaunches_from_checkpoint_and_matches_uninterrupted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = fjt.launch(killed_then_resumed, workers=2, device="cpu", args=(str(tmp_path),),
                     max_restarts=1, timeout=60)
    assert out["restart"] == 1
    assert "rank 1 of 2 was killed by SIGKILL" in capfd.readouterr().err
    resumed, reference = out["resumed"], out["reference"]
    for key in reference:
        diff = (resumed[key] - reference[key]).norm() / reference[key].norm()
        assert diff < 1e-6, (key, float(diff))
    initial = make_parts()[0].state_dict()
    assert any(not torch.allclose(initial[k], reference[k]) for k in reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000011", "step-00000012"]


# The failing ranks skip the optimizer: creating one imports torch._dynamo (~2 s per rank here),
# and these cases are about the gang, not the update. Each notes when it fails, so the test can
# bound the time from the failure to the error, apart from the gang's start-up (which a busy
# machine stretches a lot).
def _mark(path: str) -> None:
    Path(path).write_text(repr(time.time()))


def raise_on_rank_one(mark: str) -> None:
    model, _, loader = fjt.prepare(*make_parts(optimizer=False))
    for x, _ in loader:
        model(x).sum().backward()
        if fjt.rank() == 1:
            _mark(mark)
            raise ValueError("bad batch on purpose")


def hang_on_rank_one(mark: str) -> None:
    model, _, loader = fjt.prepare(*make_parts(optimizer=False))
    for x, _ in loader:
        model(x).sum().backward()
        if fjt.rank() == 1:
            _mark(mark)
            time.sleep(600)  # stuck: no heartbeat from here on


def die_on_rank_one(mark: str) -> None:
    model, _, loader = fjt.prepare(*make_parts(optimizer=False))
    for x, _ in loader:
        model(x).sum().backward()
        if fjt.rank() == 1:
            _mark(mark)
            os.kill(os.getpid(), signal.SIGKILL)


TIMEOUT = 2.0
# From the failure to the error: SETTLE (0.5 s) + SIGTERM grace (3 s) + SIGKILL wait, with room
# for a loaded machine; a stall adds the timeout, a heartbeat tick and the stack dump (2 s).
STOP_BOUND = 12.0
CASES = [
    # (train_fn, exception type, also an instance of, text in message, seconds allowed)
    (raise_on_rank_one, fjt.RankError, ForkjoinError, "rank 1 of 2 raised ValueError",
     STOP_BOUND),
    (hang_on_rank_one, fjt.RankTimeoutError, TaskTimeoutError, "rank 1 of 2 stalled",
     STOP_BOUND + TIMEOUT + 2.5),
    (die_on_rank_one, fjt.RankCrashedError, WorkerCrashedError, "killed by SIGKILL", STOP_BOUND),
]


@pytest.mark.parametrize(
    "fn, error, base, text, bound", CASES, ids=[c[0].__name__ for c in CASES]
)
def test_failing_rank_stops_the_gang_with_a_clear_error(
    tmp_path: Path, fn: Any, error: type, base: type, text: str, bound: float
) -> None:
    mark = tmp_path / "failed-at"
    with pytest.raises(error) as info:
        fjt.launch(fn, workers=2, device="cpu", timeout=TIMEOUT, max_restarts=0,
                   args=(str(mark),))
    elapsed = time.time() - float(mark.read_text())
    assert elapsed < bound
    exc = info.value
    assert isinstance(exc, base) and exc.rank == 1
    assert text in str(exc)
    if fn is raise_on_rank_one:
        assert "bad batch on purpose" in str(exc)
        assert "raise_on_rank_one" in str(exc.__cause__)  # the rank's own traceback
    if fn is hang_on_rank_one:
        assert "in hang_on_rank_one" in exc.stack  # its Python stack, from faulthandler
        assert "in hang_on_rank_one" in str(exc)
    assert not started_children(recursive=True)


def test_ranks_die_with_their_launcher(tmp_path: Path) -> None:
    # the launcher script does not import torch (launch() itself does not), so it starts fast
    script = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        import forkjoin.train as fjt

        def sleep_forever(pid_dir):
            Path(pid_dir, f"rank{{fjt.rank()}}").write_text(str(os.getpid()))
            time.sleep(600)

        if __name__ == "__main__":
            fjt.launch(sleep_forever, workers=2, device="cpu", args=({str(tmp_path)!r},))
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(p.read_text()) for p in tmp_path.iterdir()]
        assert len(pids) == 2
    finally:
        launcher.kill()
        launcher.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if psutil.pid_exists(p)]
