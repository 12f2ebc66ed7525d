"""The dataset registry, the split readers, verify and the `datasets` CLI. Offline.

Tests marked "shared" read the real CoOp split files and small CoOp-layout datasets in ../shared/datasets (a
developer checkout); they are skipped where that folder is absent (e.g. a user's clone).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from PIL import Image

from clip_adapter import datasets as data
from clip_adapter.cli import datasets as datasets_cli
from clip_adapter.datasets import builtin, catalog
from clip_adapter.datasets import REGISTRY, DatasetInfo, get_info, verify
from clip_adapter.datasets.builtin import read_builtin as load_builtin
from clip_adapter.datasets.catalog import templates_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (only in a developer checkout "
                                                                 f"with ../shared/datasets)")

PAPER_NAMES = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
               "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
VARIANT_NAMES = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]  # domain shift: test only
ALL_NAMES = PAPER_NAMES + VARIANT_NAMES


def png(path: Path, color=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def make_coop_dtd(root: Path, per_split=(2, 1, 1), classes=("banded", "blotchy")) -> Path:
    """``root/dtd`` in CoOp layout (images/<class>/*.png + split_zhou_DescribableTextures.json)."""
    ds = root / "dtd"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, c in enumerate(classes):
        i = 0
        for s, n in zip(data.SPLITS, per_split):
            for _ in range(n):
                rel = f"{c}/{c}_{i:04d}.png"
                png(ds / "images" / rel, (label * 100, i * 30, 0))
                split[s].append([rel, label, c])
                i += 1
    (ds / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return ds


def run_cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="clip-adapter")
    datasets_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


# -- registry ----------------------------------------------------------------------------------------------------
def test_registry_holds_the_eleven_paper_datasets():
    assert set(PAPER_NAMES) <= set(REGISTRY)
    assert REGISTRY["dtd"].templates == ("{} texture.",)
    assert REGISTRY["eurosat"].templates == ("a centered satellite photo of {}.",)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_catalog_row_is_complete(name):
    info = REGISTRY[name]
    assert isinstance(info, DatasetInfo) and info.name == name and get_info(name) is info
    assert list(info.templates) == templates_for(info.coop_name)
    assert sum(info.split_sizes) > 0 and info.num_classes > 1 and info.required
    assert info.licence and info.homepage
    assert info.split_format in catalog.FORMATS          # a reader is registered for its format
    for res in info.resources:
        assert res.urls or res.manual, f"{name}/{res.filename}: no URL and no manual step"
        for cs, n in ((res.sha256, 64), (res.md5, 32)):
            assert cs is None or (len(cs) == n and int(cs, 16) >= 0)
    if info.download_mode != "auto":
        assert info.manual_steps or any(not r.urls for r in info.resources)


def test_paper_sizes():
    """CoOp's dataset table (ImageNet: val is our hold-out from train, see the notes)."""
    expect = {"caltech101": (100, (4128, 1649, 2465)), "oxford_pets": (37, (2944, 736, 3669)),
              "stanford_cars": (196, (6509, 1635, 8041)), "oxford_flowers": (102, (4093, 1633, 2463)),
              "food101": (101, (50500, 20200, 30300)), "fgvc_aircraft": (100, (3334, 3333, 3333)),
              "sun397": (397, (15880, 3970, 19850)), "dtd": (47, (2820, 1128, 1692)),
              "eurosat": (10, (13500, 5400, 8100)), "ucf101": (101, (7639, 1898, 3783)),
              "imagenet": (1000, (1_271_167, 10_000, 50_000)),
              # the domain-shift variants (CoOp's table): test only
              "imagenet_v2": (1000, (0, 0, 10_000)), "imagenet_sketch": (1000, (0, 0, 50_889)),
              "imagenet_a": (200, (0, 0, 7_500)), "imagenet_r": (200, (0, 0, 30_000))}
    assert {n: (REGISTRY[n].num_classes, REGISTRY[n].split_sizes) for n in expect} == expect
    assert sum(REGISTRY["imagenet"].split_sizes[:2]) == 1_281_167


@pytest.mark.parametrize("alias,name", [("flowers102", "oxford_flowers"), ("pets", "oxford_pets"),
                                        ("DescribableTextures", "dtd"), ("FGVC-Aircraft", "fgvc_aircraft"),
                                        ("Caltech101", "caltech101"), ("cars", "stanford_cars"), ("DTD", "dtd")])
def test_aliases(alias, name):
    assert get_info(alias).name == name


def test_unknown_name_lists_names_and_a_close_match():
    with pytest.raises(ValueError) as e:
        get_info("flowers1O2")
    msg = str(e.value)
    assert "did you mean 'oxford_flowers'" in msg and ", ".join(REGISTRY) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="did you mean 'dtd'"):
        data.load_dataset("dtdd")  # through data.load_dataset, as the CLI's --data does


# -- the catalog as data: validated rows, add_catalog, readers by format, the README table --------------------------
ROW = {"name": "mytextures", "title": "My textures", "coop_name": "MyTextures", "directory": "mytex",
       "image_dir": "images", "split_format": "coop", "num_classes": 2, "split_sizes": [4, 2, 2],
       "licence": "CC0", "homepage": "https://example.org", "templates": ["{} pattern."],
       "required": ["split_zhou_MyTextures.json", "images"], "aliases": ["mytex"]}


@pytest.fixture
def restore_registry():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
    catalog._template_table.cache_clear()


def _catalog_file(tmp_path: Path, *rows: dict) -> Path:
    path = tmp_path / "my_catalog.json"
    path.write_text(json.dumps({"datasets": list(rows)}))
    return path


@pytest.mark.parametrize("change, message", [
    ({"templtes": ["{}."]}, r"datasets\[0\] \('mytextures'\): unknown key 'templtes' \(did you mean 'templates'\?\)"),
    ({"num_classes": "2"}, r"datasets\[0\] \('mytextures'\): 'num_classes' must be an int >= 1\. Got '2' instead"),
    ({"split_sizes": [1, 2]}, r"'split_sizes' must be 3 ints >= 0 \(train, val, test\)"),
    ({"templates": ["no slot"]}, r"'templates' must be a non-empty list of strings each with '\{\}' once"),
    ({"name": "My Textures"}, r"'name' must be a lowercase name"),
    ({"resources": [{"filename": "a.zip", "sha256": "xyz"}]}, r"resources\[0\]: 'sha256' must be 64 hex digits"),
    ({"resources": [{"file": "a.zip"}]}, r"resources\[0\]: unknown key 'file' \(did you mean 'filename'\?\)"),
])
def test_a_bad_catalog_row_is_a_one_line_error_naming_the_key(tmp_path, change, message):
    path = _catalog_file(tmp_path, {**ROW, **change})
    with pytest.raises(ValueError, match=message) as e:
        catalog.read_catalog(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_a_missing_key_and_a_repeated_name_are_one_line_errors(tmp_path):
    row = {k: v for k, v in ROW.items() if k != "licence"}
    with pytest.raises(ValueError, match=r"datasets\[0\] \('mytextures'\): missing key 'licence'"):
        catalog.read_catalog(_catalog_file(tmp_path, row))
    with pytest.raises(ValueError, match=r"datasets\[1\] \('other'\) has a name or alias of row 'mytextures'"):
        catalog.read_catalog(_catalog_file(tmp_path, ROW, {**ROW, "name": "other", "coop_name": "Other"}))


def test_add_catalog_makes_a_users_row_a_built_in_name(tmp_path, restore_registry):
    ds_dir = make_coop_dtd(tmp_path / "root")            # CoOp layout, renamed into the user's row
    ds_dir.rename(tmp_path / "root" / "mytex")
    (tmp_path / "root" / "mytex" / "split_zhou_DescribableTextures.json").rename(
        tmp_path / "root" / "mytex" / "split_zhou_MyTextures.json")
    assert data.add_catalog(_catalog_file(tmp_path, ROW)) == ["mytextures"]
    assert get_info("mytex").name == "mytextures" and templates_for("mytextures") == ["{} pattern."]
    ds = data.load_dataset("mytex", root=tmp_path / "root")
    assert ds.name == "mytextures" and ds.classnames == ["banded", "blotchy"] and ds.templates == ["{} pattern."]
    assert [len(ds.split(s)) for s in data.SPLITS] == [4, 2, 2]
    assert "| `mytextures` (`mytex`) |" in catalog.catalog_markdown()


def test_add_catalog_refuses_taken_names_and_unknown_formats(tmp_path, restore_registry):
    before = dict(REGISTRY)
    with pytest.raises(ValueError, match=r"dataset 'mytextures' has a name or alias of the catalog's 'dtd'"):
        data.add_catalog(_catalog_file(tmp_path, {**ROW, "aliases": ["textures"]}))
    with pytest.raises(ValueError, match=r"catalog row 'mytextures': Unknown split_format 'coopp' \(did you mean "
                                         r"'coop'\?\)"):
        data.add_catalog(_catalog_file(tmp_path, {**ROW, "split_format": "coopp"}))
    assert REGISTRY == before                                 # nothing half-added


def test_split_formats_are_a_registry_of_readers(tmp_path, restore_registry, monkeypatch):
    seen = []

    def reader(info, ds_dir):
        seen.append((info.name, ds_dir))
        return data.Dataset(info.name, ["a"], {s: [] for s in data.SPLITS})
    monkeypatch.setitem(catalog.FORMATS, "myformat", reader)
    (tmp_path / "mytex" / "images").mkdir(parents=True)
    (tmp_path / "mytex" / "split_zhou_MyTextures.json").write_text("{}")
    data.add_catalog(_catalog_file(tmp_path, {**ROW, "split_format": "myformat"}))
    assert load_builtin("mytextures", tmp_path).name == "mytextures" and seen == [("mytextures", tmp_path / "mytex")]
    with pytest.raises(ValueError, match="already registered"):
        catalog.register_format("coop")(reader)


def test_readme_dataset_table_is_generated_from_the_catalog():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("| name (aliases) |")
    table = readme[start:readme.index("<!-- end of the generated table -->", start)]
    assert table == catalog.catalog_markdown(), (
        "README.md's dataset table is stale; paste the output of python -c \"from clip_adapter.datasets import "
        "catalog_markdown; print(catalog_markdown(), end='')\" between its markers.")


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_ADAPTER_DATA", str(tmp_path / "env"))
    assert catalog.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert catalog.resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("CLIP_ADAPTER_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert catalog.resolve_root(None) == tmp_path / "home" / "data"


def test_missing_data_error_names_the_path_and_the_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_builtin("flowers102", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "oxford_flowers" / "split_zhou_OxfordFlowers.json") in msg
    assert f"clip-adapter datasets download oxford_flowers --root {tmp_path}" in msg and "\n" not in msg
    monkeypatch.setenv("CLIP_ADAPTER_DATA", str(tmp_path / "viaenv"))
    with pytest.raises(FileNotFoundError, match="viaenv"):
        load_builtin("dtd")


# -- readers -----------------------------------------------------------------------------------------------------
def test_load_builtin_coop_layout_from_env_root(tmp_path, monkeypatch):
    make_coop_dtd(tmp_path)
    monkeypatch.setenv("CLIP_ADAPTER_DATA", str(tmp_path))
    ds = data.load_dataset("dtd")
    assert ds.summary() == {"name": "dtd", "classes": 2, "train": 4, "val": 2, "test": 2}
    assert ds.templates == ["{} texture."] and ds.classnames == ["banded", "blotchy"]
    assert ds.split("train")[0].path == str(tmp_path / "dtd" / "images" / "banded" / "banded_0000.png")


def test_fgvc_reader(tmp_path):
    ds_dir = tmp_path / "fgvc_aircraft"
    ds_dir.mkdir()
    variants = ["707-320", "A300B4", "F/A-18"]
    (ds_dir / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = {"train": ["1025794 707-320", "1340192 A300B4", "0056978 F/A-18"], "val": ["2000001 A300B4"],
             "test": ["3000001 F/A-18", "3000002 707-320"]}
    for s, ls in lines.items():
        (ds_dir / f"images_variant_{s}.txt").write_text("\n".join(ls) + "\n")
        for ln in ls:
            png(ds_dir / "images" / f"{ln.split()[0]}.jpg")
    ds = load_builtin("fgvc_aircraft", tmp_path)
    assert ds.classnames == variants and ds.templates == ["a photo of a {}, a type of aircraft."]
    assert [(Path(it.path).name, it.label) for it in ds.split("train")] == [
        ("1025794.jpg", 0), ("1340192.jpg", 1), ("0056978.jpg", 2)]
    assert ds.summary()["test"] == 2
    (ds_dir / "images_variant_val.txt").write_text("2000001 Boeing 999\n")
    with pytest.raises(ValueError, match="variant 'Boeing 999' is not in variants.txt"):
        load_builtin("fgvc_aircraft", tmp_path)


def make_imagenet(root: Path, wnids=("n01440764", "n01443537", "n01484850"), n_train=15, n_val=3) -> Path:
    ds = root / "imagenet"
    for w in wnids:
        for i in range(n_train):
            (ds / "images" / "train" / w).mkdir(parents=True, exist_ok=True)
            (ds / "images" / "train" / w / f"{w}_{i}.JPEG").write_bytes(b"x")
        for i in range(n_val):
            (ds / "images" / "val" / w).mkdir(parents=True, exist_ok=True)
            (ds / "images" / "val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG").write_bytes(b"x")
    names = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    (ds / "classnames.txt").write_text("".join(f"{w} {names[w]}\n" for w in wnids))
    return ds


def test_imagenet_reader_holds_val_out_of_train_never_test(tmp_path):
    ds_dir = make_imagenet(tmp_path)
    ds = load_builtin("imagenet", tmp_path)
    assert ds.classnames == ["tench", "goldfish", "great white shark"] and ds.templates == ["a photo of a {}."]
    train, val, test = ({it.path for it in ds.split(s)} for s in data.SPLITS)
    assert len(val) == 3 * min(builtin.IMAGENET_VAL_PER_CLASS, 15 // 2) and len(train) + len(val) == 45
    assert not train & val and all("/images/train/" in p for p in val)
    assert len(test) == 9 and all("/images/val/" in p for p in test)
    # fixed: the cached split is reused, and a rescan gives the same split
    cache = ds_dir / builtin.IMAGENET_SPLIT_CACHE
    assert cache.is_file()
    cache.unlink()
    again = load_builtin("imagenet", tmp_path)
    assert {it.path for it in again.split("val")} == val
    # a new classnames.txt invalidates the cache
    (ds_dir / "classnames.txt").write_text("n01440764 tinca\nn01443537 goldfish\nn01484850 shark\n")
    assert load_builtin("imagenet", tmp_path).classnames[0] == "tinca"


def test_imagenet_classnames_written_from_open_clip(tmp_path, monkeypatch):
    ds_dir = make_imagenet(tmp_path, n_train=2, n_val=1)
    (ds_dir / "classnames.txt").unlink()
    # a stand-in for open_clip's 1000 CLIP names (importing open_clip itself takes seconds)
    fake = types.ModuleType("open_clip.zero_shot_metadata")
    fake.IMAGENET_CLASSNAMES = ("tench", "goldfish", "great white shark")
    monkeypatch.setitem(sys.modules, "open_clip.zero_shot_metadata", fake)
    result = data.download("imagenet", tmp_path, progress=False)
    assert result.complete
    assert (ds_dir / "classnames.txt").read_text().splitlines()[1] == "n01443537 goldfish"


# -- verify ------------------------------------------------------------------------------------------------------
def test_verify_names_deleted_and_corrupt_images(tmp_path):
    ds_dir = make_coop_dtd(tmp_path)
    (ds_dir / "images" / "banded" / "banded_0001.png").unlink()
    (ds_dir / "images" / "blotchy" / "blotchy_0002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = ds_dir / "images" / "blotchy" / "blotchy_0003.png"
    good.write_bytes(good.read_bytes()[:40])  # truncated PNG
    report = verify(ds_dir, progress=False)  # a folder path: counts come from its split file only
    assert not report.ok and report.expected_counts is None
    assert report.missing == [os.path.join("images", "banded", "banded_0001.png")]
    assert sorted(p for p, _ in report.corrupt) == [os.path.join("images", "blotchy", f"blotchy_000{i}.png")
                                                    for i in (2, 3)]
    text = "\n".join(report.lines())
    assert "FAILED" in text and "1 missing, 2 corrupt" in text and "banded_0001.png" in text
    # by name: the registry's counts (47 classes, 2820/1128/1692) are checked too
    by_name = verify("dtd", tmp_path, progress=False)
    assert any("split sizes differ" in p and "train 4 vs 2820" in p for p in by_name.problems)
    assert any("2 classes; the registry expects 47" in p for p in by_name.problems)
    assert by_name.to_dict()["missing"] == report.missing


def test_verify_ok_and_full_decode(tmp_path):
    ds_dir = make_coop_dtd(tmp_path)
    report = verify(ds_dir, full=True, progress=False)
    assert report.ok and report.checked == 8 and "OK" in report.summary()


# -- CLI ---------------------------------------------------------------------------------------------------------
def test_cli_list_table_and_json(tmp_path):
    make_coop_dtd(tmp_path)
    code, out = run_cli(["datasets", "list", "--root", str(tmp_path), "--format", "json"])
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == list(REGISTRY)
    assert {r["name"]: r["present"] for r in rows}["dtd"] is True and rows[0]["present"] is False
    assert rows[0]["download"] == "manual" and {r["name"]: r["download"] for r in rows}["dtd"] == "auto"
    code, out = run_cli(["datasets", "list", "--root", str(tmp_path)])
    assert code == 0 and "oxford_flowers" in out and "4093" in out


def test_cli_verify_exit_codes(tmp_path):
    ds_dir = make_coop_dtd(tmp_path)
    assert run_cli(["datasets", "verify", str(ds_dir), "--no-progress"])[0] == 0
    (ds_dir / "images" / "banded" / "banded_0000.png").unlink()
    code, out = run_cli(["datasets", "verify", str(ds_dir), "--no-progress", "--format", "json"])
    assert code == 1 and json.loads(out)["missing"] == [os.path.join("images", "banded", "banded_0000.png")]


def test_cli_download_checks_local_files(tmp_path, capsys):
    """A --from file with the wrong bytes fails its checksum (one line, exit 1) and is not deleted."""
    src = tmp_path / "have"
    src.mkdir()
    split = {"train": [["cars_train/00001.jpg", 0, "AM General Hummer SUV 2000"]], "val": [], "test": []}
    (src / "split_zhou_StanfordCars.json").write_text(json.dumps(split))
    root = tmp_path / "root"
    code, _ = run_cli(["datasets", "download", "cars", "--root", str(root), "--from", str(src), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "stanford_cars: error: Checksum mismatch for split_zhou_StanfordCars.json: expected sha256 40ac" in err
    assert (src / "split_zhou_StanfordCars.json").exists()  # the user's own file is never deleted
    assert not (root / "stanford_cars" / "split_zhou_StanfordCars.json").exists()


@needs_shared
def test_cli_download_with_local_split_files(tmp_path):
    root = tmp_path / "root"
    code, out = run_cli(["datasets", "download", "stanford_cars", "--root", str(root), "--from",
                         str(SHARED / "coop_splits" / "splits"), "--no-progress"])
    assert code == 1 and "steps left" in out and "cars_train" in out and str(root) in out
    assert (root / "stanford_cars" / "split_zhou_StanfordCars.json").is_file()


def test_cli_download_unknown_name_fails_before_downloading(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'eurosat'"):
        run_cli(["datasets", "download", "dtd", "eurosta", "--root", str(tmp_path)])
    assert not (tmp_path / ".downloads").exists()


def test_lead_cli_wires_the_datasets_command(tmp_path, capsys):
    cli = pytest.importorskip("clip_adapter.cli")
    assert cli.main(["datasets", "list", "--root", str(tmp_path), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(ALL_NAMES)


# -- the real CoOp split files (shared/datasets) -------------------------------------------------------------------
@needs_shared
def test_registry_matches_the_coop_split_files():
    files = sorted((SHARED / "coop_splits" / "splits").glob("split_zhou_*.json"))
    assert len(files) == 7
    by_split = {i.split_file: i for i in REGISTRY.values() if i.split_format == "coop"}
    for f in files:
        info = by_split[f.name]
        raw = json.loads(f.read_text())
        labels = {e[1] for s in data.SPLITS for e in raw[s]}
        assert len(labels) == info.num_classes, f.name
        assert tuple(len(raw[s]) for s in data.SPLITS) == info.split_sizes, f.name
        # the checksum the registry downloads it with is the one of these (byte-identical) files
        res = next(r for r in info.resources if r.filename == f.name)
        assert res.sha256 == hashlib.sha256(f.read_bytes()).hexdigest(), f.name
        assert res.urls[0].endswith(f"/splits/{f.name}")


@needs_shared
@pytest.mark.parametrize("folder,counts", [("dtd10", (10, 600, 240, 360)), ("flowers89", (89, 2762, 1110, 1671))])
def test_verify_shared_coop_folders(folder, counts):
    report = verify(SHARED / folder, progress=False)
    assert report.ok, report.lines()
    assert (report.classes, *(report.counts[s] for s in data.SPLITS)) == counts


@needs_shared
def test_builtin_name_on_a_subset_reports_the_count_mismatch(tmp_path):
    """dtd10 placed as <root>/dtd: loads as 'dtd', and verify says it is not the full 47-class DTD."""
    ds_dir = tmp_path / "dtd"
    ds_dir.mkdir()
    (ds_dir / "images").symlink_to(SHARED / "dtd10" / "images")
    shutil.copy(SHARED / "dtd10" / "split_zhou_DescribableTextures10.json",
                ds_dir / "split_zhou_DescribableTextures.json")
    with pytest.raises(data.DataError, match="goes through a symlink to .*allow_outside_paths=True"):
        load_builtin("dtd", tmp_path)  # the symlinked image folder reaches outside the dataset folder
    ds = load_builtin("dtd", tmp_path, allow_outside_paths=True)
    assert ds.num_classes == 10 and ds.templates == ["{} texture."]
    report = verify("dtd", tmp_path, progress=False, allow_outside_paths=True)
    assert not report.ok and not report.missing and not report.corrupt
    assert "train 600 (expected 2820)" in report.summary() and "classes 10 (expected 47)" in report.summary()


# -- the ImageNet variants of the domain-shift protocol ------------------------------------------------------------
def test_wnid_lists_and_the_200_class_subsets():
    from clip_adapter.datasets.class_ids import imagenet_classnames, imagenet_wnids, subset_wnids
    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"
    names = imagenet_classnames()
    assert names["n01440764"] == "tench" and names["n15075141"] == "toilet paper"
    for row, some in (("imagenet_a", ("n01498041", "n12267677")), ("imagenet_r", ("n01443537", "n12267677"))):
        sub = subset_wnids(REGISTRY[row].class_list)
        assert len(sub) == len(set(sub)) == REGISTRY[row].num_classes == 200 and set(sub) <= set(wnids)
        assert all(w in sub for w in some)
    a, r = set(subset_wnids("imagenet_a")), set(subset_wnids("imagenet_r"))
    assert a != r  # two different 200-class subsets
    for name in VARIANT_NAMES:
        info = REGISTRY[name]
        assert info.split_format == "imagenet_variant" and info.resources[0].urls and info.resources[0].manual
        assert info.templates == ("a photo of a {}.",) and get_info(name.replace("_", "-")) is info


def test_imagenet_variant_readers(tmp_path):
    from clip_adapter.datasets.class_ids import class_ids, imagenet_wnids, subset_wnids
    r_dir = tmp_path / "imagenet-rendition" / "imagenet-r"
    for w in subset_wnids("imagenet_r"):
        png(r_dir / w / "a.jpg")
    ds = load_builtin("imagenet_r", tmp_path)
    assert ds.num_classes == 200 and len(ds.split("test")) == 200 and not ds.split("train")
    assert class_ids(ds) == subset_wnids("imagenet_r") and ds.classnames[0] == "goldfish"
    png(r_dir / "n01440764" / "b.jpg")  # tench is not an ImageNet-R class
    with pytest.raises(Exception, match=r"imagenet_r: .* has 201 class folders; expected the 200 of "
                                        r"class_lists/imagenet_r.txt \(not in the list: \['n01440764'\]"):
        load_builtin("imagenet_r", tmp_path)
    v2 = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for i in (0, 1, 10, 999):
        png(v2 / str(i) / "x.jpeg")
    ds = load_builtin("imagenet_v2", tmp_path)
    assert class_ids(ds) == [imagenet_wnids()[i] for i in (0, 1, 10, 999)]
    assert ds.classnames == ["tench", "goldfish", "brambling", "toilet paper"]
