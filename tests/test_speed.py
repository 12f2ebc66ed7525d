"""Speed paths that must not change a number: the stacked grid search (every grid point as one vectorised model)
and the lazy start (no heavy import before it is needed). Timings live in benchmarks/, not here."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from clip_adapter.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from clip_adapter.prompts import ClassText
from clip_adapter.selection import FeatureSplit, select
from clip_adapter.training import TrainingConfig, VmapStack, can_stack, train_loop, train_stacked

SRC = Path(__file__).resolve().parents[1] / "src"
C, D, N, V = 5, 32, 40, 3


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    text = ClassText(classnames=[f"c{i}" for i in range(C)], templates=["a {}."],
                     features=torch.randn(C, D, generator=g), logit_scale=50.0)
    labels = torch.arange(N) % C
    feats = text.features[labels] + 0.8 * torch.randn(N, D, generator=g)
    views = feats + 0.3 * torch.randn(V, N, D, generator=g)
    return text, feats, labels, views


def _assert_same(seq, bat, feats):
    for s, b in zip(seq, bat):
        assert b.fitted_ and b.config == s.config
        torch.testing.assert_close(b.logits(feats), s.logits(feats), atol=1e-5, rtol=0)
        assert b.history_["steps"] == s.history_["steps"]
        assert b.history_["loss"] == pytest.approx(s.history_["loss"], abs=1e-5)
        assert b.history_["train_acc"] == s.history_["train_acc"]


@pytest.mark.parametrize("kw", [dict(), dict(target="both", bias=True), dict(target="text", final_relu=False),
                                dict(optimizer="adamw", lr=1e-3)])
def test_stacked_fit_equals_one_fit_per_point(problem, kw):
    text, feats, labels, views = problem
    cfgs = [ClipAdapterConfig(alpha=a, alpha_text=1 - a, epochs=6, batch_size=16, **kw) for a in (0.2, 0.5, 0.8)]
    seq = [ClipAdapter(c).fit(feats, labels, text=text, views=views) for c in cfgs]
    bat = ClipAdapter.fit_many(cfgs, feats, labels, text=text, views=views, stack=True)
    _assert_same(seq, bat, feats)
    assert len({float(m.logits(feats)[0, 0]) for m in bat}) == 3      # three different models, not one copied


def test_stacked_fit_across_seeds_and_without_views(problem):
    """Seeds differ: each point draws its own init, order and views from its own generator, as alone."""
    text, feats, labels, _ = problem
    cfgs = [ClipAdapterConfig(seed=s, alpha=0.4, epochs=5, batch_size=64) for s in (1, 2, 3)]  # batch > n: no drop
    seq = [ClipAdapter(c).fit(feats, labels, text=text) for c in cfgs]
    _assert_same(seq, ClipAdapter.fit_many(cfgs, feats, labels, text=text, stack=True), feats)


def test_select_stacked_gives_the_sequential_choice(problem):
    text, feats, labels, views = problem
    train = FeatureSplit(feats, labels, views)
    g = torch.Generator().manual_seed(1)
    val = FeatureSplit(text.features[labels[:20]] + torch.randn(20, D, generator=g), labels[:20])
    cfg = ClipAdapterConfig(epochs=4, batch_size=16)
    grid = {"alpha": [0.1, 0.3, 0.6, 0.9]}
    a = select("clip_adapter", cfg, grid, train, val, text, stack=False)
    b = select("clip_adapter", cfg, grid, train, val, text, stack=True)
    assert a.chosen == b.chosen and a.candidates == b.candidates and a.config == b.config
    torch.testing.assert_close(a.model.logits(feats), b.model.logits(feats), atol=1e-5, rtol=0)


def test_points_that_cannot_share_an_optimiser_fall_back(problem):
    text, feats, labels, views = problem
    cfgs = [ClipAdapterConfig(lr=lr, epochs=2) for lr in (1e-3, 1e-2)]
    assert not can_stack(cfgs) and can_stack([dataclasses.replace(c, lr=1e-3) for c in cfgs])
    got = ClipAdapter.fit_many(cfgs, feats, labels, text=text, views=views, stack=True)   # one by one instead
    _assert_same([ClipAdapter(c).fit(feats, labels, text=text, views=views) for c in cfgs], got, feats)
    with pytest.raises(ValueError, match="equal optimisation settings"):
        train_stacked(nn.Linear(D, C), cfgs, feats, labels)


class _Probe(nn.Module):
    """A method-shaped module for the generic path: linear head on features, scaled by a per-point buffer."""

    def __init__(self, seed: int, scale: float):
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(D, C)
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x):
        return self.scale * self.head(x)


def test_vmap_stack_equals_train_loop(problem):
    """The generic stacker (for any method whose training graph is a module) reproduces train_loop per point."""
    _, feats, labels, views = problem
    cfgs = [TrainingConfig(seed=s, epochs=5, batch_size=16, lr=0.05) for s in (1, 2)]
    alone = [_Probe(0, sc) for sc in (1.0, 3.0)]
    for m, c in zip(alone, cfgs):
        train_loop(m.parameters(), m, feats, labels, c, views=views)
    points = [_Probe(0, sc) for sc in (1.0, 3.0)]
    stack = VmapStack(points)
    hist = train_stacked(stack, cfgs, feats, labels, views=views)
    stack.write_back()
    for a, b in zip(alone, points):
        torch.testing.assert_close(b.head.weight, a.head.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(b.head.bias, a.head.bias, atol=1e-6, rtol=0)
    assert [h["steps"] for h in hist] == [10, 10]


# -- instant start ------------------------------------------------------------------------------------------------
HEAVY = ("torch", "open_clip", "timm", "sentence_transformers", "sklearn", "ray")


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter on this tree; return which HEAVY modules it imported (and its output)."""
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_and_public_names_load_no_optional_heavy_library():
    """Touching every public name loads torch but not open_clip, timm, sentence-transformers, sklearn or ray."""
    got = _loaded_after("import clip_adapter as ca\nfor n in ca.__all__: getattr(ca, n)\n"
                        "assert set(ca.__all__) <= set(dir(ca))")
    assert got == {m: m == "torch" for m in HEAVY}


def test_unknown_attribute_is_an_attribute_error():
    import clip_adapter
    with pytest.raises(AttributeError, match="has no attribute 'load_backbones'"):
        clip_adapter.load_backbones  # noqa: B018


CLI_CASES = [["--help"], ["run", "--help"], ["experiment", "--help"], ["predict", "--help"], ["evaluate", "--help"],
             ["export", "--help"], ["datasets", "list", "--root", "/nonexistent"], ["run", "--shots", "x"],
             ["run", "--no-such-flag"]]


def test_help_listing_and_bad_flags_import_no_torch():
    """`clip-adapter --help`, `<command> --help`, `datasets list` and a bad flag answer without importing torch
    (one interpreter runs them all: nothing any of them imports may be heavy)."""
    code = ("import contextlib, io\nfrom clip_adapter.cli import main\ncodes = []\n"
            f"for argv in {CLI_CASES!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n            codes.append(main(argv))\n        except SystemExit as e:\n"
            "            codes.append(e.code)\n"
            "assert codes == [0, 0, 0, 0, 0, 0, 0, 2, 2], codes")
    assert _loaded_after(code) == {m: False for m in HEAVY}
