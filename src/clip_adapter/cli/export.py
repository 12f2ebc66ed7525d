"""``clip-adapter export MODEL_DIR --onnx FILE.onnx``: the whole classifier as one ONNX graph, checked against PyTorch."""
from __future__ import annotations

import argparse

from .common import add_model_backbone_arg


def register(sub) -> None:
    """``export``."""
    p = sub.add_parser("export", help="export a saved model (encoder + adapter + head) to ONNX for deployment.",
                       description="Write FILE.onnx (preprocessed images (n, 3, H, W) -> probabilities and logits) and "
                                   "FILE.onnx.json (class names, preprocessing). onnxruntime's outputs are checked "
                                   "against PyTorch's before anything is written.")
    p.add_argument("model", metavar="MODEL_DIR", help="a saved model folder (run --save-model).")
    p.add_argument("--onnx", required=True, metavar="FILE.onnx", help="where to write the graph.")
    p.add_argument("--checkpoint", default=None, help="the local checkpoint the model was trained on, if any.")
    add_model_backbone_arg(p)
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |p_onnx - p_torch| in the check (default: 1e-4).")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..model import AdaptedClassifier        # torch-heavy: only when the command runs
    from ..model.export import export_onnx
    model = AdaptedClassifier.from_pretrained(args.model, checkpoint=args.checkpoint, backbone=args.backbone)
    out = export_onnx(model, args.onnx, atol=args.atol)
    print(f"wrote {args.onnx} and {args.onnx}.json: {len(out['classes'])} classes, input {out['input']['shape']}, "
          f"max |onnx - torch| = {out['max_abs_diff']:.1e}")
    return 0
