"""The fast training paths give the numbers of the plain ones: hand-written steps vs autograd, the lean SGD vs
torch's, and whole fits vs a straightforward reference loop (autograd, torch.optim, per-step indexing).
Timings live in benchmarks/scaling.py and benchmarks/batched_search.py, not here."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from clip_adapter.methods import get_method
from clip_adapter.methods.base import check_finite
from clip_adapter.methods.clip_adapter import (ClipAdapter, ClipAdapterConfig, _ImageAdapterStep,
                                               _StackedClipAdapter)
from clip_adapter.prompts import ClassText
from clip_adapter.training import LeanSGD, lr_at_epoch

C, D, N, V = 6, 48, 60, 3


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    text = ClassText(classnames=[f"c{i}" for i in range(C)], templates=["a {}."],
                     features=torch.randn(C, D, generator=g), logit_scale=50.0)
    labels = torch.arange(N) % C
    feats = (text.features[labels] + 0.8 * torch.randn(N, D, generator=g)).relu()
    views = (feats + 0.3 * torch.randn(V, N, D, generator=g)).relu()
    return text, feats, labels, views


def reference_fit(model, params, logits_fn, features, labels, cfg, views=None, drop_last=True, penalty=None):
    """The training loop written plainly: autograd, torch.optim (single-tensor), a batch indexed per step."""
    source = views if views is not None else features.unsqueeze(0)
    n = source.shape[1]
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=False)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-4, foreach=False)
    drop_last = drop_last and n >= cfg.batch_size
    losses = []
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at_epoch(cfg, epoch)
        order = torch.randperm(n, generator=gen)
        view_idx = torch.randint(source.shape[0], (n,), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if drop_last and idx.numel() < cfg.batch_size:
                break
            loss = F.cross_entropy(logits_fn(source[view_idx[idx], idx]), labels[idx])
            if penalty is not None:
                loss = loss + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
            seen += idx.numel()
        losses.append(total / seen)
    return losses


ADAPTER_CASES = [dict(), dict(bias=True), dict(final_relu=False, alpha=0.7), dict(batch_size=7),
                 dict(optimizer="adamw", lr=1e-3), dict(target="both", bias=True)]


@pytest.mark.parametrize("kw", ADAPTER_CASES)
def test_clip_adapter_fit_equals_the_reference_loop(problem, kw, one_thread):
    text, feats, labels, views = problem
    cfg = ClipAdapterConfig(**{"epochs": 4, "batch_size": 16, "seed": 3, **kw})
    fast = ClipAdapter(cfg).fit(feats, labels, text=text, views=views)
    ref = ClipAdapter(cfg)
    ref._start_fit(feats, labels, text, views)
    ref.text_features_ = text.features.float().clone()
    ref._build(D)
    params = [p for a in ref._adapters() for p in a.parameters()]
    losses = reference_fit(ref, params, ref._logits, feats, labels, cfg, views=views)
    ref._end_fit()
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(feats), ref._logits(feats), atol=1e-5, rtol=0)
    assert fast.history_["loss"] == pytest.approx(losses, abs=1e-6)
    assert fast.history_["steps"] == cfg.epochs * (N // 7 if cfg.batch_size == 7 else N // 16)


@pytest.mark.parametrize("name", ["zs_lp", "clap"])
def test_probe_fit_equals_the_reference_loop(problem, name, one_thread):
    text, feats, labels, views = problem
    fast = get_method(name, epochs=5, batch_size=16, lr=0.05).fit(feats, labels, text=text, views=views)
    ref = get_method(name, epochs=5, batch_size=16, lr=0.05)
    ref._start_fit(feats, labels, text, views)
    ref.text_features_ = text.features.float().clone()
    weight = torch.nn.Parameter(ref.text_features_.clone())
    scale = ref.logit_scale_
    pen = ref.penalty(weight, labels, feats, views)
    losses = reference_fit(ref, [weight], lambda x: scale * F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).t(),
                           feats, labels, ref.config, views=views, penalty=pen)
    torch.testing.assert_close(fast.weight_, weight.detach(), atol=1e-6, rtol=0)
    assert fast.history_["loss"] == pytest.approx(losses, abs=1e-6)


def _autograd_grads(module_logits, params, x, y, stacked):
    for p in params:
        p.grad = None
    logits = module_logits(x)
    if stacked:
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y).mean(1)
        loss.sum().backward()
    else:
        loss = F.cross_entropy(logits, y)
        loss.backward()
    return loss.detach(), logits.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("kw", [dict(), dict(bias=True), dict(final_relu=False), dict(reduction=2, alpha=0.9)])
def test_hand_written_steps_give_autograd_gradients_bit_for_bit(problem, kw, one_thread):
    text, feats, labels, _ = problem
    models = []
    for seed, alpha in ((1, 0.2), (2, kw.get("alpha", 0.6))):
        m = ClipAdapter(ClipAdapterConfig(seed=seed, **{**kw, "alpha": alpha}))
        m._start_fit(feats, labels, text, None)
        m.text_features_ = text.features.float().clone()
        m._build(D)
        models.append(m)
    x, y = feats[:20], labels[:20]
    # one model
    m = models[0]
    params = list(m.image_adapter_.parameters())
    want = _autograd_grads(m._logits, params, x, y, stacked=False)
    for p in params:
        p.grad = None
    loss, logits = _ImageAdapterStep(m.image_adapter_, m.text_features_, m.config.alpha, m.logit_scale_)(x, y)
    assert torch.equal(loss, want[0]) and torch.equal(logits, want[1])
    for p, g in zip(params, want[2]):
        assert torch.equal(p.grad, g)
    # stacked: two points, each its own batch
    stacked = _StackedClipAdapter(models)
    xs, ys = torch.stack([x, feats[20:40]]), torch.stack([y, labels[20:40]])
    params = [p for p in stacked.parameters() if p.requires_grad]
    want = _autograd_grads(stacked, params, xs, ys, stacked=True)
    for p in params:
        p.grad = None
    loss, logits = stacked.step(xs, ys)
    assert torch.equal(loss, want[0]) and torch.equal(logits, want[1])
    for p, g in zip(params, want[2]):
        assert torch.equal(p.grad, g)


def test_only_the_image_placement_has_a_hand_written_stacked_step(problem):
    text, feats, labels, _ = problem
    models = []
    for target in ("text", "both"):
        m = ClipAdapter(ClipAdapterConfig(target=target))
        m._start_fit(feats, labels, text, None)
        m.text_features_ = text.features.float().clone()
        m._build(D)
        models.append(_StackedClipAdapter([m, m]))
    assert [s.step for s in models] == [None, None]      # autograd trains those


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 5e-4), (0.0, 5e-4), (0.9, 0.0)])
def test_lean_sgd_equals_torch_sgd_bit_for_bit(momentum, weight_decay):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(30, 7, generator=g), torch.randn(11, generator=g)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(6)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    lean = LeanSGD(ours, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    plain = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay, foreach=False)
    for i, step_grads in enumerate(grads):
        for opt in (lean, plain):
            opt.param_groups[0]["lr"] = 0.1 * math.cos(i / 5)
        for p, q, gr in zip(ours, theirs, step_grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        lean.step()
        plain.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    lean.zero_grad()
    assert all(p.grad is None for p in ours)
    with pytest.raises(RuntimeError, match="every parameter needs a gradient"):
        lean.step()


def test_finite_check_fast_path_keeps_its_answers():
    check_finite(torch.full((4, 3), 3e38), "features")               # huge but finite: the sum overflows, the
    check_finite(torch.full((4, 3), 6e4, dtype=torch.float16), "x")   # element-wise check then says finite
    check_finite(torch.arange(6).view(2, 3), "labels")                # integers are always finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.ones(5, 4)
        x[3, 1] = bad
        with pytest.raises(ValueError, match=r"features contain 1 non-finite values \(NaN or inf\), in rows \[3\]"):
            check_finite(x, "features")
    mixed = torch.ones(2, 2)
    mixed[0, 0], mixed[1, 1] = float("inf"), -float("inf")            # inf - inf: the sum is NaN, still caught
    with pytest.raises(ValueError, match="2 non-finite"):
        check_finite(mixed, "views")


def test_stacked_adam_is_adam_not_adamw(problem, one_thread):
    """The stacked path builds its optimiser as train_loop does (it used AdamW for 'adam' before)."""
    text, feats, labels, views = problem
    cfgs = [ClipAdapterConfig(alpha=a, epochs=3, batch_size=16, optimizer="adam", weight_decay=1e-2) for a in (.3, .6)]
    seq = [ClipAdapter(c).fit(feats, labels, text=text, views=views) for c in cfgs]
    bat = ClipAdapter.fit_many(cfgs, feats, labels, text=text, views=views, stack=True)
    for s, b in zip(seq, bat):
        torch.testing.assert_close(b.logits(feats), s.logits(feats), atol=1e-5, rtol=0)
    assert dataclasses.asdict(bat[0].config)["optimizer"] == "adam"


# -- an experiment's seeds searched together (batch_seeds) ------------------------------------------------------
VOLATILE = {"train_seconds", "predict_seconds", "total_seconds", "time", "versions", "result_file"}


def _experiment(tmp_path, data, batch: bool):
    from clip_adapter import run_experiment
    config = {"name": "seeds", "datasets": [str(data)], "shots": [2], "seeds": [1, 2, 3], "n_views": 2,
              "backbone": {"name": "tiny-vit", "pretrained": None}, "batch_seeds": batch,
              "methods": {"zero_shot": {}, "clip_adapter": {"grid": {"alpha": [0.2, 0.6]}, "overrides": {"epochs": 4}},
                          "ca_fixed": {"method": "clip_adapter", "overrides": {"epochs": 3, "alpha": 0.5}},
                          "tip_adapter": {"grid": {"alpha": [1.0], "beta": [1.0, 5.0]}}},
              "cache_dir": str(tmp_path / "cache"), "output": str(tmp_path / f"out{int(batch)}"), "workers": 0,
              "report": False}
    result = run_experiment(config, progress=False)
    return {f"{r['variant']}/{r['shots']}/{r['seed']}": {k: v for k, v in r.items() if k not in VOLATILE}
            for r in result.records}


def test_batch_seeds_gives_the_records_of_one_by_one(tmp_path, monkeypatch, one_thread):
    from clip_adapter.experiment import local
    from conftest import make_color_images
    data = make_color_images(tmp_path / "colors", per_class=8, seed=5)
    alone = _experiment(tmp_path, data, batch=False)
    calls = []
    real = local.select_many
    monkeypatch.setattr(local, "select_many", lambda method, configs, *a, **k: calls.append(
        (method, [c.seed for c in configs])) or real(method, configs, *a, **k))
    together = _experiment(tmp_path, data, batch=True)
    assert sorted(calls) == [("clip_adapter", [1, 2, 3]), ("clip_adapter", [1, 2, 3])]   # tip_adapter: one by one
    assert together.keys() == alone.keys() and len(alone) == 1 + 3 * 3
    for key in alone:
        assert together[key] == alone[key], key


def test_seed_groups_only_group_what_differs_by_seed(tmp_path):
    from clip_adapter.experiment.local import seed_groups
    from clip_adapter.experiment.plan import plan_runs
    from clip_adapter.experiment.schema import parse_config
    raw = {"name": "g", "datasets": ["a", "b"], "shots": [1, 2], "seeds": [1, 2], "n_views": 1,
           "methods": {"zero_shot": {}, "clip_adapter": {}, "linear_probe": {}},
           "output": str(tmp_path / "o"), "batch_seeds": True}
    config = parse_config(raw, check_registry=False)
    runs = plan_runs(config, ["a", "b"])
    groups = seed_groups(runs, config)
    assert len(groups) == 2 * 2                  # datasets x shots, clip_adapter only
    for g in groups:
        assert [r.seed for r in g] == [1, 2] and len({(r.dataset, r.shots, r.variant) for r in g}) == 1
    assert seed_groups(runs, parse_config({**raw, "batch_seeds": False}, check_registry=False)) == []


@pytest.mark.parametrize("kw", [dict(), dict(target="both", bias=True)])
def test_fit_many_data_equals_each_fit_on_its_own_data(problem, kw, one_thread):
    text, feats, labels, views = problem
    g = torch.Generator().manual_seed(7)
    data = [(feats, labels, views)] + [((feats + 0.1 * torch.randn(N, D, generator=g)).relu(), labels.roll(i),
                                        (views + 0.1 * torch.randn(V, N, D, generator=g)).relu()) for i in (1, 2)]
    cfgs = [ClipAdapterConfig(seed=s, alpha=a, epochs=3, batch_size=16, **kw) for s, a in ((1, .2), (2, .2), (3, .7))]
    alone = [ClipAdapter(c).fit(f, y, text=text, views=v) for c, (f, y, v) in zip(cfgs, data)]
    together = ClipAdapter.fit_many_data(cfgs, [d[0] for d in data], [d[1] for d in data], text=text,
                                         views=[d[2] for d in data])
    for a, b in zip(alone, together):
        torch.testing.assert_close(b.logits(feats), a.logits(feats), atol=1e-5, rtol=0)
        assert b.history_["loss"] == pytest.approx(a.history_["loss"], rel=1e-6)   # 'both': float rounding
        assert b.history_["train_acc"] == a.history_["train_acc"]
    # data of different sizes cannot share one stacked model: fitted one by one, still each its own fit
    short = ClipAdapter.fit_many_data(cfgs[:2], [feats, feats[:30]], [labels, labels[:30]], text=text,
                                      views=[views, views[:, :30]])
    torch.testing.assert_close(short[0].logits(feats), alone[0].logits(feats), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pull", [False, True])
def test_probe_step_gives_autograd_gradients_bit_for_bit(problem, pull):
    from clip_adapter.methods.zs_lp import _ProbeStep
    text, feats, labels, _ = problem
    t = text.features.float()
    lam = torch.rand(C, generator=torch.Generator().manual_seed(2)) if pull else None
    weight = torch.nn.Parameter(t + 0.1 * torch.randn(C, D, generator=torch.Generator().manual_seed(3)))
    x, y = feats[:25], labels[:25]
    loss = F.cross_entropy(50.0 * F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).t(), y)
    if pull:
        loss = loss + (lam * (weight - t).pow(2).sum(-1)).mean()
    loss.backward()
    want = weight.grad
    weight.grad = None
    got_loss, _ = _ProbeStep(weight, t, 50.0, lam)(x, y)
    assert torch.equal(weight.grad, want) and torch.equal(got_loss, loss.detach())
