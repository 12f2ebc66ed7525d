"""Export a whole adapted classifier (image encoder + adapter + head) to ONNX, runnable with onnxruntime alone.

    clip-adapter export models/dtd --onnx dtd.onnx          # writes dtd.onnx and dtd.onnx.json

The graph maps preprocessed images ``(n, 3, H, W)`` (float32) to class probabilities ``(n, C)`` and logits. The
sidecar ``<file>.json`` holds what a deployment needs besides the graph: the class names (column order) and the
preprocessing (resize, centre crop, mean/std); ``onnx_predict.py``, copied next to the graph, classifies image
files with onnxruntime, numpy and Pillow only (:mod:`clip_adapter.model.onnx_predict`). The export is checked before it is kept: onnxruntime's probabilities must equal
PyTorch's to ``atol`` on a batch of images, or nothing is written.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.encoder import no_mha_fastpath
from ..io import atomic_path

__all__ = ["export_onnx", "ONNX_OPSET", "RUNNER"]

ONNX_OPSET = 18
RUNNER = Path(__file__).with_name("onnx_predict.py")  # the torch-free runner copied next to an exported graph
DECODER = Path(__file__).parents[1] / "datasets" / "images.py"  # its image decoder (numpy + Pillow), copied too


class _Whole(torch.nn.Module):
    """Preprocessed images -> (probabilities, logits): the backbone's encoder, then the method's formula."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        modules = [m for m in vars(classifier.backbone).values() if isinstance(m, torch.nn.Module)]
        self.parts = torch.nn.ModuleList(modules)  # so that .eval() and parameters reach the encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        method, backbone = self.classifier.method, self.classifier.backbone
        # One traceable pass: a backbone's export graph (no micro-batching loop) unless the method encodes itself.
        encode = (getattr(method, "encode_images", None) or getattr(backbone, "encode_images_graph", None)
                  or backbone.encode_images)
        logits = method.logits(encode(images).float())
        return torch.softmax(logits, dim=-1), logits


def _preprocessing(transform) -> dict[str, Any]:
    """The test transform as data: torchvision's Resize / CenterCrop / Normalize steps (ToTensor scales to [0, 1])."""
    steps = getattr(transform, "transforms", [transform])
    out: dict[str, Any] = {"resize_shorter_side": None, "center_crop": None, "mean": [0.0, 0.0, 0.0],
                           "std": [1.0, 1.0, 1.0], "interpolation": "bicubic"}
    for t in steps:
        name = type(t).__name__
        if name == "Resize":
            size = t.size if isinstance(t.size, int) else t.size[0]
            out["resize_shorter_side"] = int(size)
            out["interpolation"] = str(getattr(t.interpolation, "value", t.interpolation))
        elif name == "CenterCrop":
            out["center_crop"] = [int(s) for s in t.size]
        elif name == "Normalize":
            out["mean"], out["std"] = [float(m) for m in t.mean], [float(s) for s in t.std]
        elif name not in ("ToTensor", "Lambda", "PILToTensor", "ConvertImageDtype", "ToImage", "ToDtype",
                          "MaybeToTensor", "_convert_to_rgb", "function"):
            raise ValueError(f"Cannot describe the transform step {name} for ONNX deployment; expected Resize, "
                             f"CenterCrop, ToTensor and Normalize.")
    if out["center_crop"] is None:
        raise ValueError("The backbone's test transform has no CenterCrop; an ONNX graph needs a fixed input size.")
    return out


def export_onnx(classifier, path: str | os.PathLike, *, check_images: torch.Tensor | None = None,
                atol: float = 1e-4) -> dict[str, Any]:
    """Write ``path`` (the ONNX graph) and ``path.json`` (class names, preprocessing), after checking that
    onnxruntime's probabilities equal PyTorch's within ``atol`` on ``check_images`` (default: 4 random
    preprocessed images). Returns the sidecar's content plus ``max_abs_diff``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxruntime: pip install 'clip-adapter[onnx]'.") from None
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX export target {path} must end in .onnx.")
    prep = _preprocessing(classifier.transform)
    h, w = prep["center_crop"]
    example = check_images if check_images is not None else torch.randn(4, 3, h, w, generator=torch.Generator()
                                                                         .manual_seed(0))
    whole = _Whole(classifier).eval()
    # Checked on the example batch and on a smaller one: the graph must not bake in the batch size.
    checks = [example, example[: max(1, len(example) - 1)]]
    with torch.no_grad():
        wants = [whole(x)[0].numpy() for x in checks]
    with atomic_path(path) as tmp, no_mha_fastpath(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is "legacy" but exact here
        # The TorchScript exporter traces the concrete path (our input checks pass and vanish from the graph);
        # nn.MultiheadAttention's fused inference kernel has no ONNX form, so the plain ops are traced instead.
        torch.onnx.export(whole, (example,), str(tmp), input_names=["images"], output_names=["probs", "logits"],
                          dynamic_axes={"images": {0: "n"}, "probs": {0: "n"}, "logits": {0: "n"}},
                          opset_version=ONNX_OPSET, dynamo=False)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diff = 0.0
        for x, want in zip(checks, wants):
            got = session.run(["probs"], {"images": x.numpy().astype(np.float32)})[0]
            diff = max(diff, float(np.abs(got - want).max()))
        if not diff <= atol:
            raise ValueError(f"ONNX export of {classifier.method.name} disagrees with PyTorch: max |p_onnx - p_torch| "
                             f"= {diff:.2e} > {atol:.0e}; nothing written to {path}.")
    sidecar = {"classes": classifier.classes_, "method": classifier.method.name, "backbone": classifier.backbone.id,
               "input": {"name": "images", "shape": ["n", 3, h, w], "dtype": "float32"},
               "outputs": ["probs", "logits"], "preprocessing": prep, "opset": ONNX_OPSET}
    with atomic_path(Path(f"{path}.json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    for source, name in ((RUNNER, RUNNER.name), (DECODER, "clip_adapter_images.py")):
        with atomic_path(path.with_name(name)) as tmp:
            tmp.write_text(source.read_text())
    return {**sidecar, "max_abs_diff": diff}
