"""The pack's build backend: setuptools, with its scratch files kept out of the pack folder.

setuptools writes `comfyui_zimage_gguf.egg-info` (on every hook) and `build/` (for a wheel) into the
project folder, and this project folder is the pack folder inside ComfyUI's `custom_nodes/`. Each hook
here runs setuptools' own with an extra distutils config (`DIST_EXTRA_CONFIG`) that points
`egg_info --egg-base` and `build --build-base` at a temporary folder, removed when the hook returns.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

from setuptools import build_meta as _setuptools


@contextlib.contextmanager
def _scratch_outside_the_pack():
    with tempfile.TemporaryDirectory(prefix="comfyui-zimage-gguf-build-") as scratch:
        config = os.path.join(scratch, "scratch.cfg")
        with open(config, "w", encoding="utf-8") as file:
            file.write(f"[egg_info]\negg_base = {scratch}\n[build]\nbuild_base = {os.path.join(scratch, 'build')}\n")
        previous = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = config
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("DIST_EXTRA_CONFIG", None)
            else:
                os.environ["DIST_EXTRA_CONFIG"] = previous


def _outside(hook):
    def run(*args, **kwargs):
        with _scratch_outside_the_pack():
            return hook(*args, **kwargs)

    run.__name__ = hook.__name__
    return run


get_requires_for_build_wheel = _outside(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_sdist = _outside(_setuptools.get_requires_for_build_sdist)
get_requires_for_build_editable = _outside(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_wheel = _outside(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _outside(_setuptools.prepare_metadata_for_build_editable)
build_wheel = _outside(_setuptools.build_wheel)
build_sdist = _outside(_setuptools.build_sdist)
build_editable = _outside(_setuptools.build_editable)
