from collections import defaultdict

import numpy as np

from vadclip import build_model, tiny_config
from vadclip.testing.synthetic import make_feature_set
from vadclip.metrics.evaluate import evaluate
import os

import pytest
import torch

from vadclip.testing.direct import collate
from vadclip.train.batches import ShardCache, batch_plan, make_optimizer, prepare_batch, train_step


def _gt(rows):
    g = defaultdict(list)
    for r in rows:
        g[r["video_id"]].append((r["start_frame"], r["end_frame"], r["label"]))
    return g


def test_tiny_training_loss_drops_and_auc_exceeds_0_9(tiny_clip):
    cfg = tiny_config("ucf", visual_length=64, lr=1e-3, batch_size=8, milestones=[100])
    rows, _ = make_feature_set(cfg, 24, 24, 32, seed=1)
    erows, egt = make_feature_set(cfg, 8, 8, 32, seed=2, prefix="ev")
    model = build_model(cfg, tiny_clip)
    opt, sched = make_optimizer(model, cfg)
    before = evaluate(model, erows, _gt(egt), cfg)
    epoch_loss = []
    for ep in range(16):
        plan = batch_plan([r["label"] for r in rows], cfg, ep)
        assert all(len(b) == 16 for b in plan)
        losses = [train_step(model, opt, collate([rows[i] for i in b], cfg), cfg)["loss"] for b in plan]
        epoch_loss.append(np.mean(losses))
        sched.step()
    after = evaluate(model, erows, _gt(egt), cfg)
    assert epoch_loss[-1] < 0.8 * epoch_loss[0]
    assert after["auc"] > 0.9, after
    assert after["auc"] > before["auc"]
    assert 0 <= after["map_avg"] <= 1


def test_batch_plans():
    cfg = tiny_config("ucf", batch_size=4)
    labels = ["Normal"] * 10 + ["Abuse"] * 6
    plan = batch_plan(labels, cfg, 0)
    assert len(plan) == 1 and len(plan[0]) == 8
    assert sum(labels[i] == "Normal" for i in plan[0]) == 4
    xd = tiny_config("xd", batch_size=5)
    plan = batch_plan(["A"] * 7 + ["B1-0-0"] * 5, xd, 1)
    assert sorted(i for b in plan for i in b) == list(range(12))


def test_rank_share_of_a_balanced_plan():
    """A DDP rank's plan: its share of the batch per side, every video at most once per
    epoch, cut to the number of steps the ranks agreed on."""
    cfg = tiny_config("ucf", batch_size=8)
    labels = ["Normal"] * 13 + ["Abuse"] * 9
    plan = batch_plan(labels, cfg, 3, batch_size=4)
    assert len(plan) == 2 and all(len(b) == 8 for b in plan)
    flat = [i for b in plan for i in b]
    assert len(flat) == len(set(flat))
    assert all(sum(labels[i] == "Normal" for i in b) == 4 for b in plan)
    assert batch_plan(labels, cfg, 3, batch_size=4, steps=1) == plan[:1]
    assert batch_plan(labels, cfg, 4, batch_size=4) != plan       # reshuffled each epoch
    with pytest.raises(ValueError, match="normal and abnormal"):
        batch_plan(["Abuse"] * 4, cfg, 0)


def test_shard_cache_returns_what_collate_builds(tmp_path):
    """Rows streamed through prepare_batch into the on-disk shard come back by index
    exactly as collate builds them in memory; the cache leaves nothing behind."""
    cfg = tiny_config("ucf", visual_length=16)
    rows, _ = make_feature_set(cfg, 5, 4, 24, seed=7)      # lengths vary: pooled and padded rows
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    with ShardCache(str(tmp_path)) as cache:
        for lo, hi in ((0, 4), (4, 9)):
            b = prepare_batch({k: v[lo:hi] for k, v in cols.items()}, cfg)
            cache.append(b["x"], b["length"], b["y"], b["label"])
        assert len(cache) == 9 and cache.labels == [r["label"] for r in rows]
        idx = [8, 0, 3, 3]
        got, want = cache.batch(idx), collate([rows[i] for i in idx], cfg)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        d = cache.dir
        assert os.path.exists(os.path.join(d, "x.f32"))
    assert not os.path.exists(d)


@pytest.mark.parametrize("padding", ["paper", "official", "masked"])   # "official": the old name of "paper"
def test_micro_batches_make_the_same_step(padding):
    """Gradient accumulation over micro-batches of 3 rows (the last one short) gives the
    gradient of the whole batch, and the same loss parts."""
    cfg = tiny_config("ucf", visual_length=32, padding=padding)
    rows, _ = make_feature_set(cfg, 4, 4, 32, seed=3)
    batch = collate(rows, cfg)
    runs = []
    for micro in (None, 3):
        torch.manual_seed(0)
        model = build_model(cfg)
        opt, _ = make_optimizer(model, cfg)
        parts = train_step(model, opt, batch, cfg, micro_batch=micro)
        runs.append((parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (p1, g1), (p2, g2) = runs
    for k in p1:
        assert abs(p1[k] - p2[k]) < 1e-5, (k, p1[k], p2[k])
    assert sorted(g1) == sorted(g2) and len(g1) > 5
    for k in g1:
        scale = float(g1[k].abs().max())
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-5 * scale + 1e-9)


def test_epoch_loop_without_any_framework_follows_the_paper_recipe(tiny_clip, tmp_path):
    """The rank's epoch loop runs in a plain process (no Ray, no process group): with the
    paper recipe it evaluates at every N samples, reports each point, keeps the best model
    so far and goes on from it at the end of the epoch; its state round-trips."""
    from vadclip.train.loop import EpochLoop, Ranks
    from vadclip.train.recipes import Paper, get_recipe

    assert get_recipe("official") is get_recipe("paper") and isinstance(get_recipe("paper"), Paper)
    cfg = tiny_config("ucf", visual_length=32, lr=1e-3, batch_size=4, milestones=[100], epochs=2)
    rows, _ = make_feature_set(cfg, 8, 8, 32, seed=5)
    erows, egt = make_feature_set(cfg, 4, 4, 32, seed=6, prefix="ev")
    model = build_model(cfg, tiny_clip)
    opt, sched = make_optimizer(model, cfg)
    points, lines = [], []
    loop = EpochLoop(model, model, opt, sched, cfg, get_recipe("paper"), "auc", Ranks(), "cpu", per_rank=4,
                     eval_rows=erows, gt=_gt(egt), eval_every=8, log=lines.append,
                     on_eval=lambda m, step: points.append((step, m["step_auc"])))
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    with ShardCache(str(tmp_path)) as shard:
        b = prepare_batch(cols, cfg)
        shard.append(b["x"], b["length"], b["y"], b["label"])
        steps = loop.steps(shard.labels)
        assert steps == 2                        # 8 normal + 8 abnormal, 4 of each per step
        m = loop.epoch(shard, 0, steps)
    # one evaluation point within the epoch (after step 1: 8 samples), none at its end
    assert [p[0] for p in points] == [8] and "auc" not in m
    assert loop.state.best == pytest.approx(points[0][1]) and m["score"] == loop.state.best
    # the model goes on from the best state kept at that point
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, loop.state.best_state[k], rtol=0, atol=0)
    st = dict(loop.state_dict(), epoch=0)
    model2 = build_model(cfg, tiny_clip)
    other = EpochLoop(model2, model2, *make_optimizer(model2, cfg), cfg, get_recipe("paper"), "auc", Ranks(), "cpu",
                      per_rank=4)
    other.load_state_dict(st)
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0)
    assert other.state.start_epoch == 1 and other.state.best == loop.state.best
    assert len(other.state.history) == 1 and any("epoch 1/2" in line for line in lines)
