"""The served workflows: the pack's API-format files plus every API-format `*.json` in the user's folder.

The user's folder is `$ZIMAGE_GGUF_API_WORKFLOWS`, or by default `<ComfyUI user directory>/zimage-gguf/
api-workflows` (e.g. `ComfyUI/user/zimage-gguf/api-workflows`). The model id is the file stem; a file in
the user's folder replaces a pack workflow of the same id. Folders are read again on every request, so a
new file is served without a restart.

The pack's edit workflow (one with a LoadImage) is no model of its own: it is the template edits run,
with the files of the model asked for (`edit_workflow`). Installed-file models (model_catalog.py) run
the pack's text-to-image workflow with their files (`installed_workflow`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .openai_errors import bad_request
from .workflow_params import MODEL_FILE_INPUTS, WorkflowError, apply_overrides, is_edit_workflow, load_api_workflow

WORKFLOWS_ENV = "ZIMAGE_GGUF_API_WORKFLOWS"
DEFAULT_SUBFOLDER = Path("zimage-gguf") / "api-workflows"
PACK_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
PACK_GENERATE = "z_image_turbo_gguf_api"
PACK_EDIT = "z_image_turbo_gguf_edit_api"

log = logging.getLogger("comfyui_zimage_gguf.api")


@dataclass(frozen=True)
class ServedWorkflow:
    id: str
    path: Path
    workflow: dict
    created: int


def default_user_folder(comfyui_user_directory=None, environ=os.environ) -> Path | None:
    if environ.get(WORKFLOWS_ENV):
        return Path(environ[WORKFLOWS_ENV]).expanduser()
    if comfyui_user_directory is not None:
        return Path(comfyui_user_directory) / DEFAULT_SUBFOLDER
    return None


class WorkflowCatalog:
    def __init__(self, user_folder: Path | None, pack_folder: Path = PACK_WORKFLOWS):
        self.user_folder = user_folder
        self.pack_folder = pack_folder
        self._cache: dict[Path, tuple[float, ServedWorkflow | None]] = {}

    def _load(self, path: Path, report_skips: bool) -> ServedWorkflow | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        served = None
        try:
            served = ServedWorkflow(path.stem, path, load_api_workflow(path), int(mtime))
        except WorkflowError as error:
            if report_skips:  # once per file version, not on every request
                log.warning("image API: skipped %s", error)
        self._cache[path] = (mtime, served)
        return served

    def _pack(self, model_id: str) -> ServedWorkflow | None:
        path = next(iter(sorted(self.pack_folder.rglob(f"{model_id}.json"))), None) if self.pack_folder.is_dir() else None
        return self._load(path, False) if path is not None else None

    def installed_workflow(self, model) -> ServedWorkflow | None:
        """The pack's text-to-image workflow running an installed-file model's files."""
        pack = self._pack(PACK_GENERATE)
        if pack is None:
            return None
        workflow = apply_overrides(pack.workflow, unet=model.unet, clip=model.clip, vae=model.vae).workflow
        return ServedWorkflow(model.id, pack.path, workflow, int(model.created))

    def edit_workflow(self, served: ServedWorkflow) -> dict:
        """The graph an edit with this model runs: its own if it starts from an image, else the pack's edit
        workflow with the model's files (read from its loaders)."""
        if is_edit_workflow(served.workflow):
            return served.workflow
        files = {}
        for parameter, loaders in MODEL_FILE_INPUTS.items():
            for node in served.workflow.values():
                if node["class_type"] in loaders:
                    files[parameter] = node["inputs"].get(loaders[node["class_type"]])
        template = self._pack(PACK_EDIT)
        if template is None or set(files) != set(MODEL_FILE_INPUTS):
            raise bad_request(
                f"the model {served.id!r} cannot edit images: its workflow has no LoadImage, and no diffusion model, "
                "text encoder and VAE loaders whose files the pack's edit workflow could use",
                "model",
            )
        return apply_overrides(template.workflow, **files).workflow

    def workflows(self) -> dict[str, ServedWorkflow]:
        served = {}
        # The pack's folder holds its UI-format files too; only the user's folder reports what it skips.
        for folder, report_skips in ((self.pack_folder, False), (self.user_folder, True)):
            if folder is None or not folder.is_dir():
                continue
            # The pack keeps API-format files in a subfolder; a user's folder is read flat.
            paths = folder.rglob("*.json") if folder == self.pack_folder else folder.glob("*.json")
            for path in sorted(paths):
                workflow = self._load(path, report_skips)
                if workflow is None or (folder == self.pack_folder and is_edit_workflow(workflow.workflow)):
                    continue  # the pack's edit workflow is the template edits run, not a model
                served[workflow.id] = workflow
        return served

    def describe_folders(self) -> str:
        user = str(self.user_folder) if self.user_folder is not None else f"none (set {WORKFLOWS_ENV})"
        return f"pack workflows from {self.pack_folder}; user workflows from {user}"
