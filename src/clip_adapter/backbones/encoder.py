"""How a backbone's image tower runs: precision, ``torch.compile``, the runtime (torch or ONNX Runtime) and GPU JPEG
decoding. These are part of the backbone's one recipe (``load_backbone(..., precision=, compile=, runtime=,
gpu_decode=)``, :class:`~clip_adapter.backbones.BackboneSpec` options, CLI ``--precision/--compile/--runtime/
--gpu-decode``); they never change the backbone ``id`` (the weights) but do change the feature-cache address when
they change features at all (:attr:`EncoderOptions.variant`).

Measured (``benchmarks/encoder_variants.py``, see the benchmarks README): on the CPU, ONNX Runtime runs the lite
image tower ~3x faster than torch with features equal to torch's (max cosine distance ~2e-7); bf16 autocast is faster
but moves lite's features by ~1e-2; ``torch.compile`` is slower on CPU. ``runtime="auto"`` picks ONNX Runtime for
backbones that measured faster with it (``Backbone.onnx_by_default``: lite) when ``onnxruntime`` and ``onnx`` are
installed (dependencies of the package), the device is the CPU and precision is fp32; torch otherwise. ``auto`` is
the default (see :data:`DEFAULT_RUNTIME`); ``runtime="torch"`` gives the torch path's features exactly.

The exported ONNX graph is cached per user (``<cache>/onnx/``, created 0700, only the user's own regular files are
read), keyed by the weights and the export settings, written atomically, so it is exported once (seconds) and checked
against torch on export (max cosine distance <= 1e-3, else refused).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import invalid_value
from ..io import atomic_path, default_cache_dir, safe_name

__all__ = ["EncoderOptions", "DEFAULT_RUNTIME", "no_mha_fastpath", "ImageRunner", "PRECISIONS", "RUNTIMES", "ENCODER_KEYS", "onnx_available",
           "OnnxGraphCache", "EQUAL_COSINE"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
RUNTIMES = ("torch", "onnx", "auto")
ENCODER_KEYS = ("precision", "compile", "runtime", "gpu_decode")   # load_backbone options taken by this module
# auto: ONNX Runtime for the image towers where it measured faster (lite on the CPU: 1.3-5x, benchmarks/README.md
# section 8) with features equal to torch's (max cosine distance ~2e-7; the rule is 1e-3); torch elsewhere.
# Adopting it moved the golden lite prediction probabilities by <= 3e-6 and no accuracy or choice (both regenerated,
# #22.3). --runtime torch gives the previous path's features exactly.
DEFAULT_RUNTIME = "auto"
EQUAL_COSINE = 1e-3   # the rule: a variant is "equal" to today's features within this cosine distance
ONNX_OPSET = 17
ONNX_FORMAT = 1       # bump when the export recipe below changes: the cache key then changes
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def onnx_available() -> bool:
    """Whether ONNX export and ONNX Runtime can be used (``pip install 'clip-adapter[onnx]'``); no import."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@dataclass(frozen=True)
class EncoderOptions:
    """How the image tower runs. Values are checked here, with the one error shape.

    Attributes:
        precision: ``fp32`` (default: today's features), ``bf16`` or ``fp16`` autocast (faster on hardware that has
            them; features move, so they get their own cache address).
        compile: ``torch.compile`` the image tower (torch runtime only).
        runtime: ``torch`` (default, today's path), ``auto`` (ONNX Runtime where it measured faster with equal
            features, lite on the CPU, when installed; torch otherwise) or ``onnx`` (ONNX Runtime on the CPU; fp32).
        gpu_decode: decode JPEGs on the GPU (``torchvision.io.decode_jpeg(device="cuda")``) with pinned loader memory
            in the feature-cache path; CUDA only, off until measured.
    """

    precision: str = "fp32"
    compile: bool = False
    runtime: str = DEFAULT_RUNTIME
    gpu_decode: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise invalid_value("precision", self.precision, "one of " + ", ".join(map(repr, PRECISIONS)),
                                owner="the encoder")
        if self.runtime not in RUNTIMES:
            raise invalid_value("runtime", self.runtime, "one of " + ", ".join(map(repr, RUNTIMES)),
                                owner="the encoder")
        for name in ("compile", "gpu_decode"):
            if not isinstance(getattr(self, name), bool):
                raise invalid_value(name, getattr(self, name), "a bool", owner="the encoder")

    @classmethod
    def pop(cls, options: dict[str, Any]) -> "EncoderOptions":
        """The encoder options out of a ``load_backbone`` options dict (removed from it); defaults for absent ones."""
        return cls(**{k: options.pop(k) for k in ENCODER_KEYS if k in options})


@dataclass(frozen=True)
class Resolved:
    """Options with ``auto`` decided for one backbone on one device."""

    precision: str
    compile: bool
    runtime: str          # "torch" or "onnx"
    gpu_decode: bool

    @property
    def variant(self) -> str:
        """What of these changes features beyond exact equality with today's path: ``""`` for fp32 on torch
        without compile (today's), else e.g. ``"onnx"``, ``"bf16"``, ``"fp16+compile"``, ``"gpu-decode"``. Part of the
        feature-cache address. ONNX Runtime is in it: its features equal torch's only to ~2e-7 cosine distance, not
        bit for bit, and a record must say which runtime produced its features."""
        parts = [self.precision] if self.precision != "fp32" else []
        parts += ["onnx"] if self.runtime == "onnx" else []
        parts += ["compile"] if self.compile else []
        parts += ["gpu-decode"] if self.gpu_decode else []
        return "+".join(parts)

    def record(self) -> dict[str, Any]:
        """What a run record says about the encoder (``backbone_detail.encoder``, present when ``variant`` is not
        today's path)."""
        return {**asdict(self), "variant": self.variant or "default"}


def resolve(options: EncoderOptions, device: torch.device, module_available: bool, onnx_by_default: bool,
            who: str) -> Resolved:
    """``options`` decided for a backbone (``who``) on ``device``; one-line errors for combinations that cannot run."""
    if options.gpu_decode and device.type != "cuda":
        raise ValueError(f"--gpu-decode decodes JPEGs on a CUDA GPU, but {who} runs on {str(device)!r}; drop "
                         f"--gpu-decode or use --device cuda.")
    if options.precision != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"--precision {options.precision}: torch has no autocast on {device.type!r}; use "
                         f"--precision fp32.")
    for flag, on in (("--compile", options.compile), (f"--precision {options.precision}", options.precision != "fp32")):
        if on and not module_available:
            raise ValueError(f"{flag}: {who} does not expose its image tower as one module; drop {flag.split()[0]}.")
    runtime = options.runtime
    if runtime == "auto":
        runtime = "onnx" if (onnx_by_default and module_available and device.type == "cpu"
                             and options.precision == "fp32" and not options.compile and onnx_available()) else "torch"
    elif runtime == "onnx":
        why = ("runs on the CPU only; use --runtime torch on " + repr(str(device)) if device.type != "cpu" else
               f"runs fp32 only; drop --precision {options.precision} or use --runtime torch"
               if options.precision != "fp32" else
               "and --compile exclude each other; drop one" if options.compile else
               f"needs {who} to expose its image tower as one module; use --runtime torch"
               if not module_available else
               "needs the onnx and onnxruntime packages: pip install 'clip-adapter[onnx]'"
               if not onnx_available() else "")
        if why:
            raise ValueError(f"--runtime onnx {why}.")
    return Resolved(options.precision, options.compile, runtime, options.gpu_decode)


# -- the ONNX graph cache --------------------------------------------------------------------------------------
def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


class OnnxGraphCache:
    """Exported ONNX graphs of image towers in a private folder (default ``<cache>/onnx``), one file per key."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir() / "onnx"

    def check_folder(self) -> None:
        """Create the folder 0700; refuse one another user owns or everyone may write (as the feature cache)."""
        if not self.root.exists():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.root, 0o700)
        st, uid = self.root.stat(), _uid()
        if uid is not None and (st.st_uid != uid or st.st_mode & stat.S_IWOTH):
            raise ValueError(f"The ONNX graph cache {self.root} is owned by another user or writable by everyone; "
                             f"set CLIP_ADAPTER_CACHE to a folder of your own.")

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{safe_name(name)}-{key}.onnx"

    def read(self, path: Path) -> bytes | None:
        """The graph's bytes when ``path`` is a regular file of the current user (no symlink followed), else None."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            uid = _uid()
            if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
                log.warning("ONNX graph cache: %s is not a regular file of yours; ignored.", path)
                return None
            return f.read()


def export_key(module: torch.nn.Module, sample_shape: tuple[int, ...]) -> str:
    """Hash of the weights and every export setting: a graph is reused only for exactly this export."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    recipe = {"weights": h.hexdigest(), "module": f"{type(module).__module__}.{type(module).__qualname__}",
              "torch": torch.__version__.split("+")[0], "opset": ONNX_OPSET, "format": ONNX_FORMAT,
              "exporter": "torchscript", "input": list(sample_shape[1:]), "dynamic_batch": True}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def no_mha_fastpath():
    """The fused attention fast path (``aten::_native_multi_head_attention``) has no ONNX export: trace plain ops."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def export_onnx(module: torch.nn.Module, sample: torch.Tensor, path: Path) -> float:
    """Export ``module`` (fp32, dynamic batch) to ``path`` atomically; returns the seconds it took."""
    import copy
    import warnings
    t0 = time.perf_counter()
    if not all(p.is_contiguous() for p in module.parameters()):
        # channels_last weights (lite's CPU speed-up): export a contiguous copy, the live tower keeps its layout.
        module = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
    # The exporter puts the module in eval mode and afterwards back into the mode of its top module, recursively: a
    # wrapper left in training mode would switch batch norm to batch statistics (seen: lite's features then moved by
    # cosine distance 0.8). Our towers are eval; make sure.
    module.eval()
    with atomic_path(path, "ONNX graph") as tmp, torch.no_grad(), no_mha_fastpath(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (sample,), str(tmp), dynamo=False, input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
                          opset_version=ONNX_OPSET)
    return time.perf_counter() - t0


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest ``1 - cos`` between matching rows."""
    return float((1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)).max())


# -- running the tower -----------------------------------------------------------------------------------------
class ImageRunner:
    """Runs an image tower (a module: preprocessed images on its device -> features) as :class:`Resolved` says.

    The ONNX graph is exported or loaded on the first call, not before: a run whose features are all cached never
    pays for it. ``export_seconds`` is set when this runner exported the graph (0 when it loaded a cached one).
    """

    def __init__(self, module: torch.nn.Module, resolved: Resolved, device: torch.device, name: str,
                 sample_shape: tuple[int, ...], onnx_cache: OnnxGraphCache | None = None):
        self.module, self.resolved, self.device, self.name = module.eval(), resolved, device, name
        self.sample_shape = sample_shape
        self.onnx_cache = onnx_cache or OnnxGraphCache()
        self.export_seconds: float | None = None
        self.onnx_path: Path | None = None
        self._fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            self._fn = self._build()
        return self._fn(x)

    def _build(self) -> Callable[[torch.Tensor], torch.Tensor]:
        r = self.resolved
        if r.runtime == "onnx":
            return self._onnx()
        fn: Callable = torch.compile(self.module) if r.compile else self.module
        if r.precision == "fp32":
            return fn
        dtype, device_type = _DTYPES[r.precision], self.device.type

        def low(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype):
                return fn(x).float()
        return low

    def _onnx(self) -> Callable[[torch.Tensor], torch.Tensor]:
        import onnxruntime as ort
        cache = self.onnx_cache
        cache.check_folder()
        sample = torch.zeros(*self.sample_shape)
        path = cache.path(self.name, export_key(self.module, tuple(sample.shape)))
        data = cache.read(path)
        sess = _session(ort, data) if data is not None else None
        if sess is None:
            if data is not None:   # an unreadable graph of ours: export it again
                log.warning("ONNX graph %s is unusable; exporting it again.", path)
            seconds = export_onnx(self.module, sample, path)
            self.export_seconds = seconds
            data = cache.read(path)
            sess = _session(ort, data) if data is not None else None
            if sess is None:
                raise ValueError(f"The ONNX export of {self.name} at {path} cannot be loaded by ONNX Runtime; use "
                                 f"--runtime torch.")
            self._check_equal(sess, path)
            log.info("Exported the %s image tower to ONNX in %.1f s (%s); later runs reuse it.", self.name, seconds,
                     path)
        else:
            self.export_seconds = 0.0
        self.onnx_path = path

        expected = tuple(self.sample_shape[1:])

        def run(x: torch.Tensor) -> torch.Tensor:
            if tuple(x.shape[1:]) != expected:
                # The graph is exported at the backbone's input size (what its transforms give); another size (a
                # caller's own tensors) runs on torch, whose features the graph's equal.
                with torch.no_grad():
                    return self.module(x.to(self.device)).float().cpu()
            x = x.detach().to("cpu", torch.float32).contiguous()
            return torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
        return run

    def _check_equal(self, sess, path: Path) -> None:
        """The exported graph gives torch's features (within :data:`EQUAL_COSINE`) on a fixed random batch."""
        x = torch.randn(2, *self.sample_shape[1:], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = self.module(x.to(self.device)).float().cpu()
        got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
        dist = cosine_distance(got, want)
        if not dist <= EQUAL_COSINE:
            with contextlib.suppress(OSError):
                path.unlink()
            raise ValueError(f"The ONNX export of {self.name} gives other features than torch (cosine distance "
                             f"{dist:.2e} > {EQUAL_COSINE}); use --runtime torch.")


def _session(ort, data: bytes):
    """An ONNX Runtime CPU session on the graph bytes with torch's thread count, or None if they do not load."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT raises its own types for a corrupt graph
        return None
