"""Model folders FaceX reads, registered with ComfyUI's folder_paths (shared with other packs
where a convention exists: insightface model packs, core clip_vision)."""

import os

import folder_paths

# folder name -> (sub-path under models/, accepted extensions)
MODEL_FOLDERS: dict[str, tuple[str, set[str]]] = {
    "facex": ("facex", {".safetensors"}),
    "facex_faces": (os.path.join("facex", "faces"), {".safetensors"}),
    "facex_extractors": (os.path.join("facex", "extractors"), {".pth", ".pt", ".safetensors", ".onnx"}),
    "insightface": ("insightface", {".onnx"}),
}


def register_model_folders() -> None:
    for name, (sub, exts) in MODEL_FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, sub)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], exts)


def folder_list(name: str) -> list[str]:
    return folder_paths.get_folder_paths(name)


def resolve(name: str, filename: str) -> str:
    """Full path of a model file, or an error naming every folder searched."""
    path = folder_paths.get_full_path(name, filename)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"model file {filename!r} not found; FaceX looked in: {', '.join(folder_list(name))}. "
            f"Put the file in one of those folders (README.md, 'Model files', says where to get it)."
        )
    return path
