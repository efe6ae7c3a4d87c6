"""Region vocabulary shared by every parser backend, the assemblers and the FaceX model.

The order is part of the checkpoint format: region masks and region features are stacked in
this order, and a FaceX checkpoint records the vocabulary it was trained with.
"""

REGIONS: tuple[str, ...] = (
    "skin",
    "eyebrows",
    "eyes",
    "nose",
    "lips",
    "ears",
    "hair",
    "neck",
    "cloth",
    "background",
)

REGION_INDEX: dict[str, int] = {name: i for i, name in enumerate(REGIONS)}

# Regions that make up "the face" (used for face-area masks, e.g. the face-swap union mask).
FACE_REGIONS: tuple[str, ...] = ("skin", "eyebrows", "eyes", "nose", "lips")
# Regions that make up "the head" (head swap keeps only the target background).
HEAD_REGIONS: tuple[str, ...] = FACE_REGIONS + ("ears", "hair")

# One colour per region for previews (RGB, 0-255), in REGIONS order.
REGION_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 180, 150),  # skin
    (90, 50, 20),  # eyebrows
    (40, 120, 230),  # eyes
    (240, 140, 40),  # nose
    (210, 30, 60),  # lips
    (160, 90, 200),  # ears
    (60, 40, 30),  # hair
    (200, 160, 120),  # neck
    (40, 160, 90),  # cloth
    (0, 0, 0),  # background
)


def region_indices(names) -> list[int]:
    """Indices of region names, with an error that lists the vocabulary for a typo."""
    out = []
    for name in names:
        if name not in REGION_INDEX:
            raise ValueError(f"unknown region {name!r}; known regions: {', '.join(REGIONS)}")
        out.append(REGION_INDEX[name])
    return out
