"""Production FORD backends (insightface packs, BiSeNet, Deep3DFaceRecon, L2CS-Net, region CLIP
pooling) run their real loading code on RANDOM-weight files with the real names, keys and graph
I/O (tests/support/random_ford_weights.py). Outputs are checked for shape, dtype, fields and the
conventions the code owns (decode, landmark order, sign tables); nothing here is a quality claim."""

from __future__ import annotations

import gc
import logging
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facex_core.ford import bisenet, clip_regions, deep3d, insightface_onnx, l2cs, onnx_session, resnet
from facex_core.ford.base import REGISTRY, BackendUnavailable, Detection, Detector, apply_extractor
from facex_core.regions import REGION_INDEX, REGIONS
from facex_core.representation import FaceRepresentation, RepresentationError
from support import random_ford_weights as rw

S = 128  # crop size of the test representations


def make_rep(batch: int = 2, size: int = S) -> FaceRepresentation:
    # a frontal face in a FaceX crop: subject's left eye (image right) first
    lm = torch.tensor([[0.62, 0.42], [0.38, 0.42], [0.50, 0.56], [0.60, 0.70], [0.40, 0.70]]) * size
    lm = lm.expand(batch, 5, 2).clone()
    lm[1:] += 1.5  # faces differ a little
    return FaceRepresentation(
        crop_size=size,
        affine=torch.eye(2, 3).expand(batch, 2, 3).clone(),
        image_hw=torch.tensor([[size, size]] * batch),
        landmarks5=lm,
    )


def crops_for(batch: int = 2, size: int = S, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_copy(tmp_path: Path, name: str, as_name: str | None = None) -> Path:
    folder = tmp_path / "random_weights"
    folder.mkdir(exist_ok=True)
    target = folder / (as_name or name)
    shutil.copyfile(rw.random_file(name), target)
    return target


@pytest.fixture(autouse=True)
def _fresh_cache():
    yield
    onnx_session.release_all()


# =============================================================================================
# registry and layouts
# =============================================================================================


@pytest.mark.parametrize(
    "family, name, files, licence_words",
    [
        ("detect", "insightface_scrfd", ("scrfd_10g_bnkps.onnx", "det_10g.onnx"), ("non-commercial",)),
        ("identity", "insightface_arcface", ("glintr100.onnx", "w600k_r50.onnx"), ("non-commercial",)),
        ("parse", "bisenet_celebamask19", ("79999_iter.pth", "parsing_bisenet.pth"), ("MIT", "non-commercial")),
        ("motion", "deep3dfacerecon_bfm", ("epoch_20.pth",), ("MIT", "Basel Face Model")),
        ("gaze", "l2cs_gaze360", ("L2CSNet_gaze360.pkl",), ("MIT",)),
        ("region_features", "clip_region_pool", (), ("MIT",)),
    ],
)
def test_registry_entries(family, name, files, licence_words):
    info = REGISTRY[family][name]
    assert info.embedded is False
    assert info.files == files
    for word in licence_words:
        assert word in info.licence, f"{name} licence should mention {word!r}: {info.licence}"
    assert callable(info.factory)


@pytest.mark.parametrize(
    "module_factory, layout",
    [
        (lambda: bisenet.BiSeNetFaceParser(19), rw.bisenet_layout),
        (deep3d.Deep3DReconNet, rw.deep3d_layout),
        (l2cs.L2CSNet, lambda: [kv for kv in rw.l2cs_layout() if not kv[0].startswith("fc_finetune")]),
    ],
    ids=["bisenet", "deep3d", "l2cs"],
)
def test_module_keys_match_the_released_layout(module_factory, layout):
    """facex_core's modules against the layout written out independently from the original repos."""
    got = {k: tuple(v.shape) for k, v in module_factory().state_dict().items()}
    want = dict(layout())
    assert set(got) - set(want) == set(), "keys our module has that the released file lacks"
    assert set(want) - set(got) == set(), "keys of the released file our module lacks"
    assert {k: s for k, s in got.items() if want[k] != s} == {}


def test_released_layout_spot_checks():
    """Shapes the README's model table cites."""
    b, d, g = dict(rw.bisenet_layout()), dict(rw.deep3d_layout()), dict(rw.l2cs_layout())
    assert b["cp.resnet.conv1.weight"] == (64, 3, 7, 7)
    assert b["cp.arm16.conv.conv.weight"] == (128, 256, 3, 3) and b["cp.arm32.conv.conv.weight"] == (128, 512, 3, 3)
    assert b["conv_out.conv_out.weight"] == (19, 256, 1, 1) and b["conv_out16.conv_out.weight"] == (19, 64, 1, 1)
    assert b["ffm.conv1.weight"] == (64, 256, 1, 1)
    assert [d[f"final_layers.{i}.weight"][0] for i in range(7)] == [80, 64, 80, 3, 27, 2, 1]
    assert sum(n for _, n in deep3d.COEFFICIENTS) == deep3d.N_COEFFICIENTS == 257
    assert d["backbone.layer4.2.conv3.weight"] == (2048, 512, 1, 1) and "backbone.fc.weight" not in d
    assert g["fc_yaw_gaze.weight"] == (90, 2048) and g["fc_pitch_gaze.weight"] == (90, 2048) and g["fc_finetune.weight"] == (3, 2051)


# =============================================================================================
# geometry shared by the backends
# =============================================================================================


def test_fit_transform_recovers_a_similarity():
    src = resnet.ARCFACE_TEMPLATE_112[None] * 1.0
    angle, scale, shift = 0.3, 1.7, torch.tensor([12.0, -5.0])
    rot = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32) * scale
    dst = src[0] @ rot.T + shift
    m = resnet.fit_transform(src, dst)[0]
    assert torch.allclose(m[:, :2], rot, atol=1e-4) and torch.allclose(m[:, 2], shift, atol=1e-3)
    m2 = resnet.fit_transform(src, src[0] * 2 + 3, rotation=False)[0]
    assert torch.allclose(m2, torch.tensor([[2.0, 0, 3], [0, 2.0, 3]]), atol=1e-4)


def test_warp_crops_follows_warpaffine_convention():
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    same = resnet.warp_crops(img, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]), 8)
    assert torch.allclose(same, img, atol=1e-4)
    shifted = resnet.warp_crops(img, torch.tensor([[[1.0, 0, -2], [0, 1.0, -1]]]), 8)  # out(x, y) = in(x + 2, y + 1)
    assert torch.allclose(shifted[0, 0, :7, :6], img[0, 0, 1:, 2:], atol=1e-4)
    assert float(shifted[0, 0, 7, 7]) == 0.0  # outside: zeros


def test_landmark_order_tables():
    t = resnet.ARCFACE_TEMPLATE_112
    assert t[0, 0] > t[1, 0] and t[3, 0] > t[4, 0], "FaceX order: subject's left (image right) point first"
    d = deep3d.TEMPLATE_224
    assert d[0, 0] > d[1, 0] and d[3, 0] > d[4, 0] and d[2, 1] > d[0, 1]
    assert abs(float(d[:2, 1].mean()) - 82.4) < 0.5  # eyes 102 px/unit * 0.29 above the centre


# =============================================================================================
# insightface packs: SCRFD
# =============================================================================================


def white_cells(h: int, w: int, cells, size: int = 16) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for x, y in cells:
        img[y : y + size, x : x + size] = 255
    return img


def expected_box(x: float, y: float, scale: float = 1.0) -> np.ndarray:
    l, t, r, b = (v * rw.SCRFD_FIRING_STRIDE for v in rw.SCRFD_BOX_DISTANCES)
    return np.array([x - l, y - t, x + r, y + b]) * scale


def test_scrfd_decodes_one_face_with_facex_landmark_order():
    det = insightface_onnx.make_detector(path=rw.random_file("scrfd_10g_bnkps.onnx"))
    assert isinstance(det, Detector) and det.name == "insightface_scrfd:scrfd_10g_bnkps"
    faces = det.detect(white_cells(640, 640, [(160, 96)]))
    assert len(faces) == 1, "two anchors at one place must collapse to one face after NMS"
    face = faces[0]
    assert isinstance(face, Detection) and face.score > 0.99
    np.testing.assert_allclose(face.box, expected_box(160, 96), atol=0.1)
    kps = np.array(rw.SCRFD_KPS_OFFSETS) * 16 + [160, 96]  # insightface order
    np.testing.assert_allclose(face.landmarks5, kps[list(resnet.SWAP_LEFT_RIGHT_5)], atol=0.1)
    assert face.landmarks5[0, 0] > face.landmarks5[1, 0]
    assert face.landmarks5.dtype == np.float32 and face.box.shape == (4,)


def test_scrfd_rescales_and_keeps_separate_faces():
    model = insightface_onnx.ScrfdOnnx(rw.random_file("det_10g.onnx"))
    assert model.fixed_size is None and model.input_size == (640, 640), "det_10g-style dynamic input uses det_size"
    # 1280x960 -> scale 0.5: 32-px squares become single firing 16-px cells
    img = white_cells(960, 1280, [(320, 192), (960, 640)], size=32)
    dets, kpss = model.detect_rgb(img)
    assert dets.shape == (2, 5) and kpss.shape == (2, 5, 2)
    got = sorted(dets[:, :4].tolist())
    np.testing.assert_allclose(got[0], expected_box(160, 96, 2.0), atol=0.3)
    np.testing.assert_allclose(got[1], expected_box(480, 320, 2.0), atol=0.3)
    one, _ = model.detect_rgb(img, max_num=1)
    assert one.shape == (1, 5)
    none, nkps = model.detect_rgb(np.zeros((300, 200, 3), np.uint8))
    assert none.shape == (0, 5) and nkps.shape == (0, 5, 2)


def test_scrfd_insightface_api_takes_bgr_and_keeps_insightface_order():
    model = insightface_onnx.ScrfdOnnx(rw.random_file("scrfd_10g_bnkps.onnx"))
    img = white_cells(640, 640, [(160, 96)])
    img[96:112, 160:176] = (255, 255, 255)
    dets, kpss = model.detect(img[..., ::-1].copy())
    assert dets.shape == (1, 5) and kpss[0, 0, 0] < kpss[0, 1, 0], "insightface API: image-left eye first"
    model.prepare(0, input_size=(320, 320), det_thresh=0.999)
    assert model.input_size == (320, 320) and model.det_thresh == 0.999


# =============================================================================================
# insightface packs: ArcFace
# =============================================================================================


def test_arcface_embedding_and_pre_embedding_map():
    arc = insightface_onnx.make_identity(path=rw.random_file("glintr100.onnx"))
    assert arc.name == "insightface_arcface:glintr100" and arc.map_output == "bn2_out"
    rep = make_rep(3)
    out = arc(crops_for(3), rep)
    assert set(out) == {"identity", "identity_map"}
    assert out["identity"].shape == (3, 512) and out["identity"].dtype == torch.float32
    assert torch.allclose(out["identity"].norm(dim=1), torch.ones(3), atol=1e-5)
    assert out["identity_map"].shape == (3, rw.ARCFACE_MAP_CHANNELS, 7, 7) and out["identity_map"].dtype == torch.float32
    rep2 = apply_extractor(arc, crops_for(3), rep)
    assert rep2.backends["identity"] == arc.name and rep2.identity_map is not None


def test_arcface_graph_edit_leaves_the_embedding_unchanged():
    ort = onnx_session.onnxruntime_module()
    path = rw.random_file("w600k_r50.onnx")
    arc = insightface_onnx.ArcFaceOnnx(path)
    aligned = crops_for(2, 112, seed=3)
    emb, fmap = arc.embed(aligned)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = plain.run(None, {"input.1": ((aligned * 255 - 127.5) / 127.5).numpy()})[0]
    np.testing.assert_allclose(emb.numpy(), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert fmap.shape == (2, rw.ARCFACE_MAP_CHANNELS, 7, 7)


def test_arcface_without_onnx_gives_embedding_only(monkeypatch, caplog):
    monkeypatch.setattr(insightface_onnx, "load_model_proto", lambda path: None)
    with caplog.at_level(logging.WARNING, logger="facex"):
        arc = insightface_onnx.ArcFaceOnnx(rw.random_file("glintr100.onnx"))
    assert arc.name.endswith(":embedding_only") and "onnx" in arc.map_unavailable
    assert any("embedding only" in r.getMessage() for r in caplog.records)
    out = arc(crops_for(1), make_rep(1))
    assert set(out) == {"identity"} and out["identity"].shape == (1, 512)


def test_arcface_normalisation_follows_the_graph():
    proto = onnx_session.onnx_proto()
    model = proto.ModelProto()
    for name in ("Sub_0", "Mul_1", "Conv_2"):
        model.graph.node.add(op_type=name.split("_")[0], name=name)
    assert insightface_onnx._arcface_normalisation(model) == (0.0, 1.0)  # MXNet-converted: normalises inside
    own = onnx_session.load_model_proto(rw.random_file("glintr100.onnx"))
    assert insightface_onnx._arcface_normalisation(own) == (127.5, 127.5)
    assert insightface_onnx.find_pre_embedding_tensor(own) == "bn2_out"


def test_arcface_get_feat_matches_insightface_style_alignment():
    arc = insightface_onnx.ArcFaceOnnx(rw.random_file("glintr100.onnx"))
    img = (crops_for(1, 200, seed=5)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    kps = np.array(resnet.ARCFACE_TEMPLATE_112_INSIGHTFACE_ORDER, np.float32) + 40  # insightface order
    aligned = insightface_onnx.align_arcface_bgr(img, kps)
    np.testing.assert_array_equal(aligned, img[40:152, 40:152])  # a pure translation by 40 px
    face = insightface_onnx.Face(kps=kps)
    emb = arc.get(img, face)
    assert emb.shape == (512,) and face.embedding is emb and abs(np.linalg.norm(face.normed_embedding) - 1) < 1e-5


# =============================================================================================
# insightface packs: FaceAnalysis
# =============================================================================================


@pytest.fixture
def models_dir(tmp_path):
    rw.install_random_models(tmp_path, extractor_files=())
    return tmp_path


def test_face_analysis_pack_works_like_insightface(models_dir):
    fa = insightface_onnx.load_face_analysis(models_dir / "insightface" / "models" / "random_buffalo_l")
    assert set(fa.models) == {"detection", "recognition"} and fa.det_model is fa.models["detection"]
    fa.prepare(ctx_id=0, det_size=(640, 640))
    faces = fa.get(white_cells(640, 640, [(160, 96)])[..., ::-1].copy())
    assert len(faces) == 1
    face = faces[0]
    assert face.bbox.shape == (4,) and face["kps"].shape == (5, 2) and float(face.det_score) > 0.99
    assert face.embedding.shape == (512,) and abs(np.linalg.norm(face.normed_embedding) - 1) < 1e-5
    assert face.gender is None  # missing attributes read as None, as insightface's Face does


def test_detector_and_identity_from_our_face_analysis(models_dir):
    fa = insightface_onnx.load_face_analysis(models_dir / "insightface" / "models" / "random_antelopev2")
    det = insightface_onnx.detector_from_face_analysis(fa)
    assert det.name == "insightface_scrfd:scrfd_10g_bnkps"
    assert len(det.detect(white_cells(640, 640, [(160, 96)]))) == 1
    ident = insightface_onnx.identity_from_face_analysis(fa)
    assert ident is fa.models["recognition"] and ident.name == "insightface_arcface:glintr100"


class _ForeignDetection:
    """Stands in for insightface's SCRFD object: only detect(bgr) -> (dets, kpss), input_size unset."""

    def __init__(self, inner):
        self.inner = inner
        self.input_size = None

    def detect(self, img, input_size=None, max_num=0, metric="default"):
        assert input_size == (640, 640), "an unprepared insightface detector must be given det_size"
        return self.inner.detect(img, max_num=max_num)


class _ForeignRecognition:
    def __init__(self, inner, model_file=None):
        self.inner = inner
        if model_file is not None:
            self.model_file = model_file

    def get_feat(self, imgs):
        return self.inner.get_feat(imgs)


class _ForeignFaceAnalysis:
    def __init__(self, models):
        self.models = models


def test_foreign_face_analysis_is_duck_typed(models_dir):
    pack = models_dir / "insightface" / "models" / "random_antelopev2"
    ours = insightface_onnx.load_face_analysis(pack)
    img = white_cells(640, 640, [(160, 96)])
    foreign = _ForeignFaceAnalysis({"detection": _ForeignDetection(ours.det_model), "recognition": _ForeignRecognition(ours.models["recognition"], str(pack / "glintr100.onnx"))})
    det = insightface_onnx.detector_from_face_analysis(foreign)
    got, want = det.detect(img), insightface_onnx.detector_from_face_analysis(ours).detect(img)
    assert len(got) == 1 and np.allclose(got[0].landmarks5, want[0].landmarks5) and np.allclose(got[0].box, want[0].box)
    reopened = insightface_onnx.identity_from_face_analysis(foreign)
    assert isinstance(reopened, insightface_onnx.ArcFaceOnnx) and reopened.map_output == "bn2_out", "a readable model file is re-opened with the map"
    only_feat = insightface_onnx.identity_from_face_analysis(_ForeignFaceAnalysis({"recognition": _ForeignRecognition(ours.models["recognition"])}))
    assert only_feat.name.endswith(":embedding_only")
    rep = make_rep(2)
    a, b = only_feat(crops_for(2), rep), reopened(crops_for(2), rep)
    assert set(a) == {"identity"} and torch.allclose(a["identity"], b["identity"], atol=2e-2)  # uint8 round trip only
    with pytest.raises(ValueError, match="no recognition model"):
        insightface_onnx.identity_from_face_analysis(_ForeignFaceAnalysis({"detection": object()}))


def test_pack_errors_name_the_folder_and_files(tmp_path, models_dir):
    with pytest.raises(BackendUnavailable, match="random_nopack.*looked in"):
        insightface_onnx.load_face_analysis(tmp_path / "random_nopack")
    only_rec = tmp_path / "random_half_pack"
    rw.write_random_file("glintr100.onnx", only_rec)
    with pytest.raises(BackendUnavailable, match=r"no face detector \(scrfd_10g_bnkps.onnx or det_10g.onnx\).*glintr100.onnx"):
        insightface_onnx.load_face_analysis(only_rec)


# =============================================================================================
# BiSeNet
# =============================================================================================


def test_class_to_region_table_is_complete_and_documented():
    assert list(bisenet.CLASS_TO_REGION) == list(bisenet.CELEBAMASK_CLASSES) and len(bisenet.CELEBAMASK_CLASSES) == 19
    assert set(bisenet.CLASS_TO_REGION.values()) == set(REGIONS)
    for cls, region in {"eye_g": "eyes", "ear_r": "ears", "hat": "hair", "mouth": "lips", "neck_l": "neck", "l_brow": "eyebrows"}.items():
        assert bisenet.CLASS_TO_REGION[cls] == region
    m = bisenet.class_to_region_matrix()
    assert m.shape == (len(REGIONS), 19) and torch.equal(m.sum(0), torch.ones(19))
    assert m[REGION_INDEX["skin"], 1] == 1


def test_bisenet_region_masks():
    parser = bisenet.make_parser(folders=[rw.random_file("79999_iter.pth").parent])  # looked up by its real name
    assert parser.name == "bisenet_celebamask19" and "unprefixed" in parser.net.layout
    assert bisenet.load_bisenet(rw.random_file("79999_iter.pth")) is parser.net, "loaded once per (file, device)"
    rep = apply_extractor(parser, crops_for(2), make_rep(2))
    assert rep.backends["parse"] == "bisenet_celebamask19"
    masks = rep.region_masks
    assert masks.shape == (2, len(REGIONS), S, S) and masks.dtype == torch.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert torch.allclose(masks.sum(1), torch.ones(2, S, S), atol=1e-4), "soft masks partition each pixel"
    with pytest.raises(ValueError, match="3 crops but the face representation holds 2"):
        parser(crops_for(3), rep)


def test_bisenet_loads_prefixed_and_wrapped_layouts(tmp_path):
    path = tmp_path / "random_weights" / "parsing_bisenet.pth"
    path.parent.mkdir()
    sd = {"module." + k: v for k, v in torch.load(rw.random_file("parsing_bisenet.pth"), weights_only=True).items()}
    torch.save({"params": sd}, str(path))
    net = bisenet.load_bisenet(path)
    assert "'params'" in net.layout and "'module.'" in net.layout
    plain = bisenet.load_bisenet(rw.random_file("parsing_bisenet.pth"))
    for (k, a), (_, b) in zip(net.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k


def test_torch_loader_errors_name_file_and_problem(tmp_path):
    with pytest.raises(BackendUnavailable) as missing:
        bisenet.make_parser(folders=[tmp_path / "random_a", tmp_path / "random_b"])
    assert isinstance(missing.value, FileNotFoundError)
    assert all(s in str(missing.value) for s in ("79999_iter.pth", "random_a", "random_b", "looked in"))

    truncated = tmp_path / "random_weights" / "79999_iter.pth"
    truncated.parent.mkdir()
    truncated.write_bytes(rw.random_file("79999_iter.pth").read_bytes()[: 1 << 20])
    with pytest.raises(onnx_session.ModelFileError, match="79999_iter.pth: not a readable PyTorch checkpoint.*truncated"):
        bisenet.make_parser(path=truncated)

    wrong = random_copy(tmp_path, "L2CSNet_gaze360.pkl", "random_79999_iter.pth")
    with pytest.raises(onnx_session.ModelFileError, match=r"random_79999_iter.pth: missing keys cp.resnet.conv1.weight.*this is not a BiSeNet face parser"):
        bisenet.load_bisenet(wrong)

    sd = rw.random_state_dict(rw.bisenet_layout(18), 2)  # an 18-class parser
    bad = tmp_path / "random_weights" / "random_18.pth"
    torch.save(sd, str(bad))
    with pytest.raises(onnx_session.ModelFileError, match=r"wrong shapes conv_out.conv_out.weight \(18, 256, 1, 1\) \(expected \(19, 256, 1, 1\)\)"):
        bisenet.load_bisenet(bad)

    pickled = tmp_path / "random_weights" / "random_pickled_module.pth"
    torch.save(nn.Linear(2, 2), str(pickled))
    with pytest.raises(onnx_session.ModelFileError, match="holds Python objects besides tensors"):
        bisenet.load_bisenet(pickled)

    with pytest.raises(onnx_session.ModelFileError, match=r"epoch_20.pth: holds no tensors at the top level.*net_recon"):
        bisenet.load_bisenet(rw.random_file("epoch_20.pth"))


def test_cache_loads_once_per_file_and_variant_and_releases(tmp_path):
    path = rw.random_file("glintr100.onnx")
    a = onnx_session.open_session(path, "CPU")
    assert onnx_session.open_session(path, ["CPUExecutionProvider"]) is a
    assert insightface_onnx.arcface_model(path) is insightface_onnx.arcface_model(path)
    assert any(key[0] == "onnxruntime" and key[1] == str(path.resolve()) for key in onnx_session.cache_entries())
    assert onnx_session.release_all() >= 2 and onnx_session.cache_entries() == []
    assert onnx_session.open_session(path, "CPU") is not a
    replaced = random_copy(tmp_path, "glintr100.onnx")
    first = onnx_session.open_session(replaced)
    replaced.write_bytes(rw.random_file("w600k_r50.onnx").read_bytes())  # the user swaps the file
    assert onnx_session.open_session(replaced) is not first, "a replaced file is reloaded"



def test_auto_provider_follows_the_torch_device():
    available = set(onnx_session.onnxruntime_module().get_available_providers())
    assert onnx_session.providers_for_device(torch.device("cpu")) == ["CPUExecutionProvider"]
    cuda = onnx_session.providers_for_device("cuda:0")
    assert cuda[-1] == "CPUExecutionProvider" and set(cuda) <= available | {"CPUExecutionProvider"}
    assert ("CUDAExecutionProvider" in cuda) == ("CUDAExecutionProvider" in available)
    assert onnx_session.providers_for_device("mps")[-1] == "CPUExecutionProvider"
    for device_type, wanted in onnx_session.PROVIDERS_FOR_TORCH_DEVICE.items():
        assert all(p in onnx_session.PROVIDERS for p in wanted), f"{device_type}: unknown provider name in {wanted}"

def test_onnx_models_hold_no_session_so_release_frees_it_and_they_reopen():
    """ComfyUI's free memory calls release_all() while loader outputs (these objects) stay cached:
    they must not keep the session alive, and must work again afterwards with the same results."""
    arc = insightface_onnx.ArcFaceOnnx(rw.random_file("glintr100.onnx"))
    det = insightface_onnx.ScrfdOnnx(rw.random_file("scrfd_10g_bnkps.onnx"))
    aligned = crops_for(2, 112, seed=5)
    img = white_cells(640, 640, [(160, 96)])
    emb, fmap = arc.embed(aligned)
    dets, _ = det.detect_rgb(img)
    sessions = [arc.session, det.session]
    refs = [weakref.ref(s) for s in sessions]
    del sessions
    assert onnx_session.release_all() >= 2 and onnx_session.cache_entries() == []
    gc.collect()
    assert [r() for r in refs] == [None, None], "an ONNX model still holds its session after release_all()"
    emb2, fmap2 = arc.embed(aligned)  # reopened: the edited graph is made again from the file
    assert arc.map_output in [o.name for o in arc.session.get_outputs()]
    torch.testing.assert_close(emb2, emb)
    torch.testing.assert_close(fmap2, fmap)
    np.testing.assert_allclose(det.detect_rgb(img)[0], dets)

# =============================================================================================
# Deep3DFaceRecon
# =============================================================================================


def test_deep3d_motion_fields():
    motion = deep3d.make_motion(path=rw.random_file("epoch_20.pth"))
    assert motion.name == "deep3dfacerecon_bfm" and "'net_recon'" in motion.net.layout
    rep, crops = make_rep(2), crops_for(2)
    rep2 = apply_extractor(motion, crops, rep)
    assert {rep2.backends[p] for p in ("motion", "texture", "lighting")} == {"deep3dfacerecon_bfm"}
    out = {k: getattr(rep2, k) for k in ("pose", "expression", "texture", "lighting")}
    assert {k: tuple(v.shape) for k, v in out.items()} == {"pose": (2, 3), "expression": (2, 64), "texture": (2, 80), "lighting": (2, 27)}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    coeffs = motion.coefficients(crops, rep.landmarks5)
    assert coeffs.shape == (2, 257)
    assert torch.allclose(out["lighting"], coeffs[:, 227:254]) and torch.allclose(out["expression"], coeffs[:, 80:144])
    assert torch.allclose(out["texture"], coeffs[:, 144:224])
    assert torch.allclose(out["pose"], deep3d.pose_from_angles(coeffs[:, 224:227]))


def test_deep3d_pose_convention_table():
    angles = torch.tensor([[0.1, 0.2, 0.3]])  # repo order: rotation about x, y, z
    assert torch.allclose(deep3d.pose_from_angles(angles), torch.tensor([[0.2, -0.1, 0.3]]))  # yaw, pitch, roll


def test_deep3d_errors(tmp_path):
    wrong = random_copy(tmp_path, "79999_iter.pth", "epoch_20.pth")
    with pytest.raises(onnx_session.ModelFileError, match=r"epoch_20.pth: missing keys backbone.conv1.weight.*not a Deep3DFaceRecon checkpoint"):
        deep3d.make_motion(path=wrong)
    with pytest.raises(BackendUnavailable, match=r"'epoch_20.pth' not found; looked in: .*random_empty"):
        deep3d.make_motion(folders=[tmp_path / "random_empty"])


# =============================================================================================
# L2CS-Net
# =============================================================================================


def test_l2cs_gaze_fields():
    gaze = l2cs.make_gaze(path=rw.random_file("L2CSNet_gaze360.pkl"))
    out = gaze(crops_for(1), make_rep(1))
    assert set(out) == {"gaze"} and out["gaze"].shape == (1, 2) and out["gaze"].dtype == torch.float32
    assert (out["gaze"].abs() <= np.pi).all()


class _OneHotGazeHeads(nn.Module):
    """Stub L2CS network whose heads put all mass on fixed bins (yaw bin 50 = +20 deg, pitch bin 40 = -20 deg)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        yaw, pitch = torch.full((x.shape[0], 90), -1e4), torch.full((x.shape[0], 90), -1e4)
        yaw[:, 50], pitch[:, 40] = 0.0, 0.0
        return yaw, pitch


def test_l2cs_decode_and_sign_convention():
    uniform = l2cs.bins_to_radians(torch.zeros(1, 90))
    assert torch.allclose(uniform, torch.deg2rad(torch.tensor([44.5 * 4 - 180])))
    stub = l2cs.L2CSGaze(_OneHotGazeHeads(), name="random_stub")
    raw = stub.l2cs_angles(crops_for(1), make_rep(1).landmarks5)
    assert torch.allclose(raw["yaw"], torch.deg2rad(torch.tensor([20.0]))) and torch.allclose(raw["pitch"], torch.deg2rad(torch.tensor([-20.0])))
    gaze = stub(crops_for(1), make_rep(1))["gaze"]
    # FaceX: (pitch, yaw), yaw > 0 toward image right = minus L2CS's yaw
    assert torch.allclose(gaze, torch.deg2rad(torch.tensor([[-20.0, -20.0]])))


def test_l2cs_accepts_files_without_the_vestigial_head(tmp_path):
    sd = {k: v for k, v in torch.load(rw.random_file("L2CSNet_gaze360.pkl"), weights_only=True).items() if not k.startswith("fc_finetune")}
    path = tmp_path / "random_weights" / "L2CSNet_gaze360.pkl"
    path.parent.mkdir()
    torch.save(sd, str(path))
    assert isinstance(l2cs.load_l2cs(path), l2cs.L2CSNet)
    with pytest.raises(onnx_session.ModelFileError, match="L2CSNet_gaze360.pkl: missing keys fc_yaw_gaze.weight"):
        torch.save({k: v for k, v in sd.items() if not k.startswith("fc_yaw")}, str(path))
        onnx_session.release_all()
        l2cs.load_l2cs(path)


# =============================================================================================
# region CLIP features
# =============================================================================================


class _ComfyClipOutput:
    """Shaped like comfy.clip_vision.Output."""

    def __init__(self, states):
        self.penultimate_hidden_states = states

    def __getitem__(self, key):
        return getattr(self, key)


def test_mask_pooling_one_patch_returns_that_token():
    g, d, size = 16, 8, 224  # 14 px per patch
    tokens = torch.randn(1, g * g, d)
    masks = torch.zeros(1, 3, size, size)
    masks[0, 0, 3 * 14 : 4 * 14, 5 * 14 : 6 * 14] = 1.0  # exactly patch (row 3, col 5)
    masks[0, 2, 0:14, 0:14] = 1.0  # patches (0,0) and (0,1) with weights 1 and 0.5
    masks[0, 2, 0:14, 14:28] = 0.5
    pooled = clip_regions.pool_regions(tokens, masks)
    assert torch.allclose(pooled[0, 0], tokens[0, 3 * g + 5], atol=1e-6)
    assert torch.equal(pooled[0, 1], torch.zeros(d)), "an empty region pools to zeros"
    assert torch.allclose(pooled[0, 2], (tokens[0, 0] + 0.5 * tokens[0, 1]) / 1.5, atol=1e-6)


def test_extract_region_features_from_a_comfy_style_encoder():
    rep = make_rep(2, 224)
    masks = torch.zeros(2, len(REGIONS), 224, 224)
    masks[:, REGION_INDEX["skin"], 14:28, 14:28] = 1.0
    rep = rep.replace(region_masks=masks)
    states = torch.randn(2, 257, 16)
    calls = []

    def encode(crops):
        calls.append(tuple(crops.shape))
        return _ComfyClipOutput(states)

    out = clip_regions.extract_region_features(encode, crops_for(2, 224), rep)
    assert calls == [(2, 3, 224, 224)]
    assert torch.equal(out["clip_tokens"], states[:, 1:]) and out["region_features"].shape == (2, len(REGIONS), 16)
    assert torch.allclose(out["region_features"][:, REGION_INDEX["skin"]], states[:, 1 + 16 + 1])
    ex = REGISTRY["region_features"]["clip_region_pool"].factory(encode, model_name="random_clip")
    rep2 = apply_extractor(ex, crops_for(2, 224), rep)
    assert rep2.backends["region_features"] == "clip_region_pool:random_clip" and rep2.clip_tokens.shape == (2, 256, 16)
    with pytest.raises(RepresentationError, match="region_masks"):
        clip_regions.extract_region_features(encode, crops_for(2, 224), make_rep(2, 224))
    with pytest.raises(ValueError, match="257 = 1 \\+ 16x16"):
        clip_regions.extract_region_features(lambda c: torch.randn(2, 200, 16), crops_for(2, 224), rep)


# =============================================================================================
# ONNX file errors
# =============================================================================================


def test_onnx_loader_errors_name_file_and_problem(tmp_path):
    truncated = tmp_path / "random_weights" / "glintr100.onnx"
    truncated.parent.mkdir()
    truncated.write_bytes(rw.random_file("glintr100.onnx").read_bytes()[:2048])
    with pytest.raises(onnx_session.ModelFileError, match="glintr100.onnx: .*truncated"):
        insightface_onnx.make_identity(path=truncated)
    with pytest.raises(onnx_session.ModelFileError, match=r"scrfd_10g_bnkps.onnx: expected one \(N, 3, 112, 112\) face input.*not an ArcFace recognition model"):
        insightface_onnx.make_identity(path=rw.random_file("scrfd_10g_bnkps.onnx"))
    with pytest.raises(onnx_session.ModelFileError, match=r"glintr100.onnx: has 1 outputs.*not an SCRFD face detector"):
        insightface_onnx.make_detector(path=rw.random_file("glintr100.onnx"))
    with pytest.raises(BackendUnavailable, match=r"'scrfd_10g_bnkps.onnx' or 'det_10g.onnx' not found; looked in: .*random_none"):
        insightface_onnx.make_detector(folders=[tmp_path / "random_none"])
