"""The paper's metrics inside a workflow: face similarity of two representations, pixel metrics of
two image batches, and FID of two image sets (weights from models/facex/evaluate/)."""

import os

import folder_paths
from comfy_api.latest import io

from ..facex_core.evaluate import fid as fid_core
from ..facex_core.evaluate import metrics
from .types import FaceXRepresentation

EVALUATE_FOLDER = "facex_evaluate"
EVALUATE_EXTENSIONS = (".pth", ".pt", ".safetensors")


def _evaluate_folders() -> list[str]:
    # Registered by nodes/paths.py when present there; the same folder otherwise.
    if EVALUATE_FOLDER in folder_paths.folder_names_and_paths:
        return list(folder_paths.get_folder_paths(EVALUATE_FOLDER))
    return [os.path.join(folder_paths.models_dir, "facex", "evaluate")]


def _inception_files() -> list[str]:
    found = sorted(
        {f for d in _evaluate_folders() if os.path.isdir(d) for f in os.listdir(d) if f.endswith(EVALUATE_EXTENSIONS)}
    )
    # Offer the standard name even when absent, so the node validates and execute says where to put it.
    return found or [fid_core.INCEPTION_FILENAME]


class FaceXFaceSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXFaceSimilarity",
            display_name="FaceX Face Similarity",
            category="FaceX/evaluate",
            description="Identity cosine similarity of two faces (the paper's ID metric). Both need identity from the same backend.",
            inputs=[
                FaceXRepresentation.Input("representation_a", tooltip="faces with identity (e.g. the generated faces)"),
                FaceXRepresentation.Input("representation_b", tooltip="faces with identity (e.g. the source face); a batch of one compares with every face of a"),
            ],
            outputs=[
                io.Float.Output(display_name="similarity", tooltip="mean cosine similarity, -1..1 (higher = same person)"),
                io.String.Output(display_name="report", tooltip="similarity per face"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, representation_a, representation_b) -> io.NodeOutput:
        try:
            sim = metrics.identity_similarity(representation_a, representation_b)
        except metrics.MetricError as e:
            raise ValueError(f"FaceXFaceSimilarity: {e}") from e
        report = metrics.per_item_report({"ID": sim})
        return io.NodeOutput(metrics.summarize(sim), report, ui={"text": (report,)})


class FaceXImageMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXImageMetrics",
            display_name="FaceX Image Metrics",
            category="FaceX/evaluate",
            description="SSIM, PSNR (dB) and RMSE between two image batches of equal size, per image.",
            inputs=[
                io.Image.Input("image_a", tooltip="e.g. the generated images"),
                io.Image.Input("image_b", tooltip="e.g. the ground truth; same size as image_a; a batch of one compares with every image of a"),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="SSIM / PSNR / RMSE per batch item and their mean")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image_a, image_b) -> io.NodeOutput:
        try:
            values = {name: fn(image_a, image_b) for name, fn in (("SSIM", metrics.ssim), ("PSNR", metrics.psnr), ("RMSE", metrics.rmse))}
        except metrics.MetricError as e:
            raise ValueError(f"FaceXImageMetrics: {e}") from e
        report = metrics.per_item_report(values)
        return io.NodeOutput(report, ui={"text": (report,)})


class FaceXFID(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FaceXFID",
            display_name="FaceX FID",
            category="FaceX/evaluate",
            description=(
                "Fréchet Inception Distance between two image sets, with the standard FID Inception-v3 "
                f"({fid_core.INCEPTION_FILENAME} in models/facex/evaluate/). Meaningful only for large sets (thousands of images)."
            ),
            inputs=[
                io.Image.Input("images_a", tooltip="first image set (at least 2 images)"),
                io.Image.Input("images_b", tooltip="second image set (at least 2 images)"),
                io.Combo.Input("inception", options=_inception_files(), tooltip="FID Inception weights in models/facex/evaluate/"),
            ],
            outputs=[
                io.Float.Output(display_name="fid", tooltip="lower = closer distributions"),
                io.String.Output(display_name="report"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images_a, images_b, inception) -> io.NodeOutput:
        folders = _evaluate_folders()
        path = next((os.path.join(d, inception) for d in folders if os.path.isfile(os.path.join(d, inception))), os.path.join(folders[0], inception))
        try:
            model = fid_core.load_inception(path, looked_in=", ".join(folders))
            value = fid_core.fid(model, images_a, images_b)
        except (fid_core.InceptionWeightsError, fid_core.FIDError) as e:
            raise ValueError(f"FaceXFID: {e}") from e
        report = f"FID={value:.2f} ({images_a.shape[0]} vs {images_b.shape[0]} images)"
        return io.NodeOutput(value, report, ui={"text": (report,)})


NODES = [FaceXFaceSimilarity, FaceXImageMetrics, FaceXFID]
