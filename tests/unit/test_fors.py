"""FORS: task table, representation assembler, region assembler (synthetic faces, no FORD run)."""

import json

import numpy as np
import pytest
import torch

from facex_core.fors import (
    PLAN_KEY,
    TASKS,
    AssemblyError,
    FORSError,
    RegionAssemblyError,
    assemble,
    assemble_regions,
    effective_plan,
    parse_overrides,
    parse_region_list,
    plan_summary,
)
from facex_core.fors.region_assembler import dilate, feather, grayscale, region_union
from facex_core.regions import FACE_REGIONS, HEAD_REGIONS, REGION_INDEX, REGIONS
from facex_core.representation import COMPONENTS, FaceRepresentation, RepresentationError
from support.synthetic_faces import face_pair, synthetic_face

S = 64


@pytest.fixture(scope="module")
def faces():
    src, tgt, third = face_pair(batch=2, size=S)
    return {"source": src, "target": tgt, "third": third}


def _np_dilate(binary: np.ndarray, px: int) -> np.ndarray:
    """Independent square dilation (OR over shifts) of (B, H, W) booleans."""
    b, h, w = binary.shape
    padded = np.zeros((b, h + 2 * px, w + 2 * px), dtype=bool)
    padded[:, px : px + h, px : px + w] = binary
    out = np.zeros_like(binary)
    for dy in range(2 * px + 1):
        for dx in range(2 * px + 1):
            out |= padded[:, dy : dy + h, dx : dx + w]
    return out


def _union_bin(rep, names):
    return region_union(rep.region_masks, names) > 0.5


# ---- the table -------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_names_every_component_and_region(task):
    entry = TASKS[task]
    assert set(entry.components) == set(COMPONENTS)
    assert set(entry.regions) == set(REGIONS)
    assert set(entry.components.values()) | set(entry.regions.values()) <= {"source", "target", "none"}
    assert entry.canvas in ("source", "target")
    assert entry.reference.canvas == entry.canvas
    with pytest.raises(TypeError):  # the table is read-only data
        entry.components["identity"] = "target"


def test_table_follows_the_paper_rules():
    for task in TASKS.values():
        assert task.components["identity"] == "source", task.name  # identity always from the source
    for name in ("reenactment", "animation", "face_swap", "head_swap"):
        for motion in ("pose", "expression", "gaze"):
            assert TASKS[name].components[motion] == "target", (name, motion)
    swap = TASKS["face_swap"].regions
    assert {r for r, s in swap.items() if s == "source"} == set(FACE_REGIONS)
    assert {r for r, s in swap.items() if s == "target"} == set(REGIONS) - set(FACE_REGIONS)
    head = TASKS["head_swap"].regions
    assert {r for r, s in head.items() if s == "source"} == set(HEAD_REGIONS)
    assert {r for r, s in head.items() if s == "target"} == {"background", "neck", "cloth"}
    for name in ("reenactment", "animation", "inpainting", "attribute_editing"):
        assert set(TASKS[name].regions.values()) == {"source"}, name
    for name in ("inpainting", "attribute_editing"):
        assert set(TASKS[name].components.values()) == {"source"}, name
    assert TASKS["head_swap"].reference.grayscale and not TASKS["face_swap"].reference.grayscale
    assert TASKS["face_swap"].canvas == "target" and TASKS["inpainting"].canvas == "source"


def test_effective_plan_overrides_aliases_and_order():
    plan = effective_plan("face_swap", {"gaze": "source", "hair": "third", "pose": "task default"})
    assert plan.components["gaze"] == "source" and plan.regions["hair"] == "third"
    assert plan.components["pose"] == "target"  # "task default" leaves the table's choice
    assert dict(plan.overrides) == {"gaze": "source", "hair": "third"}
    assert plan.sides_used() == {"source", "target", "third"}
    later_wins = effective_plan("face_swap", {"face": "target", "eyes": "source"})
    assert later_wins.regions["eyes"] == "source" and later_wins.regions["nose"] == "target"
    motion = effective_plan("reenactment", {"motion": "none"})
    assert all(motion.components[c] == "none" for c in ("pose", "expression", "gaze"))
    assert json.loads(plan.to_json())["regions"]["hair"] == "third"
    assert "gaze: source (override)" in plan.summary()
    # the table itself is not changed by an override
    assert TASKS["face_swap"].components["gaze"] == "target"


@pytest.mark.parametrize(
    "overrides, fragment",
    [({"hat": "source"}, "unknown override key 'hat'"), ({"hair": "donor"}, "must be one of")],
)
def test_bad_overrides_are_named(overrides, fragment):
    with pytest.raises(FORSError, match=fragment):
        effective_plan("face_swap", overrides)


def test_unknown_task_lists_tasks():
    with pytest.raises(FORSError, match="known tasks: face_swap"):
        effective_plan("deepfake", {})


def test_parse_override_and_region_text():
    assert parse_overrides("hair=third, eyes = target\n# comment\nmotion: source; gaze=task default") == {
        "hair": "third",
        "eyes": "target",
        "motion": "source",
        "gaze": "task default",
    }
    assert parse_overrides("") == {}
    with pytest.raises(FORSError, match="cannot read override 'hair third'"):
        parse_overrides("hair third")
    assert parse_region_list("hair, eyes eyes") == ["hair", "eyes"]
    assert parse_region_list("face") == list(FACE_REGIONS)
    assert parse_region_list("  ") is None
    with pytest.raises(FORSError, match="unknown region 'hat'"):
        parse_region_list("hair, hat")


# ---- representation assembler: checked against the table ------------------------------

COMPONENT_CASES = [(t, c) for t in TASKS for c in COMPONENTS]
REGION_CASES = [(t, r) for t in TASKS for r in REGIONS]


@pytest.mark.parametrize("task, component", COMPONENT_CASES)
def test_each_component_comes_from_the_planned_side(faces, task, component):
    out = assemble(faces["source"].rep, faces["target"].rep, task)
    side = TASKS[task].components[component]
    canvas = faces[TASKS[task].canvas].rep
    for name in COMPONENTS[component]:
        got = getattr(out, name)
        if name == "landmarks5" and side == "none":
            assert torch.equal(got, canvas.landmarks5)  # required geometry stays the canvas's
        elif side == "none":
            assert torch.count_nonzero(got) == 0 and got.shape == getattr(canvas, name).shape
        else:
            assert torch.equal(got, getattr(faces[side].rep, name)), (task, name, side)
            other = "target" if side == "source" else "source"
            assert not torch.equal(got, getattr(faces[other].rep, name))


@pytest.mark.parametrize("task, region", REGION_CASES)
def test_each_region_comes_from_the_planned_side(faces, task, region):
    out = assemble(faces["source"].rep, faces["target"].rep, task)
    side = TASKS[task].regions[region]
    r = REGION_INDEX[region]
    assert torch.equal(out.region_masks[:, r], faces[side].rep.region_masks[:, r])
    assert torch.equal(out.region_features[:, r], faces[side].rep.region_features[:, r])


@pytest.mark.parametrize("task", list(TASKS))
def test_geometry_and_record_follow_the_canvas(faces, task):
    out = assemble(faces["source"].rep, faces["target"].rep, task)
    canvas = faces[TASKS[task].canvas].rep
    assert torch.equal(out.affine, canvas.affine) and torch.equal(out.image_hw, canvas.image_hw)
    id_side = TASKS[task].components["identity"]
    assert torch.equal(out.clip_tokens, faces[id_side].rep.clip_tokens)
    record = json.loads(out.backends[PLAN_KEY])
    assert record["task"] == task and record["components"] == dict(TASKS[task].components)
    assert out.backends["identity"] == "synthetic-identity"  # FORD backend names are kept
    assert out.backends["parse"] == "synthetic-parse"
    assert f"task: {task}" in plan_summary(out)


def test_overrides_none_and_third_face(faces):
    src, tgt, third = (faces[k].rep for k in ("source", "target", "third"))
    out = assemble(src, tgt, "face_swap", {"gaze": "source", "expression": "none", "hair": "third", "eyes": "none"}, third=third)
    assert torch.equal(out.gaze, src.gaze)  # swap the face, keep the source's gaze
    assert torch.equal(out.pose, tgt.pose)
    assert torch.count_nonzero(out.expression) == 0
    h, e = REGION_INDEX["hair"], REGION_INDEX["eyes"]
    assert torch.equal(out.region_masks[:, h], third.region_masks[:, h])
    assert torch.equal(out.region_features[:, h], third.region_features[:, h])
    assert torch.count_nonzero(out.region_masks[:, e]) == 0 and torch.count_nonzero(out.region_features[:, e]) == 0
    assert "regions from third: hair*" in plan_summary(out)


def test_third_side_without_third_face_is_an_error(faces):
    with pytest.raises(AssemblyError, match="hair from a third face, but no third face"):
        assemble(faces["source"].rep, faces["target"].rep, "face_swap", {"hair": "third"})


def test_chaining_is_progressive_editing(faces):
    src, tgt, third = (faces[k].rep for k in ("source", "target", "third"))
    swapped = assemble(src, tgt, "face_swap")
    # then give the swapped face the third person's hair: the output is a valid input
    edited = assemble(swapped, third, "attribute_editing", {"hair": "target"})
    assert isinstance(edited, FaceRepresentation)
    h, n = REGION_INDEX["hair"], REGION_INDEX["nose"]
    assert torch.equal(edited.region_masks[:, h], third.region_masks[:, h])
    assert torch.equal(edited.region_masks[:, n], src.region_masks[:, n])
    assert torch.equal(edited.identity, src.identity) and torch.equal(edited.pose, tgt.pose)
    record = json.loads(edited.backends[PLAN_KEY])
    assert record["task"] == "attribute_editing"
    assert record["inputs"]["source"]["task"] == "face_swap"  # the history travels along
    # and it still saves and loads like any face
    assert set(edited.present()) == set(src.present())


def test_batch_broadcast_one_to_n():
    src = synthetic_face(1, batch=1, size=S).rep
    tgt = synthetic_face(2, batch=3, size=S).rep
    out = assemble(src, tgt, "face_swap")
    assert out.batch_size == 3
    assert all(torch.equal(out.identity[i], src.identity[0]) for i in range(3))
    assert torch.equal(out.pose, tgt.pose)


def test_batch_mismatch_names_both_sizes():
    src = synthetic_face(1, batch=2, size=S).rep
    tgt = synthetic_face(2, batch=3, size=S).rep
    with pytest.raises(AssemblyError, match="source has 2, target has 3"):
        assemble(src, tgt, "face_swap")


def test_crop_size_mismatch_names_both_sizes():
    src = synthetic_face(1, size=64).rep
    tgt = synthetic_face(2, size=48).rep
    with pytest.raises(AssemblyError, match="source 64x64, target 48x48"):
        assemble(src, tgt, "face_swap")


def test_mixed_backends_are_refused_and_named():
    src = synthetic_face(1, size=S, backends={"motion": "deep3d"}).rep
    tgt = synthetic_face(2, size=S, backends={"motion": "mediapipe-3dmm"}).rep
    # pose from the driving face but the source's own expression: the 3DMM 'motion' part is mixed
    with pytest.raises(AssemblyError, match=r"'motion' part .*source by 'deep3d', target by 'mediapipe-3dmm'"):
        assemble(src, tgt, "reenactment", {"expression": "source"})
    # plain reenactment takes pose and expression both from the target: nothing mixed, accepted
    out = assemble(src, tgt, "reenactment")
    assert out.backends["motion"] == "mediapipe-3dmm"


def test_mixed_parsers_are_refused_but_unused_backends_do_not_matter():
    src = synthetic_face(1, size=S, backends={"parse": "bisenet", "identity": "arcface"}).rep
    tgt = synthetic_face(2, size=S, backends={"parse": "mediapipe-mesh", "identity": "dlib"}).rep
    with pytest.raises(AssemblyError, match=r"'parse' part .*source by 'bisenet', target by 'mediapipe-mesh'"):
        assemble(src, tgt, "face_swap")
    # inpainting uses only the source face: the target's different backends are irrelevant
    out = assemble(src, tgt, "inpainting")
    assert out.backends["identity"] == "arcface" and out.backends["parse"] == "bisenet"


def test_region_feature_size_mismatch_is_an_error():
    src = synthetic_face(1, size=S).rep
    tgt = synthetic_face(2, size=S, dims={"region_features": (len(REGIONS), 16)}).rep
    with pytest.raises(AssemblyError, match="region_features of the .* face has shape"):
        assemble(src, tgt, "face_swap")


def test_missing_region_masks_on_a_needed_side_is_an_error():
    src = synthetic_face(1, size=S).rep
    tgt = synthetic_face(2, size=S, omit=("region_masks", "region_features")).rep
    with pytest.raises(AssemblyError, match="takes ears, hair, neck, cloth, background from the target face, which has no region_masks"):
        assemble(src, tgt, "face_swap")
    out = assemble(src, tgt, "reenactment")  # all regions from the source: fine
    assert torch.equal(out.region_masks, src.region_masks)


def test_missing_component_stays_absent():
    src = synthetic_face(1, size=S).rep
    tgt = synthetic_face(2, size=S, omit=("gaze",)).rep
    out = assemble(src, tgt, "face_swap")  # gaze from the target, which has none
    assert out.gaze is None
    assert torch.equal(assemble(src, tgt, "face_swap", {"gaze": "source"}).gaze, src.gaze)


def test_bald_target_hair_is_empty_not_an_error():
    src = synthetic_face(1, size=S).rep
    tgt = synthetic_face(2, size=S, bald=True).rep
    h = REGION_INDEX["hair"]
    assert (tgt.region_masks[:, h] > 0.5).sum() == 0 and torch.count_nonzero(tgt.region_features[:, h]) > 0
    out = assemble(src, tgt, "face_swap")
    # hair from a bald target = no hair: zero mask and zero feature (same as masked out)
    assert torch.count_nonzero(out.region_masks[:, h]) == 0
    assert torch.count_nonzero(out.region_features[:, h]) == 0
    assert json.loads(out.backends[PLAN_KEY])["empty_regions"] == {"hair": [0]}
    assert "empty regions (treated as masked out): hair" in plan_summary(out)


# ---- region assembler ------------------------------------------------------------------


def _run(faces, task, **kw):
    s, t = faces["source"], faces["target"]
    return assemble_regions(s.crops, s.rep, t.crops, t.rep, task, **kw)


@pytest.mark.parametrize("task", list(TASKS))
def test_shapes_for_every_task(faces, task):
    kw = {"regions": ["hair"]} if TASKS[task].reference.needs_regions else {}
    out = _run(faces, task, dilation_px=3, feather_px=2, **kw)
    assert out.reference.shape == (2, 3, S, S)
    assert out.mask.shape == (2, S, S)
    assert out.preview.shape == (2, 3, S, 2 * S)
    assert out.mask.min() >= 0 and out.mask.max() <= 1 and out.mask.max() == 1
    assert torch.equal(out.preview[..., :S], out.reference)


@pytest.mark.parametrize("dilation", [0, 3, 7])
def test_face_swap_reference_is_the_target_outside_the_dilated_mask(faces, dilation):
    s, t = faces["source"], faces["target"]
    out = _run(faces, "face_swap", dilation_px=dilation, feather_px=0)
    union = (_union_bin(s.rep, FACE_REGIONS) | _union_bin(t.rep, FACE_REGIONS)).numpy()
    expected = _np_dilate(union, dilation)
    assert np.array_equal(out.mask.numpy() > 0, expected)  # mask = union of both faces, dilated
    outside = torch.from_numpy(~expected)[:, None].expand_as(t.crops)
    assert outside.any()
    assert torch.equal(out.reference[outside], t.crops[outside])  # exactly, bit for bit
    # inside the source face, the source's pixels
    src_face = (region_union(s.rep.region_masks, FACE_REGIONS) == 1.0)[:, None].expand_as(s.crops)
    assert torch.equal(out.reference[src_face], s.crops[src_face])
    # target-face pixels the source face does not cover are not the target's (no identity leak)
    tgt_only = (_union_bin(t.rep, FACE_REGIONS) & (region_union(s.rep.region_masks, FACE_REGIONS) == 0))[:, None]
    tgt_only = tgt_only.expand_as(t.crops)
    assert tgt_only.any()
    assert not torch.isclose(out.reference[tgt_only], t.crops[tgt_only]).all()


def test_face_swap_feathered_mask_keeps_exactness(faces):
    out = _run(faces, "face_swap", dilation_px=4, feather_px=5)
    t = faces["target"]
    zero = (out.mask == 0)[:, None].expand_as(t.crops)
    assert zero.any() and torch.equal(out.reference[zero], t.crops[zero])
    union = _union_bin(faces["source"].rep, FACE_REGIONS) | _union_bin(t.rep, FACE_REGIONS)
    assert (out.mask[union] == 1).all()  # the faces themselves are always fully generated
    soft = (out.mask > 0) & (out.mask < 1)
    assert soft.any()  # feathered edge


def test_head_swap_reference_is_grey_inside_the_head(faces):
    s, t = faces["source"], faces["target"]
    out = _run(faces, "head_swap", dilation_px=3, feather_px=0)
    head = region_union(s.rep.region_masks, HEAD_REGIONS) == 1.0
    ref = out.reference.permute(0, 2, 3, 1)[head]  # (N, 3)
    assert ref.shape[0] > 100
    assert torch.allclose(ref[:, 0], ref[:, 1], atol=1e-6) and torch.allclose(ref[:, 1], ref[:, 2], atol=1e-6)
    src = s.crops.permute(0, 2, 3, 1)[head]
    assert (src.max(1).values - src.min(1).values).mean() > 0.05  # the source itself is in colour
    assert torch.allclose(ref, grayscale(s.crops).permute(0, 2, 3, 1)[head])
    union = (_union_bin(s.rep, HEAD_REGIONS) | _union_bin(t.rep, HEAD_REGIONS)).numpy()
    expected = _np_dilate(union, 3)
    assert np.array_equal(out.mask.numpy() > 0, expected)  # union of both heads, dilated
    outside = torch.from_numpy(~expected)[:, None].expand_as(t.crops)
    assert torch.equal(out.reference[outside], t.crops[outside])


@pytest.mark.parametrize("task", ["reenactment", "animation", "inpainting"])
def test_source_is_the_reference_and_everything_is_generated(faces, task):
    out = _run(faces, task)
    assert torch.equal(out.reference, faces["source"].crops)
    assert torch.equal(out.mask, torch.ones(2, S, S))


def test_inpainting_chosen_regions(faces):
    s = faces["source"]
    out = _run(faces, "inpainting", regions=["eyes", "lips"], dilation_px=2, feather_px=0)
    expected = _np_dilate(_union_bin(s.rep, ["eyes", "lips"]).numpy(), 2)
    assert np.array_equal(out.mask.numpy() > 0, expected)
    assert torch.equal(out.reference, s.crops)


def test_attribute_editing_takes_the_chosen_regions_from_the_target(faces):
    s, t = faces["source"], faces["target"]
    out = _run(faces, "attribute_editing", regions=["hair"], dilation_px=2, feather_px=0)
    hair = (region_union(t.rep.region_masks, ["hair"]) == 1.0)[:, None].expand_as(t.crops)
    assert torch.equal(out.reference[hair], t.crops[hair])
    expected = _np_dilate((_union_bin(s.rep, ["hair"]) | _union_bin(t.rep, ["hair"])).numpy(), 2)
    assert np.array_equal(out.mask.numpy() > 0, expected)
    outside = torch.from_numpy(~expected)[:, None].expand_as(s.crops)
    assert torch.equal(out.reference[outside], s.crops[outside])  # the rest is the source, exactly


@pytest.mark.parametrize("regions", [None, []])
def test_attribute_editing_needs_a_region_selection(faces, regions):
    with pytest.raises(RegionAssemblyError, match="attribute_editing"):
        _run(faces, "attribute_editing", regions=regions)


def test_unknown_region_is_named(faces):
    with pytest.raises(ValueError, match="unknown region 'hat'"):
        _run(faces, "attribute_editing", regions=["hat"])


def test_hair_from_a_bald_donor_is_an_error_naming_region_and_item():
    s = synthetic_face(1, size=S)
    t = synthetic_face(2, size=S, bald=True)
    with pytest.raises(RegionAssemblyError, match=r"region 'hair' is empty in the target face, batch item\(s\) \[0\]"):
        assemble_regions(s.crops, s.rep, t.crops, t.rep, "attribute_editing", regions=["hair"])


def test_face_swap_onto_a_bald_target_keeps_its_scalp():
    s = synthetic_face(1, size=S)
    t = synthetic_face(2, size=S, bald=True)
    out = assemble_regions(s.crops, s.rep, t.crops, t.rep, "face_swap", dilation_px=2, feather_px=0)
    outside = (out.mask == 0)[:, None].expand_as(t.crops)
    assert torch.equal(out.reference[outside], t.crops[outside])


def test_source_without_a_face_is_an_error():
    s = synthetic_face(1, size=S, no_face=True)
    t = synthetic_face(2, size=S)
    with pytest.raises(RegionAssemblyError, match=r"source face has no .* pixels in batch item\(s\) \[0\]"):
        assemble_regions(s.crops, s.rep, t.crops, t.rep, "face_swap")


def test_empty_inpainting_selection_is_an_error():
    s = synthetic_face(1, size=S, bald=True)
    with pytest.raises(RegionAssemblyError, match="nothing to generate"):
        assemble_regions(s.crops, s.rep, s.crops, s.rep, "inpainting", regions=["hair"])


def test_region_assembler_broadcasts_one_to_n():
    s = synthetic_face(1, batch=1, size=S)
    t = synthetic_face(2, batch=3, size=S)
    out = assemble_regions(s.crops, s.rep, t.crops, t.rep, "face_swap", dilation_px=2, feather_px=2)
    assert out.reference.shape == (3, 3, S, S) and out.mask.shape == (3, S, S)
    assert not torch.equal(out.mask[0], out.mask[1])  # each target's own face area


def test_region_assembler_bad_sizes_and_batches():
    s = synthetic_face(1, batch=2, size=S)
    t = synthetic_face(2, batch=3, size=S)
    with pytest.raises(RegionAssemblyError, match="source has 2, target has 3"):
        assemble_regions(s.crops, s.rep, t.crops, t.rep, "face_swap")
    small = synthetic_face(2, size=48)
    s1 = synthetic_face(1, size=S)
    with pytest.raises(RegionAssemblyError, match="source crops are 64x64 and target crops are 48x48"):
        assemble_regions(s1.crops, s1.rep, small.crops, small.rep, "face_swap")
    with pytest.raises(RegionAssemblyError, match="target crops are 64x64 but its representation was made on 48x48"):
        assemble_regions(s1.crops, s1.rep, s1.crops, small.rep, "face_swap")
    with pytest.raises(RegionAssemblyError, match="target has 2 crop"):
        assemble_regions(s1.crops, s1.rep, s.crops, s1.rep, "face_swap")
    with pytest.raises(RegionAssemblyError, match="dilation_px must be a whole number"):
        assemble_regions(s1.crops, s1.rep, s1.crops, s1.rep, "face_swap", dilation_px=-1)
    no_parse = synthetic_face(2, size=S, omit=("region_masks", "region_features"))
    with pytest.raises(RepresentationError, match="region_masks"):
        assemble_regions(s1.crops, s1.rep, no_parse.crops, no_parse.rep, "face_swap")


def test_morphology_primitives():
    x = torch.zeros(1, 21, 21)
    x[0, 10, 10] = 1
    d = dilate(x, 3)
    assert d.sum() == 49 and d[0, 7:14, 7:14].all()  # a (2*3+1)^2 square
    f = feather(d, 4)
    assert f.max() <= 1 and f.min() >= 0 and abs(f.sum() - d.sum()) < 1e-3  # blur keeps the mass
    assert torch.allclose(feather(torch.ones(1, 9, 9), 3), torch.ones(1, 9, 9))
