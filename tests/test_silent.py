"""Nothing silently wrong (#19): images decode to what a viewer shows, few-shot sets are what the record says, the
plan's size is said before it starts, and -v / verify's flags do what they say. The bad inputs themselves (one-line
errors) are rows of tests/test_bad_inputs.py; these are the inputs that must be read right."""
from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from clip_adapter import load_dataset
from clip_adapter.cli import build_parser, main
from clip_adapter.datasets.images import open_rgb, to_rgb
from clip_adapter.experiment.schema import read_yaml
from clip_adapter.features import load_image_views
from clip_adapter.methods import get_method_class

from conftest import COLORS, make_color_images

TINY = ["--backbone", "tiny-vit", "--pretrained", "none", "--workers", "0", "--no-progress"]
GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (16, 1))   # 16 x 256, every gray level once per row


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


# -- decoding ------------------------------------------------------------------------------------------------------
def test_16_bit_grayscale_decodes_like_its_8_bit_version(tmp_path, tiny_backbone):
    Image.fromarray(GRADIENT).save(tmp_path / "g8.png")
    Image.fromarray(GRADIENT.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    want = _pixels(open_rgb(tmp_path / "g8.png"))
    assert np.abs(_pixels(open_rgb(tmp_path / "g16.png")) - want).max() <= 1
    big_endian = Image.frombytes("I;16B", (256, 16), (GRADIENT.astype(">u2") * 257).tobytes())
    as_int32 = Image.fromarray(GRADIENT.astype(np.int32) * 257, "I")
    as_float = Image.fromarray(GRADIENT.astype(np.float32) / 255, "F")
    for im in (big_endian, as_int32, as_float):
        assert np.abs(_pixels(to_rgb(im)) - want).max() <= 1, im.mode
    # The features a run uses: the 16-bit file gives the 8-bit file's features, not a white image's.
    Image.new("RGB", (256, 16), (255, 255, 255)).save(tmp_path / "white.png")
    tf = tiny_backbone.test_transform
    x = torch.stack([load_image_views(str(tmp_path / n), tf) for n in ("g16.png", "g8.png", "white.png")])
    f = tiny_backbone.encode_images(x)
    assert torch.allclose(f[0], f[1], atol=1e-4) and not torch.allclose(f[0], f[2], atol=1e-2)


def test_transparency_is_composited_on_white():
    red_invisible = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(red_invisible).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    assert to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("La", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    shown = open_rgb(io.BytesIO(buf.getvalue()))
    assert shown.getpixel((0, 0)) == (255, 255, 255) and shown.getpixel((1, 1)) == (0, 0, 255)


def test_colour_spaces_are_converted():
    rgb = Image.fromarray(np.array([[[200, 40, 10], [10, 120, 230], [90, 90, 90]]], dtype=np.uint8))
    want = _pixels(rgb)
    lab = ImageCms.applyTransform(rgb, ImageCms.buildTransform(ImageCms.createProfile("sRGB"),
                                                               ImageCms.createProfile("LAB"), "RGB", "LAB"))
    for converted, tolerance in ((rgb.convert("YCbCr"), 3), (rgb.convert("HSV"), 5), (rgb.convert("CMYK"), 0),
                                 (lab, 16)):   # 8-bit CIELAB is coarse in dark colours
        assert np.abs(_pixels(to_rgb(converted)) - want).max() <= tolerance, converted.mode
    # A CMYK JPEG with an embedded profile goes through it (here: the sRGB profile itself, a no-op for RGB data).
    cmyk = rgb.convert("CMYK")
    cmyk.info["icc_profile"] = b"not a profile"
    assert np.abs(_pixels(to_rgb(cmyk)) - want).max() <= 0   # a broken profile: the plain conversion


def test_exif_orientation_and_animation(tmp_path):
    im = Image.new("RGB", (30, 10), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 10))   # white on the left
    exif = im.getexif()
    exif[0x0112] = 6                              # stored rotated: viewers turn it 90 degrees clockwise
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = open_rgb(tmp_path / "phone.jpg")
    assert shown.size == (10, 30) and shown.getpixel((5, 2))[0] > 200 and shown.getpixel((5, 27))[0] < 50
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "a.gif") as gif:
        gif.seek(1)
        assert to_rgb(gif).getpixel((0, 0)) == (255, 0, 0)   # the first frame, wherever the file was left


def test_one_decoder_everywhere():
    import clip_adapter.features as features
    import clip_adapter.model.classifier as classifier
    import clip_adapter.model.images as model_images
    verify = sys.modules["clip_adapter.datasets.verify"]   # the package exports a function of the same name
    assert features.open_rgb is open_rgb and model_images.open_rgb is open_rgb
    assert classifier.to_rgb is to_rgb and verify.to_rgb is to_rgb


# -- few-shot sets, class folders, CSV, YAML ----------------------------------------------------------------------
def _coop(tmp: Path) -> Path:
    images = make_color_images(tmp / "coop" / "images", per_class=6, size=16)
    raw: dict = {s: [] for s in ("train", "val", "test")}
    for y, c in enumerate(sorted(COLORS)):
        for i, p in enumerate(sorted((images / c).glob("*.png"))):
            raw["train" if i < 3 else "val" if i < 4 else "test"].append([f"{c}/{p.name}", y, c])
    (tmp / "coop" / "split_zhou_Colors.json").write_text(json.dumps(raw))
    return tmp / "coop"


def test_index_file_gives_the_shots_the_record_says(tmp_path, caplog, one_thread):
    data = _coop(tmp_path)
    entries = [{"impath": f"/elsewhere/{c}/{c}_{i:03d}.png", "label": y, "classname": c}
               for y, c in enumerate(sorted(COLORS)) for i in range(2)]
    (tmp_path / "idx.json").write_text(json.dumps({"train": {"data": entries}}))
    with caplog.at_level(logging.INFO, logger="clip_adapter"):
        rc = main(["run", "--data", str(data), "--method", "linear_probe", "--shots", "2", "--fewshot-index",
                   str(tmp_path / "idx.json"), "--output", str(tmp_path / "runs"), "--cache-dir",
                   str(tmp_path / "cache"), "--views", "0", *TINY])
    assert rc == 0
    record = json.loads(next((tmp_path / "runs").rglob("shots2-seed1.json")).read_text())
    assert record["shots"] == 2 and record["n_train"] == 8
    n = len(get_method_class("linear_probe").default_grid["C"])   # the method's grid: one fit per value of C
    assert f"Colors: plan: 1 run (1 to go), {n} fits (largest grid: {n} points), at most 20 images to encode" \
        in caplog.text


def test_train_and_test_folders_without_val(tmp_path):
    images = make_color_images(tmp_path / "imgs", per_class=10, size=8)
    for s, part in (("train", slice(0, 6)), ("test", slice(6, 10))):
        for c in COLORS:
            (tmp_path / "tree" / s / c).mkdir(parents=True)
            for p in sorted((images / c).glob("*.png"))[part]:
                shutil.copy(p, tmp_path / "tree" / s / c / p.name)
    ds = load_dataset(tmp_path / "tree")
    assert ds.classnames == sorted(COLORS)   # not two classes named 'test' and 'train'
    assert ds.summary() == {"name": "tree", "classes": 4, "train": 20, "val": 4, "test": 16}
    train = {it.path for it in ds.split("train")}
    assert not train & {it.path for it in ds.split("val")} and all("/train/" in it.path for it in ds.split("val"))


def test_csv_with_a_bom_and_skipped_files_are_said(tmp_path, caplog):
    images = make_color_images(tmp_path / "imgs", per_class=4, size=8)
    rows = [f"imgs/{c}/{p.name},{c}" for c in COLORS for p in sorted((images / c).glob("*.png"))]
    (tmp_path / "d.csv").write_text("\ufeffpath,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert load_dataset(tmp_path / "d.csv").num_classes == 4
    (images / "red" / "notes.docx").write_text("x")
    with caplog.at_level(logging.WARNING):
        load_dataset(images)
    assert "1 files are not images" in caplog.text and "notes.docx" in caplog.text


def test_yaml_reads_what_it_says():
    assert read_yaml("c.yaml", text="lr: 1e-3\nb: 2.5E+2\nn: 10\ns: 1e3x\n") == {"lr": 0.001, "b": 250.0, "n": 10,
                                                                               "s": "1e3x"}
    assert read_yaml("c.yaml", text="a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}   # small aliases are fine


# -- plan size, verbosity, verify ---------------------------------------------------------------------------------
def test_dry_run_says_the_plan_size_and_warns_about_a_huge_grid(tmp_path, capsys, caplog):
    data = make_color_images(tmp_path / "imgs", per_class=6, size=8)
    grid = {"alpha": [round(i / 99, 4) for i in range(100)], "epochs": list(range(1, 1001))}
    cfg = tmp_path / "big.yaml"
    cfg.write_text(f"datasets: [{data}]\nshots: [2]\nseeds: [1]\nmethods: {{clip_adapter: {{grid: {json.dumps(grid)}}}}}"
                   f"\noutput: {tmp_path / 'out'}\n")
    with caplog.at_level(logging.INFO, logger="clip_adapter"):
        assert main(["experiment", str(cfg), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "plan: 1 run (1 to go), 100,000 fits (largest grid: 100,000 points), at most 20 images to encode " \
           "(+ 80 augmented views)" in out
    assert "this is a large plan (100,000 fits; the largest grid has 100,000 points)" in caplog.text
    assert not (tmp_path / "out").exists()


def test_verbose_before_and_after_the_subcommand(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["-v", "datasets", "verify", "x", "-v"])
    assert args.verbose + args.verbose_after == 2
    assert parser.parse_args(["run", "--data", "x", "-vv"]).verbose_after == 2
    assert parser.parse_args(["datasets", "-v", "verify", "x"]).verbose_after == 1
    ours, pil = logging.getLogger("clip_adapter"), logging.getLogger("PIL")
    try:
        assert main(["datasets", "list", "--root", str(tmp_path)]) == 0
        assert ours.level == logging.INFO and pil.level == logging.WARNING
        assert main(["datasets", "list", "--root", str(tmp_path), "-v"]) == 0
        assert ours.level == logging.DEBUG and pil.level == logging.WARNING
        with pytest.raises(ValueError, match="Unknown dataset 'dtdd'"):   # -vv after the command: the traceback
            main(["datasets", "verify", "dtdd", "-vv"])
        assert pil.level == logging.DEBUG
    finally:
        main(["datasets", "list", "--root", str(tmp_path)])   # back to the defaults for the other tests


def test_verify_accepts_allow_outside_paths_and_names_classes_without_training_images(tmp_path, capsys):
    data = _coop(tmp_path)
    raw = json.loads((data / "split_zhou_Colors.json").read_text())
    raw["train"][0][0] = str(data / "images" / raw["train"][0][0])
    (data / "split_zhou_Colors.json").write_text(json.dumps(raw))
    assert main(["datasets", "verify", str(data), "--no-progress"]) == 1
    assert "--allow-outside-paths" in capsys.readouterr().err
    assert main(["datasets", "verify", str(data), "--no-progress", "--allow-outside-paths"]) == 0
    out = capsys.readouterr().out
    assert ": OK: 24 files checked" in out
    assert "training images per class: 3 to 3 (fewest: 'blue'); --shots above 3 needs --repeat-shots." in out
    raw["test"] += [e for e in raw["train"] if e[2] == "yellow"]
    raw["train"] = [e for e in raw["train"] if e[2] != "yellow"]
    (data / "split_zhou_Colors.json").write_text(json.dumps(raw))
    assert main(["datasets", "verify", str(data), "--no-progress", "--allow-outside-paths", "--full"]) == 1
    assert "1 of 4 classes has no training images ('yellow'): runs that train refuse this dataset." in \
        capsys.readouterr().out
