"""The training cache (written by `facex prepare`, read by `facex train`) and the pair dataset.

Cache folder:
    manifest.json                 settings, FORD backends, the shard list (written last, by rank 0)
    failures.jsonl                every clip / frame that was skipped, with the reason
    shard-000000.safetensors      clips 0..N-1 of the sorted clip list, shard-000001 the next N, ...

A shard holds, per clip (prefix "c0003." = 4th clip of the shard), the aligned crops of the frames
that had a face (JPEG / PNG bytes or raw uint8) and their FORD outputs, one row per frame: the
FaceRepresentation fields, region masks as uint8 at `mask_size`, the large float fields in fp16.
Its metadata says which clips it covers (ids and source frame numbers), which failed, the FORD
backends and a fingerprint of the settings, so a rerun can tell a finished shard from another run's.

Pair dataset: sample i (a global index, so any process layout sees the same samples) picks a clip
(a fresh permutation of the clips per pass), two different frames of it (source, target), assembles
the representation for the task (head swap for the generalist model) and the region-assembled
reference, and draws its own noise, timestep and condition-drop decisions from a generator seeded
by (seed, i). One process with batch 2B and two with batch B therefore train on the same numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..representation import FIELDS, FaceRepresentation
from . import TrainError

CACHE_FORMAT = "facex.train_cache"
CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
CROP_FORMATS = ("jpeg", "png", "raw")

# How large representation fields are stored (everything else: as the FIELDS table says).
HALF_FIELDS = ("identity_map", "clip_tokens", "region_features")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.safetensors"


def fingerprint(settings: dict, clip_ids: list[str]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update("\n".join(clip_ids).encode())
    return h.hexdigest()[:16]


# ---- clip (de)serialisation ---------------------------------------------------------------------
def encode_clip(key: str, crops: torch.Tensor, rep: FaceRepresentation, crop_format: str, mask_size: int,
                jpeg_quality: int = 95) -> dict[str, torch.Tensor]:
    """Tensors of one clip: crops (F, 3, S, S) uint8, rep with F rows."""
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops must be uint8 (F, 3, S, S), got {crops.dtype} {tuple(crops.shape)}")
    out: dict[str, torch.Tensor] = {}
    if crop_format == "raw":
        out[f"{key}.crops"] = crops.contiguous()
    else:
        blobs = [_encode_image(c, crop_format, jpeg_quality) for c in crops]
        out[f"{key}.crops"] = torch.cat(blobs)
        out[f"{key}.crop_offsets"] = torch.tensor([0] + [len(b) for b in blobs]).cumsum(0)
    for name, t in rep.tensors().items():
        t = t.detach().cpu()
        if name == "region_masks":
            t = F.interpolate(t, size=(mask_size, mask_size), mode="area") if t.shape[-1] != mask_size else t
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        elif name in HALF_FIELDS:
            t = t.to(torch.float16)
        out[f"{key}.rep.{name}"] = t.contiguous()
    return out


def _encode_image(chw: torch.Tensor, fmt: str, quality: int) -> torch.Tensor:
    import io

    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(chw.permute(1, 2, 0).numpy())
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _decode_image(blob: torch.Tensor) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(blob.numpy().tobytes())) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def decode_crops(handle, key: str, rows: list[int], crop_format: str) -> torch.Tensor:
    """(len(rows), 3, S, S) float in [0, 1]."""
    if crop_format == "raw":
        sl = handle.get_slice(f"{key}.crops")
        return torch.stack([sl[r:r + 1][0] for r in rows]).float().div(255)
    offsets = handle.get_tensor(f"{key}.crop_offsets")
    blob_slice = handle.get_slice(f"{key}.crops")
    images = []
    for r in rows:
        a, b = int(offsets[r]), int(offsets[r + 1])
        images.append(_decode_image(blob_slice[a:b]))
    return torch.stack(images).float().div(255)


def decode_rep(handle, key: str, rows: list[int], names: list[str], crop_size: int, backends: dict) -> FaceRepresentation:
    fields = {}
    for name in names:
        sl = handle.get_slice(f"{key}.rep.{name}")
        t = torch.stack([sl[r:r + 1][0] for r in rows])
        if name == "region_masks":
            t = t.float().div(255)
            if t.shape[-1] != crop_size:
                t = F.interpolate(t, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
        elif t.is_floating_point():
            t = t.to(FIELDS[name].dtype)
        fields[name] = t
    return FaceRepresentation(crop_size=crop_size, backends=dict(backends), **fields)


def read_shard_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != CACHE_FORMAT:
        raise TrainError(f"{path} is not a FaceX training cache shard (format {meta.get('format')!r})")
    return {
        "index": int(meta["index"]),
        "fingerprint": meta["fingerprint"],
        "clips": json.loads(meta["clips"]),
        "failures": json.loads(meta["failures"]),
        "backends": json.loads(meta["backends"]),
        "fields": json.loads(meta["fields"]),
        "crop_size": int(meta["crop_size"]),
        "crop_format": meta["crop_format"],
    }


# ---- the cache -----------------------------------------------------------------------------------
def _ford_parts(backends: dict) -> dict[str, str]:
    """FORD part -> backend, without bookkeeping keys (e.g. the assembler's fors.plan)."""
    parts = {spec.part for spec in FIELDS.values()}
    return {k: v for k, v in backends.items() if k in parts or "." not in k}


def check_backends(cache_backends: dict, wanted: dict, cache_dir) -> None:
    """Refuse a cache made by other FORD backends than the training config names."""
    have = _ford_parts(cache_backends)
    differ = {p: (have[p], b) for p, b in wanted.items() if p in have and have[p] != b}
    if differ:
        listed = "; ".join(f"{p}: cache has {got!r}, config wants {want!r}" for p, (got, want) in sorted(differ.items()))
        raise TrainError(
            f"the training cache {cache_dir} was made with other FORD backends than the training config names ({listed}). "
            f"Set ford_backends to the cache's backends (e.g. ford_backends=embedded), or run `facex prepare` again "
            f"with the backends you want to train on"
        )


class TrainCache:
    """Read side of a finished `facex prepare` folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise TrainError(
                f"no {MANIFEST} in {self.folder}: this is not a finished FaceX training cache; run "
                f"`facex prepare --out {self.folder} ...` (again) until it reports completion"
            )
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != CACHE_FORMAT:
            raise TrainError(f"{manifest} is not a FaceX training cache manifest")
        if int(self.manifest.get("format_version", 0)) > CACHE_FORMAT_VERSION:
            raise TrainError(f"{manifest} is cache format {self.manifest['format_version']}; update FaceX")
        self.backends: dict[str, str] = self.manifest["backends"]
        self.crop_size: int = int(self.manifest["crop_size"])
        self.crop_format: str = self.manifest["settings"]["crop_format"]
        self.fields: list[str] = list(self.manifest["fields"])
        # (shard file, clip key, number of frames) for every usable clip (>= 2 frames)
        self.clips: list[tuple[str, str, int]] = []
        for shard in self.manifest["shards"]:
            for clip in shard["clips"]:
                if len(clip["frames"]) >= 2:
                    self.clips.append((shard["file"], clip["key"], len(clip["frames"])))
        if not self.clips:
            raise TrainError(f"the training cache {self.folder} holds no clip with two frames that have a face; see {FAILURES}")
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def _handle(self, file: str):
        h = self._handles.get(file)
        if h is None:
            from safetensors import safe_open

            if len(self._handles) > 16:
                self._handles.clear()
            h = safe_open(str(self.folder / file), framework="pt")
            self._handles[file] = h
        return h

    def __getstate__(self):  # DataLoader workers open their own handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def load(self, clip: int, rows: list[int]) -> tuple[torch.Tensor, FaceRepresentation]:
        file, key, _ = self.clips[clip]
        h = self._handle(file)
        crops = decode_crops(h, key, rows, self.crop_format)
        rep = decode_rep(h, key, rows, self.fields, self.crop_size, self.backends)
        return crops, rep

    def field_dims(self) -> dict[str, tuple]:
        """Shape after the batch dim of each stored field (from the first clip), for sizing FaceX."""
        _, rep = self.load(0, [0])
        return {name: tuple(t.shape[1:]) for name, t in rep.tensors().items()}


# ---- pairs --------------------------------------------------------------------------------------
def sample_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:15], 16)


class PairDataset(torch.utils.data.Dataset):
    """Samples start..start+length-1 of the endless pair stream (see the module doc)."""

    def __init__(self, cache: TrainCache, *, task: str, resolution: int, latent_shape: tuple[int, int, int],
                 num_train_timesteps: int, condition_drop_prob: float, group_drop_prob: float, n_groups: int,
                 use_reference: bool, seed: int, start: int, length: int):
        self.cache = cache
        self.task = task
        self.resolution = resolution
        self.latent_shape = latent_shape
        self.num_train_timesteps = num_train_timesteps
        self.condition_drop_prob = condition_drop_prob
        self.group_drop_prob = group_drop_prob
        self.n_groups = n_groups
        self.use_reference = use_reference
        self.seed = seed
        self.start = start
        self.length = length
        self._perm_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def _clip_for(self, index: int) -> int:
        n = len(self.cache)
        epoch, pos = divmod(index, n)
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(self.seed, -1 - epoch)))
            self._perm_cache = {epoch: perm}
        return int(perm[pos])

    def draws(self, index: int) -> dict:
        """The random decisions of sample `index` (drawn first, in a fixed order, so they do not
        depend on the data): frame pair order, noise, VAE noise, timestep, condition drops."""
        g = torch.Generator().manual_seed(sample_seed(self.seed, index))
        c, h, w = self.latent_shape
        return {
            "pick": torch.rand(2, generator=g),  # (source, target) frames, see sample()
            "noise": torch.randn(c, h, w, generator=g),
            "vae_noise": torch.randn(c, h, w, generator=g),
            "timestep": torch.randint(0, self.num_train_timesteps, (1,), generator=g)[0],
            "drop": torch.rand(1, generator=g)[0] < self.condition_drop_prob,
            "group_drop": torch.rand(self.n_groups, generator=g) < self.group_drop_prob,
        }

    def sample(self, index: int) -> dict:
        """The sample with global index `index` (deterministic)."""
        from ..fors.region_assembler import assemble_regions
        from ..fors.representation_assembler import assemble
        from ..fors.tasks import FORSError, get_task

        d = self.draws(index)
        clip = self._clip_for(index)
        n_frames = self.cache.clips[clip][2]
        u = d.pop("pick")
        src = min(int(u[0] * n_frames), n_frames - 1)
        tgt = min(int(u[1] * (n_frames - 1)), n_frames - 2)
        pair = [src, tgt + (tgt >= src)]  # two different frames of the clip, uniformly
        crops, rep = self.cache.load(clip, pair)
        source, target = rep.index(0), rep.index(1)
        assembled = assemble(source, target, self.task)
        size = self.cache.crop_size
        reference = None
        mask = torch.ones(1, size, size)
        if rep.region_masks is not None:
            try:
                regions = assemble_regions(crops[0:1], source, crops[1:2], target, self.task)
                mask, reference = regions.mask, regions.reference
            except FORSError:
                # a parse the region assembler cannot use (e.g. no head pixels): the whole crop is
                # generated from the canvas; rare, and better than stopping a long run
                reference = crops[1:2] if get_task(self.task).canvas == "target" else crops[0:1]
        image = crops[1:2]
        if size != self.resolution:
            image = F.interpolate(image, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True)
        _, h, w = self.latent_shape
        out = {
            "pixels": image[0] * 2 - 1,
            "edit_mask": F.interpolate(mask[None], size=(h, w), mode="area")[0, 0],
            **d,
            "index": torch.tensor(index),
        }
        if self.use_reference and reference is not None:
            out["reference"] = reference[0]
        for name, t in assembled.tensors().items():
            out[f"rep.{name}"] = t[0]
        return out

    def __getitem__(self, i: int) -> dict:
        return self.sample(self.start + i)


def batch_representation(batch: dict, crop_size: int, backends: dict) -> FaceRepresentation:
    fields = {k[len("rep."):]: v for k, v in batch.items() if k.startswith("rep.")}
    return FaceRepresentation(crop_size=crop_size, backends=dict(backends), **fields)
