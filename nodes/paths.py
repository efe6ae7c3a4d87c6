"""Model folders FaceX reads, registered with ComfyUI's folder_paths (shared with other packs
where a convention exists: insightface model packs, core clip_vision)."""

import os

import folder_paths

# folder name -> (sub-path under models/, accepted extensions)
MODEL_FOLDERS: dict[str, tuple[str, set[str]]] = {
    "facex": ("facex", {".safetensors"}),
    "facex_faces": (os.path.join("facex", "faces"), {".safetensors"}),
    "facex_extractors": (os.path.join("facex", "extractors"), {".pth", ".pt", ".pkl", ".safetensors", ".onnx"}),
    "facex_evaluate": (os.path.join("facex", "evaluate"), {".pth", ".pt", ".safetensors"}),
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


def missing_file_message(name: str, filename: str):
    """None when the file is there, else a message naming every folder searched. Nodes return it
    from validate_inputs, which replaces ComfyUI's bare "value not in list" for shared workflows
    that name a file this user lacks."""
    register_model_folders()
    path = folder_paths.get_full_path(name, filename)
    if path is not None and os.path.isfile(path):
        return None
    return (f"model file {filename!r} not found; FaceX looked in: {', '.join(folder_list(name))}. "
            f"Put the file in one of those folders (README.md, 'Model files', says where to get it).")


def resolve(name: str, filename: str) -> str:
    """Full path of a model file, or FileNotFoundError naming every folder searched."""
    message = missing_file_message(name, filename)
    if message:
        raise FileNotFoundError(message)
    return folder_paths.get_full_path(name, filename)
