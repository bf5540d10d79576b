"""forkjoin.train on a real gloo gang of 2 CPU ranks: DDP and FSDP2 take the same steps as one
process with the doubled batch; grad accumulation and bf16 autocast; checkpoints (atomic, DCP
for FSDP, weights_only); rank helpers and log().

One launch runs every in-gang check (a rank start costs ~3 s of torch import on this machine);
the test functions then compare what it returned with a plain single-process PyTorch run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import forkjoin.train as fjt

pytestmark = pytest.mark.timeout(120)

STEPS = 4  # k optimizer steps per run
BATCH = 4  # per-rank batch b; one rank takes 2b
SAMPLES = 64
FEATURES = 8


def make_data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    y = (x @ torch.randn(FEATURES, 1, generator=g)).squeeze(1) + 0.1 * torch.randn(
        SAMPLES, generator=g
    )
    return torch.utils.data.TensorDataset(x, y)


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def plain_loop(model: Any, opt: Any, loader: Any, steps: int) -> list[float]:
    """The unchanged loop every variant runs."""
    losses = []
    done = 0
    while done < steps:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x).squeeze(1), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            if getattr(opt, "synced", True):
                done += 1
            if done >= steps:
                break
    return losses


def run_variant(strategy: str, *, batch: int, grad_accum: int = 1, precision: str = "fp32",
                steps: int = STEPS) -> dict[str, torch.Tensor]:
    model = make_model()
    opt = make_optimizer(model)
    loader = torch.utils.data.DataLoader(make_data(), batch_size=batch, shuffle=True)
    model, opt, loader = fjt.prepare(model, opt, loader, strategy=strategy, precision=precision,
                                     grad_accum=grad_accum, seed=7)
    plain_loop(model, opt, loader, steps)
    return fjt.full_state_dict(model)


def in_gang_checks(tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rank": fjt.rank(), "world": fjt.world_size(), "main": fjt.is_main()}
    out["mean"] = fjt.all_reduce_mean(float(fjt.rank()))  # (0 + 1) / 2
    with fjt.main_first():
        marker = Path(tmp, "made-by")
        if fjt.is_main():
            marker.write_text("rank 0")
        out["main_first_saw"] = marker.read_text()  # rank 1 runs after rank 0 wrote it
    out["ddp"] = run_variant("ddp", batch=BATCH)
    out["fsdp"] = run_variant("fsdp", batch=BATCH)
    out["ddp_accum"] = run_variant("ddp", batch=BATCH // 2, grad_accum=2)
    out["fsdp_accum"] = run_variant("fsdp", batch=BATCH // 2, grad_accum=2)
    out["bf16"] = run_variant("ddp", batch=BATCH, precision="bf16")
    out["log"] = fjt.log(step=3, loss=float(fjt.rank()), samples=BATCH,
                         file=os.path.join(tmp, "log.jsonl"), echo=False)
    out["checkpoints"] = checkpoint_roundtrip(tmp)
    return out


def checkpoint_roundtrip(tmp: str) -> dict[str, bool]:
    """Save mid-run (DDP: rank 0 file; FSDP: DCP shards), train on, load, and check the model,
    optimizer, loader position and RNG came back."""
    result = {}
    for strategy in ("ddp", "fsdp"):
        where = os.path.join(tmp, f"ckpt-{strategy}")
        model = make_model()
        loader = torch.utils.data.DataLoader(make_data(), batch_size=BATCH, shuffle=True)
        model, opt, loader = fjt.prepare(model, make_optimizer(model), loader, strategy=strategy)
        plain_loop(model, opt, loader, 2)
        fjt.save_checkpoint(where, model=model, optimizer=opt, loader=loader, step=2, note="hi")
        saved = fjt.full_state_dict(model)
        position = loader.state_dict()
        rng_next = torch.rand(1)
        plain_loop(model, opt, loader, 2)  # move on
        ckpt = fjt.load_checkpoint(where, model=model, optimizer=opt, loader=loader)
        restored = fjt.full_state_dict(model)
        result[strategy] = bool(
            ckpt is not None
            and ckpt.step == 2
            and ckpt.extra == {"note": "hi"}
            and all(torch.equal(saved[k], restored[k]) for k in saved)
            and loader.state_dict() == position
            and torch.equal(torch.rand(1), rng_next)
        )
    return result


@pytest.fixture(scope="module")
def gang(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = str(tmp_path_factory.mktemp("gang"))
    value = fjt.launch(in_gang_checks, workers=2, device="cpu", args=(tmp,), timeout=60)
    return {"tmp": tmp, "value": value}


def reference(batch: int = 2 * BATCH, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """One plain process, no forkjoin: batch 2b, the same shuffled order."""
    model = make_model()
    opt = make_optimizer(model)
    data = make_data()
    g = torch.Generator()
    g.manual_seed(7)  # the sampler's order: seed + epoch
    order = torch.randperm(SAMPLES, generator=g).tolist()
    for s in range(steps):
        idx = order[s * batch : (s + 1) * batch]
        x, y = data[idx]
        loss = nn.functional.mse_loss(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    return num / den


def test_rank_helpers(gang: dict[str, Any]) -> None:
    value = gang["value"]
    assert (value["rank"], value["world"], value["main"]) == (0, 2, True)
    assert value["mean"] == pytest.approx(0.5)
    assert value["main_first_saw"] == "rank 0"


@pytest.mark.parametrize("variant", ["ddp", "fsdp", "ddp_accum", "fsdp_accum"])
def test_two_ranks_equal_one_rank_with_double_batch(gang: dict[str, Any], variant: str) -> None:
    ref = reference()
    before = {k: v.detach() for k, v in make_model().state_dict().items()}
    assert rel_diff(before, ref) > 1e-2  # the steps really moved the parameters
    assert rel_diff(gang["value"][variant], ref) < 1e-5


def test_bf16_autocast_trains_close_to_fp32(gang: dict[str, Any]) -> None:
    ref = reference()
    diff = rel_diff(gang["value"]["bf16"], ref)
    assert 0 < diff < 5e-2  # bf16 rounding shows, but it is the same training


def test_log_aggregates_and_writes_json_from_rank_zero(gang: dict[str, Any]) -> None:
    record = gang["value"]["log"]
    assert record["step"] == 3 and record["loss"] == pytest.approx(0.5)
    lines = Path(gang["tmp"], "log.jsonl").read_text().splitlines()
    assert len(lines) == 1  # rank 0 only
    assert json.loads(lines[0])["loss"] == pytest.approx(0.5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoint_roundtrip(gang: dict[str, Any], strategy: str) -> None:
    assert gang["value"]["checkpoints"][strategy]
    where = Path(gang["tmp"], f"ckpt-{strategy}")
    assert [p.name for p in where.iterdir()] == ["step-00000002"]
    assert (where / "step-00000002" / "meta.json").is_file()


class NotATensor:
    """Something ``weights_only=True`` refuses to unpickle."""


def test_checkpoint_without_metadata_is_ignored_and_loading_is_weights_only(
    tmp_path: Path,
) -> None:
    # one process, no gang: save/load work as rank 0 of 1
    model = make_model()
    opt = make_optimizer(model)
    fjt.save_checkpoint(tmp_path, model=model, optimizer=opt, step=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    fjt.save_checkpoint(tmp_path, model=model, optimizer=opt, step=2)
    (tmp_path / "step-00000002" / "meta.json").unlink()  # as if the save died before its end
    (tmp_path / ".staging-step-00000003").mkdir()  # and another died mid-write
    assert fjt.latest_checkpoint(tmp_path) == tmp_path / "step-00000001"
    fresh = make_model()
    ckpt = fjt.load_checkpoint(tmp_path, model=fresh, optimizer=make_optimizer(fresh))
    assert ckpt is not None and ckpt.step == 1
    assert rel_diff(fresh.state_dict(), make_model().state_dict()) == 0
    assert fjt.load_checkpoint(tmp_path / "empty") is None

    fjt.save_checkpoint(tmp_path, model=model, step=4, keep=1)
    assert not (tmp_path / ".staging-step-00000003").exists()  # the next save cleaned it up
    assert not (tmp_path / "step-00000001").exists()  # keep=1: only the newest complete one
    assert fjt.latest_checkpoint(tmp_path) == tmp_path / "step-00000004"

    fjt.save_checkpoint(tmp_path / "unsafe", model=model, step=5, payload=NotATensor())
    with pytest.raises(Exception, match="[Ww]eights only"):
        fjt.load_checkpoint(tmp_path / "unsafe", model=make_model())
