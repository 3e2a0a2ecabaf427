"""The served workflows: the pack's API-format files plus every API-format `*.json` in the user's folder.

The user's folder is `$ZIMAGE_GGUF_API_WORKFLOWS`, or by default `<ComfyUI user directory>/zimage-gguf/
api-workflows` (e.g. `ComfyUI/user/zimage-gguf/api-workflows`). The model id is the file stem; a file in
the user's folder replaces a pack workflow of the same id. Folders are read again on every request, so a
new file is served without a restart.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .workflow_params import WorkflowError, load_api_workflow

WORKFLOWS_ENV = "ZIMAGE_GGUF_API_WORKFLOWS"
DEFAULT_SUBFOLDER = Path("zimage-gguf") / "api-workflows"
PACK_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"

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
                if workflow is not None:
                    served[workflow.id] = workflow
        return served

    def describe_folders(self) -> str:
        user = str(self.user_folder) if self.user_folder is not None else f"none (set {WORKFLOWS_ENV})"
        return f"pack workflows from {self.pack_folder}; user workflows from {user}"
