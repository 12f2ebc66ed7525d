"""Build the demo dataset shipped in the package: a small, fixed Fashion-MNIST subset (MIT licence).

Source: Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``), which installs the
original IDX files of Zalando Research's Fashion-MNIST under /usr/share/datasets/fashion-mnist.

Subset rule (deterministic): for each class, in file order, the first 24 images of the training file are
``train``, the next 8 are ``val``, and the first 40 images of the test file are ``test`` (720 PNGs, ~0.5 MB).

    python scripts/build_demo_data.py [--src /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CLASSNAMES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
PER_CLASS = {"train": 24, "val": 8, "test": 40}
OUT = Path(__file__).resolve().parents[1] / "src" / "clip_adapter" / "demo_data" / "fashion_mnist"


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = ap.parse_args()
    tr_x, tr_y = read_idx(args.src / "train-images-idx3-ubyte.gz"), read_idx(args.src / "train-labels-idx1-ubyte.gz")
    te_x, te_y = read_idx(args.src / "t10k-images-idx3-ubyte.gz"), read_idx(args.src / "t10k-labels-idx1-ubyte.gz")
    tmp = OUT.with_name(OUT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rows = []
    for label in range(10):
        tr_idx = np.flatnonzero(tr_y == label)
        te_idx = np.flatnonzero(te_y == label)
        picks = {"train": ("train", tr_idx[:24]), "val": ("train", tr_idx[24:32]), "test": ("test", te_idx[:40])}
        for split, (src, idx) in picks.items():
            arr = tr_x if src == "train" else te_x
            for i in idx:
                name = f"images/{src}_{i:05d}.png"
                Image.fromarray(arr[i], mode="L").save(tmp / name, optimize=True)
                rows.append((name, label, split))
    with open(tmp / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    (tmp / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (tmp / "LICENSE").write_text(
        "Fashion-MNIST subset (720 of 70,000 images), built by scripts/build_demo_data.py.\n"
        "Source: Fashion-MNIST, Zalando Research (https://github.com/zalandoresearch/fashion-mnist),\n"
        "via Debian's dataset-fashion-mnist package. Xiao, Rasul, Vollgraf, 'Fashion-MNIST: a Novel Image\n"
        "Dataset for Benchmarking Machine Learning Algorithms', arXiv:1708.07747, 2017.\n\n"
        "The MIT License (MIT)\nCopyright (c) 2017 Zalando SE, https://tech.zalando.com\n\n"
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and\n"
        "associated documentation files (the \"Software\"), to deal in the Software without restriction,\n"
        "including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense,\n"
        "and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,\n"
        "subject to the following conditions:\n\nThe above copyright notice and this permission notice shall be\n"
        "included in all copies or substantial portions of the Software.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\",\n"
        "WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF\n"
        "MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS\n"
        "OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF\n"
        "CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR\n"
        "OTHER DEALINGS IN THE SOFTWARE.\n")
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    print(f"wrote {len(rows)} images to {OUT}")


if __name__ == "__main__":
    main()
