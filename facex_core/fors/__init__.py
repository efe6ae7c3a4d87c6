"""FORS: Facial Omni-Representation Steering (paper Sec. 3.3-3.5, Fig. 4).

- ``tasks``: the task table (which face each component and region comes from) and plans
  (a task plus user overrides, for mixture editing);
- ``representation_assembler.assemble``: one FaceRepresentation from a source, a target and an
  optional third face;
- ``region_assembler.assemble_regions``: the inpainting reference image and generate mask.
"""

from .region_assembler import RegionAssembly, RegionAssemblyError, assemble_regions
from .representation_assembler import PLAN_KEY, AssemblyError, assemble, plan_summary
from .tasks import (
    ALIASES,
    SIDES,
    TASKS,
    FORSError,
    Plan,
    ReferenceRecipe,
    Task,
    effective_plan,
    get_task,
    parse_overrides,
    parse_region_list,
)

__all__ = [
    "ALIASES",
    "SIDES",
    "TASKS",
    "PLAN_KEY",
    "AssemblyError",
    "FORSError",
    "Plan",
    "ReferenceRecipe",
    "RegionAssembly",
    "RegionAssemblyError",
    "Task",
    "assemble",
    "assemble_regions",
    "effective_plan",
    "get_task",
    "parse_overrides",
    "parse_region_list",
    "plan_summary",
]
