"""Learning-rate decay over the budget (pipeline/train/schedule.py) and the ranks' shared clock."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from pipeline.config import ConfigError, load_config
from pipeline.train import distributed
from pipeline.train.schedule import LRDecay, budget_progress, lr_factor


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_rate_holds_until_the_start_then_falls_to_the_final_share_at_the_end(kind):
    start, final = 0.5, 0.1
    assert [lr_factor(kind, p, start, final) for p in (0.0, 0.3, 0.5)] == [1.0, 1.0, 1.0]
    assert lr_factor(kind, 1.0, start, final) == pytest.approx(final)
    assert lr_factor(kind, 1.7, start, final) == pytest.approx(final)  # past the budget: no lower
    # halfway through the decay: a line's midpoint, and a half cosine's too (it is symmetric about it)
    assert lr_factor(kind, 0.75, start, final) == pytest.approx((1 + final) / 2)
    grid = [lr_factor(kind, i / 100, start, final) for i in range(101)]
    assert all(a >= b for a, b in zip(grid, grid[1:])) and grid[60] < 1.0


def test_linear_and_cosine_differ_between_their_ends_and_off_never_moves():
    # a quarter into the decay: the line has dropped by a quarter, the cosine by (1 - cos(pi/4)) / 2
    assert lr_factor("linear", 0.25, 0.0, 0.0) == pytest.approx(0.75)
    assert lr_factor("cosine", 0.25, 0.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert {lr_factor("off", p, 0.0, 0.0) for p in (0.0, 0.5, 1.0)} == {1.0}
    with pytest.raises(ValueError, match="step"):
        lr_factor("step", 0.9, 0.0, 0.0)


def test_the_budget_spent_is_the_larger_of_the_steps_and_the_minutes():
    assert budget_progress(25, 100, 0.0, None) == 0.25  # no time budget: steps alone
    assert budget_progress(25, 100, 60.0, 120.0) == 0.5  # the clock runs out first
    assert budget_progress(90, 100, 60.0, 120.0) == 0.9  # the steps do
    assert budget_progress(5, 10**9, 600.0, 120.0) == 1.0  # capped
    assert budget_progress(0, 0, 0.0, None) == 0.0


def test_the_decay_scales_every_group_from_its_configured_rate_without_compounding():
    g, d = nn.Linear(2, 2), nn.Linear(2, 2)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam([{"params": [d.weight]}, {"params": [d.bias], "lr": 3e-4}], lr=4e-4)
    decay = LRDecay("linear", 0.0, 0.0, (opt_g, opt_d))
    for _ in range(3):  # applied again and again at one point: the same rates, not smaller each time
        assert decay.apply(0.5) == 0.5
    assert [grp["lr"] for grp in opt_g.param_groups + opt_d.param_groups] == pytest.approx([5e-5, 2e-4, 1.5e-4])
    decay.apply(0.0)
    assert [grp["lr"] for grp in opt_g.param_groups + opt_d.param_groups] == pytest.approx([1e-4, 4e-4, 3e-4])
    # a resume loads the optimisers' saved (decayed) rates into new group dicts: the decay still sets them
    decay.apply(0.5)
    saved = opt_d.state_dict()
    decay.apply(0.0)
    opt_d.load_state_dict(saved)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(2e-4)
    decay.apply(0.75)
    assert [grp["lr"] for grp in opt_d.param_groups] == pytest.approx([1e-4, 0.75e-4])


def test_the_config_names_a_bad_decay_and_reads_a_bare_off_as_the_word(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {lr_decay: off}\n")  # YAML 1.1's false
    assert load_config(p).train.lr_decay == "off"
    p.write_text("train: {lr_decay: exponential}\n")
    with pytest.raises(ConfigError, match="train.lr_decay"):
        load_config(p)
    p.write_text("train: {lr_decay: linear, lr_decay_start: 1.0}\n")  # no budget left to decay over
    with pytest.raises(ConfigError, match="train.lr_decay_start"):
        load_config(p)


def _rank(rank: int, port: int, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dist = distributed.Dist(rank=rank, world=2, local_rank=rank, device=torch.device("cpu"))
    out.put((rank, distributed.rank_max([rank == 1, False, 10.0 + 0.25 * rank], dist)))
    torch.distributed.destroy_process_group()


def test_every_rank_gets_the_largest_flag_and_the_slowest_clock():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == {0: [1.0, 0.0, 10.25], 1: [1.0, 0.0, 10.25]}
    assert [p.exitcode for p in procs] == [0, 0]
