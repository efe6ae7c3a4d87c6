#!/usr/bin/env bash
# Runs the real ComfyUI (from scripts/dev_env.sh) with this checkout as the custom node pack
# `comfyui-facex`, in the foreground, on http://127.0.0.1:${PORT:-8188}.
#
# User data lives outside the git tree, in ${FACEX_RUN_DIR:-${FACEX_CACHE:-~/.cache/facex-dev}/run}:
#   models/ (checkpoints, loras, controlnet, clip_vision, facex, insightface, ...), input/, output/,
#   user/ (settings, saved workflows, database), custom_nodes/comfyui-facex -> this checkout.
# Put real model files into that models/ folder, or pass ComfyUI options after the script name,
# e.g. `scripts/run_comfyui.sh --extra-model-paths-config ~/my_model_paths.yaml`.
set -euo pipefail

FACEX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev_env.sh
source "$FACEX_ROOT/scripts/dev_env.sh"
CACHE="${FACEX_CACHE:-$HOME/.cache/facex-dev}"
RUN_DIR="${FACEX_RUN_DIR:-$CACHE/run}"
PORT="${PORT:-8188}"
PY="$FACEX_VENV/bin/python"
log() { echo "[facex-run] $*" >&2; }

MODEL_FOLDERS=(checkpoints loras controlnet clip_vision vae embeddings upscale_models diffusion_models
               text_encoders model_patches ipadapter facex facex/faces facex/extractors
               insightface insightface/models)

prepare_base_dir() {
  mkdir -p "$RUN_DIR"/{input,output,temp,user,custom_nodes}
  local folder
  for folder in "${MODEL_FOLDERS[@]}"; do mkdir -p "$RUN_DIR/models/$folder"; done
  # The pack is linked, not copied: edits in the checkout take effect on the next start.
  ln -sfn "$FACEX_ROOT" "$RUN_DIR/custom_nodes/comfyui-facex"
}

# --- demo assets -------------------------------------------------------------------------------
# HOOK: once facex_core has its installer (e.g. `python -m facex_core.cli demo install`), call it
# here instead of the two steps below; keep this function the single place that installs demo
# inputs and example workflows into the run directory.
install_demo_assets() {
  # Example workflows. ComfyUI's template browser already lists the pack's own `workflows/`
  # folder (app/custom_node_manager.py serves <pack>/{example_workflows,example,examples,
  # workflow,workflows}/*.json at /api/workflow_templates/<pack>), so nothing is copied for it.
  # Copies go to the user's workflow library (sidebar "Workflows", user/default/workflows/),
  # into a FaceX folder, refreshed only when the checkout's file is newer than the copy.
  local dest="$RUN_DIR/user/default/workflows/FaceX"
  mkdir -p "$dest"
  shopt -s nullglob
  local wf
  for wf in "$FACEX_ROOT"/workflows/*.json; do cp -u "$wf" "$dest/"; done
  shopt -u nullglob
  # The public-domain astronaut photo (NASA, shipped with scikit-image) as a demo input face.
  # Licence-clean demo photos: the astronaut (Eileen Collins, NASA, public domain, from
  # scikit-image) and Grace Hopper (U.S. Navy photo, public domain, from matplotlib's sample data).
  "$PY" - "$RUN_DIR/input" <<'PYEOF'
import os, sys
from PIL import Image
import matplotlib
from skimage import data
out = sys.argv[1]
if not os.path.exists(os.path.join(out, "facex_astronaut.png")):
    Image.fromarray(data.astronaut()).save(os.path.join(out, "facex_astronaut.png"))
hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
if os.path.exists(hopper) and not os.path.exists(os.path.join(out, "facex_grace_hopper.png")):
    Image.open(hopper).convert("RGB").save(os.path.join(out, "facex_grace_hopper.png"))
PYEOF
  # The FaceX workflows load models/facex/facex_sd15.safetensors: until you train one, a fresh
  # `facex init` checkpoint stands in (its FRC layers add exactly zero: the base model's output).
  if [ ! -f "$RUN_DIR/models/facex/facex_sd15.safetensors" ]; then
    "$PY" -m facex_core.cli init --family sd15 --out "$RUN_DIR/models/facex/facex_sd15.safetensors" >/dev/null
  fi
}

prepare_base_dir
install_demo_assets
log "base directory: $RUN_DIR (pack: custom_nodes/comfyui-facex -> $FACEX_ROOT)"
log "starting ComfyUI on http://127.0.0.1:$PORT"
cd "$FACEX_COMFYUI"
# --database-url: ComfyUI's default database path is inside its own (shared, cached) tree.
exec "$PY" main.py --cpu --listen 127.0.0.1 --port "$PORT" \
  --base-directory "$RUN_DIR" \
  --database-url "sqlite:///$RUN_DIR/user/comfyui.db" \
  "$@"
