from collections import defaultdict

import numpy as np

from vadclip import build_model, tiny_config
from vadclip.synthetic import make_feature_set
from vadclip.evaluation import evaluate
from vadclip.training import batch_plan, collate, make_optimizer, train_step


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
