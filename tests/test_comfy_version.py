"""The pack refuses a ComfyUI too old for its loaders when it loads, with one clear line."""
import sys
import types

import pytest

from comfyui_zimage_gguf.errors import ZImageGGUFError
from comfyui_zimage_gguf.nodes.comfy_version import MIN_COMFYUI_VERSION, check_comfyui_version


@pytest.mark.parametrize("version", ["0.15.1", "0.8.0", "0.3.68"])
def test_older_comfyui_is_refused_naming_both_versions(version):
    with pytest.raises(ZImageGGUFError) as raised:
        check_comfyui_version(version)
    first = str(raised.value).splitlines()[0]
    assert first == (f"ComfyUI {version} is too old for the Z-Image GGUF pack: update ComfyUI to "
                     f"{'.'.join(map(str, MIN_COMFYUI_VERSION))} or later.")


@pytest.mark.parametrize("version", ["0.16.0", "0.18.1", "1.0.0", "unknown"])
def test_supported_or_unreadable_versions_pass(version):
    check_comfyui_version(version)


def test_reads_the_running_comfyuis_version_and_nothing_outside_comfyui(monkeypatch):
    monkeypatch.delitem(sys.modules, "comfyui_version", raising=False)
    check_comfyui_version()  # no ComfyUI: nothing to check
    monkeypatch.setitem(sys.modules, "comfyui_version", types.SimpleNamespace(__version__="0.12.0"))
    with pytest.raises(ZImageGGUFError, match="ComfyUI 0.12.0 is too old"):
        check_comfyui_version()
