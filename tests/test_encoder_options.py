"""Encoder options (#22.3): precision, compile, runtime (torch | ONNX Runtime) and GPU JPEG decoding, as part of the
backbone recipe: checked with one-line errors, exposed once on the command line and in the experiment YAML, part of
the feature-cache address when they change features, recorded with every result; the ONNX graph exported once."""
from __future__ import annotations

import dataclasses
import os
import stat

import pytest
import torch
from PIL import Image

from clip_adapter import FeatureCache, load_backbone
from clip_adapter.backbones import encoder as enc
from clip_adapter.backbones.encoder import EncoderOptions, cosine_distance, resolve
from clip_adapter.cli import build_parser, main
from clip_adapter.cli import common
from clip_adapter.features import ImageListDataset, decode_on_device

from conftest import seeded_backbone

needs_onnx = pytest.mark.skipif(not enc.onnx_available(), reason="onnx/onnxruntime not installed ([onnx] extra)")
TINY = ["--backbone", "tiny-vit", "--pretrained", "none", "--workers", "0", "--no-progress"]


@pytest.fixture
def tiny(one_thread):
    return seeded_backbone("tiny-vit")


def _images(bb, color_dir, n=4) -> torch.Tensor:
    paths = sorted(color_dir.rglob("*.png"))[:n]
    return torch.stack([bb.test_transform(Image.open(p)) for p in paths])


# -- validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"precision": "fp64"}, "The 'precision' parameter of the encoder must be one of 'fp32', 'bf16', 'fp16'. "
                            "Got 'fp64' instead."),
    ({"runtime": "tensorrt"}, "The 'runtime' parameter of the encoder must be one of 'torch', 'onnx', 'auto'. "
                              "Got 'tensorrt' instead."),
    ({"compile": "yes"}, "The 'compile' parameter of the encoder must be a bool. Got 'yes' instead."),
])
def test_bad_option_is_one_line_before_loading(kw, message):
    with pytest.raises(ValueError) as e:
        load_backbone("tiny-vit", pretrained=None, **kw)
    assert str(e.value) == message


def test_impossible_combinations_are_one_line(tiny):
    cases = [({"runtime": "onnx", "precision": "bf16"},
              "--runtime onnx runs fp32 only; drop --precision bf16 or use --runtime torch."),
             ({"runtime": "onnx", "compile": True}, "--runtime onnx and --compile exclude each other; drop one."),
             ({"gpu_decode": True}, f"--gpu-decode decodes JPEGs on a CUDA GPU, but {tiny.id} runs on 'cpu'; drop "
                                    f"--gpu-decode or use --device cuda.")]
    for kw, message in cases:
        with pytest.raises(ValueError) as e:
            tiny.configure_encoder(**kw)
        assert str(e.value) == message
    assert tiny.encoder.variant == ""   # a refused configuration leaves the backbone as it was


def test_cli_bad_precision_and_gpu_decode_on_cpu(capsys, color_dir):
    with pytest.raises(SystemExit) as e:
        main(["run", "--data", str(color_dir), "--precision", "fp64", *TINY])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "argument --precision: invalid choice: 'fp64'" in err
    assert main(["run", "--data", str(color_dir), "--gpu-decode", *TINY]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: --gpu-decode decodes JPEGs on a CUDA GPU")


def test_defaults_shown_in_help():
    sub = build_parser()._subparsers._group_actions[0].choices
    for command in ("run", "demo", "predict", "evaluate"):
        text = " ".join(sub[command].format_help().split())
        assert "--precision {fp32,bf16,fp16}" in text and "(default: fp32)" in text, command
        assert "--runtime {torch,onnx,auto}" in text and "(default: auto)" in text, command
        assert "--compile" in text and "--gpu-decode" in text, command
    # The CLI keeps its own copy of the choices (no torch import on --help): the same as the library's.
    assert common.PRECISIONS == enc.PRECISIONS and common.RUNTIMES == enc.RUNTIMES
    assert common.ENCODER_DEFAULTS == dataclasses.asdict(EncoderOptions())


def test_cli_options_reach_the_backbone(monkeypatch):
    args = build_parser().parse_args(["run", "--data", "x", "--precision", "bf16", "--runtime", "torch", "--compile",
                                      *TINY])
    assert common.encoder_from_args(args) == {"precision": "bf16", "compile": True, "runtime": "torch",
                                              "gpu_decode": False}
    seen = {}
    monkeypatch.setattr("clip_adapter.backbones.load_backbone", lambda *a, **kw: seen.update(kw))
    common.backbone_from_args(args)
    assert {k: seen[k] for k in enc.ENCODER_KEYS} == common.encoder_from_args(args)


# -- auto ------------------------------------------------------------------------------------------------------
def test_auto_picks_onnx_only_where_measured(monkeypatch):
    cpu = torch.device("cpu")
    auto = EncoderOptions(runtime="auto")
    assert EncoderOptions().runtime == "auto"     # the default: ONNX Runtime where measured faster, else torch
    monkeypatch.setattr(enc, "onnx_available", lambda: True)
    assert resolve(auto, cpu, True, True, "lite").runtime == "onnx"
    assert resolve(auto, cpu, True, False, "RN50").runtime == "torch"       # not measured faster
    assert resolve(EncoderOptions("bf16", runtime="auto"), cpu, True, True, "lite").runtime == "torch"
    assert resolve(EncoderOptions(compile=True, runtime="auto"), cpu, True, True, "lite").runtime == "torch"
    monkeypatch.setattr(enc, "onnx_available", lambda: False)               # not installed: torch
    assert resolve(auto, cpu, True, True, "lite").runtime == "torch"
    with pytest.raises(ValueError, match=r"needs the onnx and onnxruntime packages: pip install"):
        resolve(EncoderOptions(runtime="onnx"), cpu, True, True, "lite")


# -- cache address and records ---------------------------------------------------------------------------------
def test_cache_folder_differs_per_variant_and_default_keeps_its_folder(tiny, tmp_path):
    cache = FeatureCache(tiny, root=tmp_path, progress=False, num_workers=0)
    default = cache.folder("test")
    assert default.parent.name.count("-") == 1          # test-<hash>: today's folder, unchanged
    folders = {"": default}
    for kw, variant in (({"precision": "bf16"}, "bf16"), ({"precision": "fp16"}, "fp16"),
                        ({"runtime": "torch", "compile": True}, "compile")):
        tiny.configure_encoder(**kw)
        folders[variant] = cache.folder("test")
        assert folders[variant].parent.name == f"{default.parent.name}-{variant}"
        assert cache.folder("train", 3).parent.name.endswith(f"-{variant}")
    assert len(set(folders.values())) == 4


def test_bf16_features_cached_apart_and_recorded(tiny, tmp_path, color_dir):
    paths = [str(p) for p in sorted(color_dir.rglob("*.png"))[:3]]
    cache = FeatureCache(tiny, root=tmp_path, progress=False, num_workers=0)
    fp32 = cache.features(paths)
    tiny.configure_encoder(precision="bf16")
    bf16 = cache.features(paths)
    assert cache.encoded_images == 6                    # the fp32 features were not served for bf16
    assert not torch.equal(fp32, bf16) and cosine_distance(fp32, bf16) < 0.1
    assert tiny.describe()["encoder"] == {"precision": "bf16", "compile": False, "runtime": "torch",
                                          "gpu_decode": False, "variant": "bf16"}
    tiny.configure_encoder()
    assert torch.equal(cache.features(paths), fp32) and cache.encoded_images == 6   # fp32 served from its folder
    assert "encoder" not in tiny.describe()             # today's path: records as before


# -- ONNX Runtime ----------------------------------------------------------------------------------------------
@needs_onnx
def test_onnx_exported_once_reused_and_equal(tiny, tmp_path, color_dir, monkeypatch):
    monkeypatch.setenv("CLIP_ADAPTER_CACHE", str(tmp_path / "cache"))
    x = _images(tiny, color_dir)
    want = tiny.encode_images(x)
    tiny.configure_encoder(runtime="onnx")
    got = tiny.encode_images(x)
    assert cosine_distance(got, want) <= 1e-3
    runner = tiny._runner
    assert runner.export_seconds > 0 and runner.onnx_path.parent == tmp_path / "cache" / "onnx"
    assert stat.S_IMODE(os.stat(runner.onnx_path.parent).st_mode) == 0o700
    assert [p.name for p in runner.onnx_path.parent.iterdir()] == [runner.onnx_path.name]   # no temp file left
    assert tiny.describe()["encoder"]["runtime"] == "onnx"

    def no_export(*a, **k):
        raise AssertionError("exported again")
    monkeypatch.setattr(enc, "export_onnx", no_export)
    again = seeded_backbone("tiny-vit").configure_encoder(runtime="onnx")   # another process, same weights
    assert torch.equal(again.encode_images(x), got) and again._runner.export_seconds == 0


@needs_onnx
def test_onnx_graph_keyed_by_weights_and_corrupt_graph_reexported(tmp_path, color_dir, monkeypatch, one_thread):
    # tiny-rn: batch norm, which an export must leave in eval mode on the live tower.
    monkeypatch.setenv("CLIP_ADAPTER_CACHE", str(tmp_path / "cache"))
    a = seeded_backbone("tiny-rn", seed=0)
    x = _images(a, color_dir, 2)
    want = a.encode_images(x)
    a.configure_encoder(runtime="onnx")
    b = seeded_backbone("tiny-rn", seed=1).configure_encoder(runtime="onnx")
    assert cosine_distance(a.encode_images(x), want) <= 1e-3
    b.encode_images(x)
    assert a._runner.onnx_path != b._runner.onnx_path
    assert torch.equal(a.configure_encoder().encode_images(x), want)   # the torch path after an export: unchanged
    for graph in (tmp_path / "cache" / "onnx").glob("*.onnx"):
        graph.write_bytes(b"not a graph")
    c = seeded_backbone("tiny-rn", seed=0).configure_encoder(runtime="onnx")
    assert cosine_distance(c.encode_images(x), want) <= 1e-3 and c._runner.export_seconds > 0


# -- GPU decoding (the device part runs on CPU here: the same code with device="cpu") -----------------------------
def test_gpu_decode_pipeline_matches_pil_path(tiny, tmp_path):
    from torchvision.io import read_file
    folder = tmp_path / "jpg"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(3):
        arr = (torch.rand(40 + 8 * i, 56, 3, generator=g) * 255).to(torch.uint8).numpy()
        p = folder / f"im{i}.jpg" if i < 2 else folder / f"im{i}.png"   # a PNG takes the CPU decoder
        Image.fromarray(arr).save(p, quality=95) if i < 2 else Image.fromarray(arr).save(p)
        paths.append(str(p))
    datas = [read_file(p) for p in paths]
    for transform, views in ((tiny.test_transform, None), (tiny.train_transform, [0, 3])):
        got = decode_on_device(datas, paths, transform, views, "cpu")
        want = torch.stack([ImageListDataset(paths, transform, views)[i] for i in range(len(paths))])
        assert got.shape == want.shape
        # Same crops and flips (seeded per image and view); tensor vs PIL resizing differ by rounding only.
        assert (got - want).abs().mean() < 0.03, (transform, views)


# -- experiment YAML -------------------------------------------------------------------------------------------
def test_experiment_backbone_keys(color_dir):
    from clip_adapter.experiment.schema import _raw, parse_config
    base = {"datasets": [str(color_dir)], "methods": ["zero_shot"]}
    default = parse_config({**base, "backbone": {"name": "tiny-vit", "pretrained": None}})
    assert default.backbone.options == {}       # defaults stay out: run settings as before these keys existed
    assert _raw(default)["backbone"]["runtime"] == "auto" and _raw(default)["backbone"]["precision"] == "fp32"
    cfg = parse_config({**base, "backbone": {"name": "tiny-vit", "pretrained": None, "precision": "bf16",
                                             "runtime": "torch"}})
    assert cfg.backbone.options == {"precision": "bf16", "runtime": "torch"}
    assert _raw(cfg)["backbone"]["precision"] == "bf16"
    bb = cfg.backbone.build()
    assert bb.encoder.variant == "bf16" and bb.describe()["encoder"]["precision"] == "bf16"
    with pytest.raises(ValueError) as e:
        parse_config({**base, "backbone": {"name": "tiny-vit", "precision": "int8"}}, source="exp.yaml")
    assert str(e.value) == ("exp.yaml: backbone: 'precision' must be one of 'fp32', 'bf16', 'fp16'. Got 'int8' "
                            "instead.")


def test_gpu_decode_cache_path_runs_end_to_end_on_cpu(tiny, tmp_path, monkeypatch):
    """The extraction loop of --gpu-decode (file bytes from the loader, decoded and transformed by decode_on_device),
    forced onto the CPU: the option itself refuses the CPU, so the resolved options are set directly here."""
    import warnings
    folder = tmp_path / "jpg"
    folder.mkdir()
    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(5):
        p = folder / f"im{i}.jpg"
        Image.fromarray((torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()).save(p, quality=95)
        paths.append(str(p))
    cache = FeatureCache(tiny, root=tmp_path / "features", progress=False, num_workers=0, batch_size=2)
    want, want_views = cache.features(paths), cache.views(paths, 2)
    tiny._encoder = dataclasses.replace(tiny.encoder, gpu_decode=True)
    assert cache.folder("test").parent.name.endswith("-gpu-decode")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pin_memory without an accelerator
        got, got_views = cache.features(paths), cache.views(paths, 2)
    assert cache.encoded_images == 2 * (5 + 10)           # nothing served across the two decoders
    # Measured: 4e-6 (test) and 3e-6 (views) against the PIL path; another image or view is at 2e-2.
    assert cosine_distance(got, want) < 1e-3 and cosine_distance(got_views.flatten(0, 1),
                                                                  want_views.flatten(0, 1)) < 1e-3
    assert cosine_distance(got, want.roll(1, 0)) > 1e-2 and cosine_distance(got_views[0], want_views[1]) > 1e-2


def test_predict_on_ray_refuses_encoder_options(capsys, tmp_path):
    argv = ["predict", str(tmp_path / "model"), str(tmp_path / "x.png"), "--ray", "local", "--out",
            str(tmp_path / "p.jsonl"), "--runtime", "onnx"]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == ("error: --precision/--compile/--runtime/--gpu-decode are not passed "
                                               "to Ray predictor actors yet; drop them with --ray, or predict "
                                               "without --ray.")
