"""RANDOM-weight model files with the real file names, graph inputs/outputs and tensor keys.

None of these files is a trained model: they exist so the production loaders run their real code
(file lookup, key/shape checks, graph edits, decode) where the real weights cannot be downloaded.
Every file lives in a folder whose name contains ``random`` (the file names themselves are the real
ones, because the loaders look files up by their real names):

    tests/.cache/random_ford_weights/<version>/random_weights/<real file name>

``install_random_models(models_dir)`` lays them out inside a ComfyUI ``models/`` folder for the
server tests (symlinks into the cache):

    models/insightface/models/random_antelopev2/{scrfd_10g_bnkps.onnx, glintr100.onnx}
    models/insightface/models/random_buffalo_l/{det_10g.onnx, w600k_r50.onnx}
    models/facex/extractors/random_weights/{79999_iter.pth, parsing_bisenet.pth, epoch_20.pth, L2CSNet_gaze360.pkl}

The torch layouts below are written out as data from the original repositories' module trees
(zllrunning/face-parsing.PyTorch model.py+resnet.py, sicxu/Deep3DFaceRecon_pytorch
models/networks.py, Ahmednull/L2CS-Net l2cs/model.py), independently of facex_core's modules, so a
wrong key name in facex_core fails the tests instead of being mirrored here. Tensor shapes are the
real ones (the ResNet-50 files are ~95 MB each; the ONNX graphs are tiny stand-ins with the real
input/output names and shapes).

The SCRFD stand-in is synthetic where the tests need a known answer: its stride-16 score map fires on
bright 16x16 cells (score conv = mean brightness), box and keypoint distances are constant offsets
plus random weights at 1e-4 scale; strides 8 and 32 never fire. So a white 16x16 square at a known
place must come back as one face at a known box: the decode, rescale and NMS are checked for real.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

GENERATOR_VERSION = "1"
CACHE_ROOT = Path(__file__).resolve().parents[1] / ".cache" / "random_ford_weights"
RANDOM_DIR_NAME = "random_weights"

# SCRFD stand-in geometry (in stride units, added to the anchor centre = cell's top-left corner).
SCRFD_BOX_DISTANCES = (1.0, 1.0, 2.0, 2.0)  # left, top, right, bottom
SCRFD_KPS_OFFSETS = ((0.7, 0.6), (1.3, 0.6), (1.0, 1.0), (0.8, 1.4), (1.2, 1.4))  # insightface order: image-left eye first
SCRFD_FIRING_STRIDE = 16
# output names modelled on det_10g's numeric names (FaceX does not rely on them)
SCRFD_OUTPUT_NAMES = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
ARCFACE_MAP_CHANNELS = 32  # the real IResNets have 512; the stand-in keeps the graph tiny
ARCFACE_OUTPUT_NAME = "683"


# =============================================================================================
# ONNX building (protobuf classes only; works with the onnx package or its bare protobuf module)
# =============================================================================================


def _proto():
    from facex_core.ford.onnx_session import onnx_proto

    proto = onnx_proto()
    if proto is None:
        raise RuntimeError("building the random ONNX test models needs the `onnx` package (its protobuf classes); it is absent")
    return proto


def _tensor(proto, name: str, array: np.ndarray):
    t = proto.TensorProto()
    t.name = name
    array = np.ascontiguousarray(array)
    if array.dtype == np.int64:
        t.data_type = proto.TensorProto.INT64
    else:
        array = array.astype(np.float32)
        t.data_type = proto.TensorProto.FLOAT
    t.dims.extend(array.shape)
    t.raw_data = array.tobytes()
    return t


def _node(proto, op: str, inputs, outputs, name: str, **attrs):
    n = proto.NodeProto()
    n.op_type, n.name = op, name
    n.input.extend(inputs)
    n.output.extend(outputs)
    for key, value in attrs.items():
        a = n.attribute.add()
        a.name = key
        if isinstance(value, float):
            a.type, a.f = proto.AttributeProto.FLOAT, value
        elif isinstance(value, int):
            a.type, a.i = proto.AttributeProto.INT, value
        else:
            a.type = proto.AttributeProto.INTS
            a.ints.extend(int(v) for v in value)
    return n


def _value_info(proto, vi, name: str, dims):
    vi.name = name
    vi.type.tensor_type.elem_type = proto.TensorProto.FLOAT
    for d in dims:
        dim = vi.type.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def _model(proto, graph_name: str, nodes, initializers, input_dims, outputs):
    m = proto.ModelProto()
    m.ir_version = 8
    m.producer_name = "facex-tests-random-weights"
    op = m.opset_import.add()
    op.domain, op.version = "", 13
    g = m.graph
    g.name = graph_name
    g.node.extend(nodes)
    g.initializer.extend(initializers)
    _value_info(proto, g.input.add(), "input.1", input_dims)
    for name, dims in outputs:
        _value_info(proto, g.output.add(), name, dims)
    return m


def write_scrfd(path: Path, seed: int = 0) -> None:
    """SCRFD-style detector: input 'input.1' (1,3,?,?), 9 outputs (scores, boxes, kps for strides 8/16/32)."""
    proto = _proto()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    shape_k = {1: "shape_1", 4: "shape_4", 10: "shape_10"}
    for k, name in shape_k.items():
        inits.append(_tensor(proto, name, np.array([-1, k], np.int64)))
    strides = (8, 16, 32)
    outputs = []
    for group, width in enumerate((1, 4, 10)):
        for si, s in enumerate(strides):
            outputs.append((SCRFD_OUTPUT_NAMES[group * 3 + si], [f"rows{s}", width]))
    for si, s in enumerate(strides):
        pooled = f"pool{s}"
        nodes.append(_node(proto, "AveragePool", ["input.1"], [pooled], f"AveragePool_{s}", kernel_shape=[s, s], strides=[s, s]))
        fires = s == SCRFD_FIRING_STRIDE
        # scores: 2 anchors, logit = 10 * mean(normalised RGB) - 5 on the firing stride, -20 elsewhere
        w = np.full((2, 3, 1, 1), 10.0 / 3.0 if fires else 0.0, np.float32)
        b = np.full((2,), -5.0 if fires else -20.0, np.float32)
        heads = [("score", w, b, 1, True)]
        box_b = np.tile(np.array(SCRFD_BOX_DISTANCES, np.float32), 2)
        heads.append(("bbox", rng.normal(0, 1e-4, (8, 3, 1, 1)).astype(np.float32), box_b, 4, False))
        kps_b = np.tile(np.array(SCRFD_KPS_OFFSETS, np.float32).reshape(-1), 2)
        heads.append(("kps", rng.normal(0, 1e-4, (20, 3, 1, 1)).astype(np.float32), kps_b, 10, False))
        for group, (head, hw, hb, width, sigmoid) in enumerate(heads):
            conv = f"{head}_conv{s}"
            inits += [_tensor(proto, f"{conv}.weight", hw), _tensor(proto, f"{conv}.bias", hb)]
            nodes.append(_node(proto, "Conv", [pooled, f"{conv}.weight", f"{conv}.bias"], [conv], f"Conv_{head}{s}", kernel_shape=[1, 1]))
            last = conv
            if sigmoid:
                nodes.append(_node(proto, "Sigmoid", [last], [f"{head}_sig{s}"], f"Sigmoid_{s}"))
                last = f"{head}_sig{s}"
            nodes.append(_node(proto, "Transpose", [last], [f"{head}_t{s}"], f"Transpose_{head}{s}", perm=[0, 2, 3, 1]))
            out_name = SCRFD_OUTPUT_NAMES[group * 3 + si]
            nodes.append(_node(proto, "Reshape", [f"{head}_t{s}", shape_k[width]], [out_name], f"Reshape_{head}{s}"))
    model = _model(proto, "random_scrfd", nodes, inits, [1, 3, "?", "?"], outputs)
    _save_onnx(model, path)


def write_arcface(path: Path, seed: int = 1, channels: int = ARCFACE_MAP_CHANNELS) -> None:
    """ArcFace-style recogniser: input 'input.1' (None,3,112,112) -> convs -> BatchNorm (C,7,7) ->
    Flatten -> Gemm (fc) -> BatchNorm (features) -> output (None, 512), like IResNet's tail."""
    proto = _proto()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cin, x = 3, "input.1"
    for i, cout in enumerate((8, 16, 16, channels)):  # 112 -> 56 -> 28 -> 14 -> 7
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        inits += [_tensor(proto, f"conv{i}.weight", w), _tensor(proto, f"conv{i}.bias", np.zeros(cout, np.float32))]
        nodes.append(_node(proto, "Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"], f"Conv_{i}", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
        nodes.append(_node(proto, "Relu", [f"conv{i}"], [f"relu{i}"], f"Relu_{i}"))
        cin, x = cout, f"relu{i}"

    def bn(name, inp, out, c):
        inits.extend(
            [
                _tensor(proto, f"{name}.weight", 1 + 0.1 * rng.normal(size=c)),
                _tensor(proto, f"{name}.bias", 0.1 * rng.normal(size=c)),
                _tensor(proto, f"{name}.running_mean", 0.1 * rng.normal(size=c)),
                _tensor(proto, f"{name}.running_var", rng.uniform(0.5, 1.5, size=c)),
            ]
        )
        nodes.append(_node(proto, "BatchNormalization", [inp, f"{name}.weight", f"{name}.bias", f"{name}.running_mean", f"{name}.running_var"], [out], f"BatchNormalization_{name}", epsilon=1e-5))

    bn("bn2", x, "bn2_out", channels)
    nodes.append(_node(proto, "Flatten", ["bn2_out"], ["flat"], "Flatten_0", axis=1))
    fc = rng.normal(0, np.sqrt(1.0 / (channels * 49)), (512, channels * 49)).astype(np.float32)
    inits += [_tensor(proto, "fc.weight", fc), _tensor(proto, "fc.bias", np.zeros(512, np.float32))]
    nodes.append(_node(proto, "Gemm", ["flat", "fc.weight", "fc.bias"], ["fc_out"], "Gemm_0", alpha=1.0, beta=1.0, transB=1))
    bn("features", "fc_out", ARCFACE_OUTPUT_NAME, 512)
    model = _model(proto, "random_arcface", nodes, inits, ["None", 3, 112, 112], [(ARCFACE_OUTPUT_NAME, ["None", 512])])
    _save_onnx(model, path)


def _save_onnx(model, path: Path) -> None:
    path.write_bytes(model.SerializeToString())
    try:  # validate with the full onnx package when it imports
        import onnx

        onnx.checker.check_model(str(path))
    except ImportError:
        pass


# =============================================================================================
# Torch state-dict layouts as data
# =============================================================================================


def _conv(out_c: int, in_c: int, k: int) -> tuple[int, ...]:
    return (out_c, in_c, k, k)


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [(f"{prefix}.num_batches_tracked", ())]


def resnet_layout(prefix: str, block: str, counts) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision-style ResNet parameter names: conv1/bn1, layerN.M.{conv1,bn1,conv2,bn2[,conv3,bn3]}, downsample.0/1."""
    keys = [(f"{prefix}conv1.weight", _conv(64, 3, 7))] + _bn(f"{prefix}bn1", 64)
    expansion = 1 if block == "basic" else 4
    cin = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        for j in range(n):
            p = f"{prefix}layer{stage}.{j}."
            stride = 2 if (stage > 1 and j == 0) else 1
            if block == "basic":
                keys += [(p + "conv1.weight", _conv(planes, cin, 3))] + _bn(p + "bn1", planes)
                keys += [(p + "conv2.weight", _conv(planes, planes, 3))] + _bn(p + "bn2", planes)
            else:
                keys += [(p + "conv1.weight", _conv(planes, cin, 1))] + _bn(p + "bn1", planes)
                keys += [(p + "conv2.weight", _conv(planes, planes, 3))] + _bn(p + "bn2", planes)
                keys += [(p + "conv3.weight", _conv(planes * 4, planes, 1))] + _bn(p + "bn3", planes * 4)
            if stride != 1 or cin != planes * expansion:
                keys += [(p + "downsample.0.weight", _conv(planes * expansion, cin, 1))] + _bn(p + "downsample.1", planes * expansion)
            cin = planes * expansion
    return keys


def _conv_bn_relu(prefix: str, cin: int, cout: int, k: int):
    return [(f"{prefix}.conv.weight", _conv(cout, cin, k))] + _bn(f"{prefix}.bn", cout)


def bisenet_layout(n_classes: int = 19) -> list[tuple[str, tuple[int, ...]]]:
    """face-parsing.PyTorch BiSeNet (79999_iter.pth) and facexlib parsing_bisenet.pth."""
    keys = resnet_layout("cp.resnet.", "basic", (2, 2, 2, 2))
    for arm, cin in (("cp.arm16", 256), ("cp.arm32", 512)):
        keys += _conv_bn_relu(f"{arm}.conv", cin, 128, 3)
        keys += [(f"{arm}.conv_atten.weight", _conv(128, 128, 1))] + _bn(f"{arm}.bn_atten", 128)
    keys += _conv_bn_relu("cp.conv_head32", 128, 128, 3)
    keys += _conv_bn_relu("cp.conv_head16", 128, 128, 3)
    keys += _conv_bn_relu("cp.conv_avg", 512, 128, 1)
    keys += _conv_bn_relu("ffm.convblk", 256, 256, 1)
    keys += [("ffm.conv1.weight", _conv(64, 256, 1)), ("ffm.conv2.weight", _conv(256, 64, 1))]
    for head, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        keys += _conv_bn_relu(f"{head}.conv", cin, mid, 3)
        keys += [(f"{head}.conv_out.weight", _conv(n_classes, mid, 1))]
    return keys


DEEP3D_HEADS = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angles, gamma (SH), (tx, ty), tz


def deep3d_layout() -> list[tuple[str, tuple[int, ...]]]:
    """Deep3DFaceRecon_pytorch ReconNetWrapper('resnet50', use_last_fc=False) state dict (inside epoch_20.pth['net_recon'])."""
    keys = resnet_layout("backbone.", "bottleneck", (3, 4, 6, 3))
    for i, n in enumerate(DEEP3D_HEADS):
        keys += [(f"final_layers.{i}.weight", (n, 2048, 1, 1)), (f"final_layers.{i}.bias", (n,))]
    return keys


def l2cs_layout(bins: int = 90) -> list[tuple[str, tuple[int, ...]]]:
    """L2CS-Net ResNet-50 (L2CSNet_gaze360.pkl): trunk at top level, two 90-bin heads, the vestigial fc_finetune."""
    keys = resnet_layout("", "bottleneck", (3, 4, 6, 3))
    keys += [("fc_yaw_gaze.weight", (bins, 2048)), ("fc_yaw_gaze.bias", (bins,))]
    keys += [("fc_pitch_gaze.weight", (bins, 2048)), ("fc_pitch_gaze.bias", (bins,))]
    keys += [("fc_finetune.weight", (3, 2051)), ("fc_finetune.bias", (3,))]
    return keys


def random_state_dict(layout, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors for a layout: variance-preserving conv/linear weights, sane BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout:
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            sd[key] = torch.tensor(1000, dtype=torch.int64)
        elif leaf == "running_var":
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif leaf == "running_mean":
            sd[key] = torch.randn(shape, generator=g) * 0.05
        elif len(shape) == 1 and leaf == "weight":  # BatchNorm scale
            sd[key] = 1.0 + 0.05 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # biases
            sd[key] = 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[key] = torch.randn(shape, generator=g) * (0.5 / fan_in) ** 0.5
    return sd


def write_bisenet(path: Path, seed: int = 2, prefix: str = "") -> None:
    torch.save({prefix + k: v for k, v in random_state_dict(bisenet_layout(), seed).items()}, str(path))


def write_deep3d(path: Path, seed: int = 3) -> None:
    # the training script saves every network under its name plus the epoch (models/base_model.py)
    torch.save({"net_recon": random_state_dict(deep3d_layout(), seed), "epoch": 20}, str(path))


def write_l2cs(path: Path, seed: int = 4) -> None:
    torch.save(random_state_dict(l2cs_layout(), seed), str(path))


# real file name -> writer
WRITERS: dict[str, Callable[[Path], None]] = {
    "scrfd_10g_bnkps.onnx": write_scrfd,
    "det_10g.onnx": lambda p: write_scrfd(p, seed=10),
    "glintr100.onnx": write_arcface,
    "w600k_r50.onnx": lambda p: write_arcface(p, seed=11),
    "79999_iter.pth": write_bisenet,
    "parsing_bisenet.pth": lambda p: write_bisenet(p, seed=12),
    "epoch_20.pth": write_deep3d,
    "L2CSNet_gaze360.pkl": write_l2cs,
}


def random_weights_dir() -> Path:
    """The cache folder holding the random files (named ``random_weights``), keyed by the generator source."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return CACHE_ROOT / f"v{GENERATOR_VERSION}-{digest}" / RANDOM_DIR_NAME


def random_file(name: str) -> Path:
    """Path of one RANDOM-weight file with a real file name, written once into the cache."""
    if name not in WRITERS:
        raise KeyError(f"no random-weight writer for {name!r}; known: {', '.join(WRITERS)}")
    folder = random_weights_dir()
    path = folder / name
    if not path.is_file():
        if not folder.is_dir():
            _prune_old_versions(folder.parent)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.partial"
        WRITERS[name](tmp)
        tmp.replace(path)
    return path


def _prune_old_versions(current: Path) -> None:
    """Drop caches written by older versions of this file (each holds ~300 MB)."""
    if CACHE_ROOT.is_dir():
        for old in CACHE_ROOT.iterdir():
            if old.is_dir() and old != current and old.name.startswith("v"):
                shutil.rmtree(old, ignore_errors=True)


def write_random_file(name: str, dest_dir: Path) -> Path:
    """Write one RANDOM-weight file into ``dest_dir`` (which should have 'random' in its path)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / name
    _link_or_copy(random_file(name), target)
    return target


INSIGHTFACE_PACKS = {
    "random_antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "random_buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
}
EXTRACTOR_FILES = ("79999_iter.pth", "parsing_bisenet.pth", "epoch_20.pth", "L2CSNet_gaze360.pkl")


def install_random_models(models_dir, extractor_files=EXTRACTOR_FILES, packs: Optional[dict] = None) -> dict[str, Path]:
    """Lay the RANDOM-weight files out in a ComfyUI models folder (see module docstring); returns name -> path."""
    models_dir = Path(models_dir)
    placed = {}
    for pack, files in (packs or INSIGHTFACE_PACKS).items():
        for name in files:
            placed[f"{pack}/{name}"] = write_random_file(name, models_dir / "insightface" / "models" / pack)
    for name in extractor_files:
        placed[f"{RANDOM_DIR_NAME}/{name}"] = write_random_file(name, models_dir / "facex" / "extractors" / RANDOM_DIR_NAME)
    return placed


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)
