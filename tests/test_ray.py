"""Scaling out on Ray, in local mode on this machine (``ray.init(num_cpus=2)``): extraction on Ray Data into the
feature cache, the experiment grid as Ray tasks, batch prediction, ``kill -9`` of a worker in the middle of each,
and the one-line errors. Ray is an optional extra: without it these tests skip with the reason, except in CI
(``CI=true``), which installs the extra and must run them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from clip_adapter import FeatureCache, load_dataset, run_experiment
from clip_adapter.model import AdaptedClassifier, predict_to_jsonl

from conftest import make_color_images

if os.environ.get("CI") == "true":
    import ray  # CI installs the ray extra: a missing Ray is a failure there, not a skip
else:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

from clip_adapter.backbones import BackboneSpec  # noqa: E402
from clip_adapter.distributed import (ClusterError, ExtractRequest, check_resources,  # noqa: E402
                                      check_shared_folder, connect, extract_features, predict_on_ray)
from clip_adapter.distributed import cluster  # noqa: E402
from clip_adapter.features import image_key  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = BackboneSpec.of("tiny-vit", pretrained=None)


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    """One local 2-CPU cluster for the module (what `--ray` without an address starts)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024 * 1024,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    return make_color_images(tmp_path_factory.mktemp("ray_data") / "colors", per_class=8, size=24)


def _config(data: Path, tmp: Path, out: str, ray_opts: dict | None = None, epochs: int = 3) -> dict:
    cfg = {"name": "small", "datasets": [str(data)], "shots": [1, 2], "seeds": [1, 2], "n_views": 2, "workers": 0,
           "backbone": {"name": "tiny-vit", "pretrained": None},
           "methods": {"zero_shot": {}, "linear_probe": {"grid": {"C": [0.1, 10.0]}},
                       "clip_adapter": {"grid": {"alpha": [0.2, 0.6]}, "overrides": {"epochs": epochs}}},
           "cache_dir": str(tmp / f"cache_{out}"), "output": str(tmp / out)}
    if ray_opts is not None:
        cfg["executor"] = {"ray": ray_opts}
    return cfg


VOLATILE = {"train_seconds", "predict_seconds", "total_seconds", "time", "result_file", "run_settings"}


def _records(result) -> dict[str, dict]:
    return {Path(r["result_file"]).relative_to(result.output).as_posix(): r for r in result.records}


# -- extraction ------------------------------------------------------------------------------------------------
def test_extraction_on_ray_fills_the_cache_like_the_plain_path(colors, tmp_path):
    ds = load_dataset(colors)
    items = [it for s in ("train", "val", "test") for it in ds.split(s)]
    backbone = TINY.build()
    cache = FeatureCache(backbone, root=tmp_path / "ray", progress=False, num_workers=0, batch_size=8)
    stats = extract_features(TINY, cache, [ExtractRequest(items, "test"),
                                           ExtractRequest(ds.split("train"), "train", (0, 1))], encoder_actors=2)
    assert stats["encoded"] == len(items) + 2 * len(ds.split("train")) and stats["actors"] == 2  # 2 views
    again = extract_features(TINY, cache, [ExtractRequest(items, "test")])  # nothing left: nothing encoded
    assert again["encoded"] == 0
    fresh = FeatureCache(backbone, root=tmp_path / "ray", progress=False, num_workers=0)
    feats, views = fresh.features(items), fresh.views(ds.split("train"), 2)
    assert fresh.encoded_images == 0  # everything came from the shards the actors wrote
    plain = FeatureCache(backbone, root=tmp_path / "plain", progress=False, num_workers=0)
    torch.testing.assert_close(feats, plain.features(items), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(views, plain.views(ds.split("train"), 2), atol=1e-5, rtol=1e-5)
    # Several writers, each shard whole: every image exactly once per folder, no temporary file left.
    from safetensors import safe_open
    expected = {cache.folder("test"): len(items), cache.folder("train", 0): len(ds.split("train")),
                cache.folder("train", 1): len(ds.split("train"))}
    for folder, n in expected.items():
        keys = []
        for shard in folder.glob("shard-*.safetensors"):
            with safe_open(str(shard), framework="pt") as f:
                keys += json.loads(f.metadata()["keys"])
        assert len(keys) == len(set(keys)) == n and not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))


def test_cache_keys_are_the_same_on_any_mount_point_and_differ_between_files(colors, tmp_path):
    import shutil
    moved = tmp_path / "elsewhere" / "colors"
    shutil.copytree(colors, moved)
    a, b = load_dataset(colors), load_dataset(moved)
    assert [image_key(it) for it in a.split("test")] == [image_key(it) for it in b.split("test")]
    assert a.split("test")[0].rel.startswith("colors/")
    backbone = TINY.build()
    FeatureCache(backbone, root=tmp_path / "c", progress=False, num_workers=0).features(a.split("test"))
    other = FeatureCache(backbone, root=tmp_path / "c", progress=False, num_workers=0)
    other.features(b.split("test"))   # another mount point (another node): served from the same shards
    assert other.encoded_images == 0
    twin = make_color_images(tmp_path / "twin" / "colors", per_class=8, size=24, seed=9)  # same names, other pixels
    assert image_key(load_dataset(twin).split("test")[0]) != image_key(a.split("test")[0])


# -- the experiment grid ---------------------------------------------------------------------------------------
def test_ray_experiment_gives_the_records_of_a_plain_run(colors, tmp_path):
    plain = run_experiment(_config(colors, tmp_path, "plain"), progress=False)
    on_ray = run_experiment(_config(colors, tmp_path, "ray", {"address": None, "encoder_actors": 2}),
                            progress=False)
    a, b = _records(plain), _records(on_ray)
    assert sorted(a) == sorted(b) and on_ray.ran == plain.ran == 9
    for k in a:
        assert set(a[k]) == set(b[k]), k
        assert {f: v for f, v in a[k].items() if f not in VOLATILE} == \
               {f: v for f, v in b[k].items() if f not in VOLATILE}, k
    # report cannot tell them apart: the same summary, cell by cell (training time aside)
    import csv

    def cells(result):
        with open(result.report["csv"]) as f:
            return [{k: v for k, v in row.items() if k != "train_seconds_mean"} for row in csv.DictReader(f)]
    assert cells(plain) == cells(on_ray)
    lines = (on_ray.output / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 9 and len({(json.loads(x)["variant"], json.loads(x)["seed"]) for x in lines}) == 5


def _ray_workers(class_part: str) -> list[int]:
    """PIDs of Ray worker processes whose title (``ray::<actor class>...``) contains ``class_part``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and class_part in cmd:
            pids.append(int(pid))
    return pids


def _kill_when(class_part: str, ready, timeout: float = 300.0) -> int:
    """Once ``ready()`` (the job is under way), SIGKILL a worker process of ``class_part``; returns its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = _ray_workers(class_part)
        if pids and ready():
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no {class_part} worker while the job was under way, in {timeout} s")


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            box["error"] = e
    t = threading.Thread(target=target)
    t.start()
    return t, box


def test_kill_a_worker_in_the_middle_of_an_experiment(colors, tmp_path):
    cfg = _config(colors, tmp_path, "killed", {"address": None}, epochs=60)
    out = tmp_path / "killed"
    t, box = _in_thread(lambda: run_experiment(cfg, progress=False, report=False))
    try:   # kill a run actor once the first records are written: runs are then in flight
        killed = _kill_when("RunWorker", lambda: 0 < len(list(out.glob("*/*/shots*.json"))) < 9)
    finally:
        t.join(timeout=600)
    assert "error" not in box, box.get("error")
    result = box["value"]
    assert killed and not result.failed and len(result.records) == result.planned == 9
    files = sorted((tmp_path / "killed").glob("*/*/shots*.json"))
    lines = [json.loads(x) for x in (tmp_path / "killed" / "runs.jsonl").read_text().splitlines()]
    assert len(files) == 9 and len(lines) == 9
    assert len({(r["variant"], r["shots"], r["seed"]) for r in lines}) == 9   # none lost, none twice


def test_shards_split_the_plan_and_cover_it(colors, tmp_path):
    cfg = _config(colors, tmp_path, "sharded")
    parts = [run_experiment(cfg, progress=False, shard=f"{i}/2") for i in range(2)]
    paths = [{r["result_file"] for r in p.records} for p in parts]
    assert not paths[0] & paths[1] and len(paths[0] | paths[1]) == 9
    assert not (tmp_path / "sharded" / "summary.md").exists()   # each shard leaves the report to `report`
    with pytest.raises(ValueError, match=r"--shard '3' must look like i/N"):
        run_experiment(cfg, progress=False, shard="3")


# -- prediction ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(colors, tmp_path_factory) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from clip_adapter import RunSpec, load_backbone, run_one
    tmp = tmp_path_factory.mktemp("ray_model")
    ckpt = tmp / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in TINY.build().model.state_dict().items()}, str(ckpt))
    bb = load_backbone("tiny-vit", checkpoint=str(ckpt))
    run_one(load_dataset(colors), bb, RunSpec("clip_adapter", shots=2, overrides={"epochs": 2}, grid={}, n_views=0),
            cache=FeatureCache(bb, root=tmp / "c", progress=False, num_workers=0), save_model=tmp / "model")
    return tmp / "model", ckpt


def _collection(colors: Path, tmp: Path, n_copies: int) -> list[str]:
    import shutil
    paths = []
    for i in range(n_copies):
        dst = tmp / "collection" / f"copy{i}"
        shutil.copytree(colors, dst)
        paths += sorted(str(p) for p in dst.rglob("*.png"))
    (tmp / "collection" / "broken.png").write_bytes(b"not a png")
    return paths + [str(tmp / "collection" / "broken.png")]


def test_ray_prediction_writes_what_the_plain_path_writes_and_resumes(colors, saved_model, tmp_path):
    model_dir, ckpt = saved_model
    paths = _collection(colors, tmp_path, 1)
    model = AdaptedClassifier.from_pretrained(model_dir, checkpoint=str(ckpt))
    predict_to_jsonl(model, paths, tmp_path / "plain.jsonl", top_k=3, num_workers=0, batch_size=8)
    counts = predict_on_ray(model_dir, paths, tmp_path / "ray.jsonl", top_k=3, batch_size=8, checkpoint=str(ckpt),
                            actors=2)
    assert counts == {"written": len(paths), "errors": 1, "skipped": 0}
    plain = [json.loads(x) for x in (tmp_path / "plain.jsonl").read_text().splitlines()]
    on_ray = [json.loads(x) for x in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["path"] for r in plain] == [r["path"] for r in on_ray] == paths   # input order
    for p, r in zip(plain, on_ray):
        assert p.keys() == r.keys() and p.get("prediction") == r.get("prediction") and p.get("error") == r.get("error")
        for tp, tr in zip(p.get("top_k", []), r.get("top_k", [])):
            assert tp["class"] == tr["class"] and abs(tp["probability"] - tr["probability"]) < 1e-5
    again = predict_on_ray(model_dir, paths, tmp_path / "ray.jsonl", top_k=3, checkpoint=str(ckpt))
    assert again == {"written": 1, "errors": 1, "skipped": len(paths) - 1}  # only the failed image is tried again


def test_kill_a_worker_in_the_middle_of_a_prediction(colors, saved_model, tmp_path):
    model_dir, ckpt = saved_model
    paths = _collection(colors, tmp_path, 12)   # 385 images in batches of 4: the kill lands mid-stream
    out = tmp_path / "killed.jsonl"
    t, box = _in_thread(lambda: predict_on_ray(model_dir, paths, out, top_k=2, batch_size=4, checkpoint=str(ckpt),
                                               actors=1))

    def streaming() -> bool:
        return out.is_file() and 8 < out.read_bytes().count(b"\n") < len(paths) - 40
    try:
        killed = _kill_when("_Predictor", streaming)
    finally:
        t.join(timeout=600)
    assert "error" not in box, box.get("error")
    lines = [json.loads(x)["path"] for x in out.read_text().splitlines()]
    assert killed and box["value"]["written"] == len(paths)
    assert lines == paths   # every image once, in order: none lost, none duplicated


def test_parquet_output_from_the_command_line(colors, saved_model, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="parquet output needs pyarrow (in the ray extra)")
    from clip_adapter.cli import main
    model_dir, ckpt = saved_model
    out = tmp_path / "preds.parquet"
    assert main(["predict", str(model_dir), str(colors / "red"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--ray", "--workers", "0"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 8 and set(table.column_names) >= {"path", "prediction", "probability", "top_k"}
    assert not Path(f"{out}.partial.jsonl").exists()


# -- errors ----------------------------------------------------------------------------------------------------
def test_gpus_the_cluster_does_not_have_are_an_error(colors, tmp_path):
    with pytest.raises(ClusterError, match=r"asks for 1 GPU\(s\) for each run, but the Ray cluster has 0"):
        check_resources(ray, gpus=1)
    cfg = _config(colors, tmp_path, "gpu", {"address": None, "gpus_per_run": 1})
    with pytest.raises(ClusterError, match="but the Ray cluster has 0"):
        run_experiment(cfg, progress=False)


def test_a_folder_other_nodes_cannot_see_is_an_error(tmp_path, monkeypatch):
    node = [n for n in ray.nodes() if n["Alive"]][0]
    (tmp_path / "token").write_text("x")
    assert cluster.blind_nodes(ray, [node], tmp_path, "token") == []          # the probe runs on the node
    assert cluster.blind_nodes(ray, [node], tmp_path, "absent") == [node["NodeManagerAddress"]]
    monkeypatch.setattr(ray, "nodes", lambda: [node, {**node, "NodeManagerAddress": "10.0.0.9"}])
    monkeypatch.setattr(cluster, "blind_nodes", lambda *a: ["10.0.0.9"])
    with pytest.raises(ClusterError, match=r"The feature cache folder .* is not visible from node\(s\) 10.0.0.9"):
        check_shared_folder(ray, tmp_path, "feature cache folder")


def test_unreachable_address_is_a_one_line_error(colors, tmp_path):
    with pytest.raises(ClusterError, match=r"Ray cluster at 127.0.0.1:9 is unreachable"):
        cluster._reachable("127.0.0.1:9")
    with pytest.raises(ClusterError, match="must be 'auto', host:port or ray://host:port"):
        cluster._reachable("nohost")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_config(colors, tmp_path, "x")))
    proc = subprocess.run([sys.executable, "-m", "clip_adapter.cli", "experiment", str(cfg), "--ray", "127.0.0.1:9",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 1 and len(errors) == 1 and "127.0.0.1:9 is unreachable" in errors[0], proc.stderr


def test_ray_without_the_extra_says_how_to_install_it(colors, tmp_path, monkeypatch, capsys):
    import builtins

    from clip_adapter.cli import main
    real_import = builtins.__import__

    def no_ray(name, *args, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_config(colors, tmp_path, "x")))
    assert main(["experiment", str(cfg), "--ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Running on Ray needs Ray and Ray Data: pip install 'clip-adapter[ray]' (or pip install "
                   "'ray[data]')."]


def test_connect_reuses_the_running_cluster():
    assert connect("auto") is ray and ray.is_initialized()
