"""The command table of cli/main.py: on the light install (no torch) the torch commands say which install to run."""
import importlib

import pytest

from comfyui_zimage_gguf.cli import main as cli_main


@pytest.fixture
def without_torch(monkeypatch):
    """Import as on the light install: any cli module that needs torch fails the way it would there."""
    real_import = importlib.import_module

    def light_import(name, *args):
        if name.rsplit(".", 1)[-1] in {"convert", "inspect"}:
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *args)

    def light_bench(subparsers):
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(cli_main.importlib, "import_module", light_import)
    monkeypatch.setattr(cli_main, "add_bench_parser", light_bench)


@pytest.mark.parametrize("command", ["convert", "inspect", "bench"])
def test_a_torch_command_on_the_light_install_names_the_install_in_one_line(without_torch, command, capsys):
    assert cli_main.main([command, "some", "--args"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {command} needs torch, gguf, numpy and safetensors: install the full pack")
    assert 'pip install "comfyui-zimage-gguf[full]"' in err


def test_queue_and_serve_still_parse_on_the_light_install(without_torch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["serve", "--help"])
    assert exit_info.value.code == 0
    assert "--comfyui URL" in capsys.readouterr().out


def test_another_missing_module_is_not_hidden(monkeypatch):
    def broken(subparsers):
        raise ModuleNotFoundError("No module named 'comfyui_zimage_gguf.cli.gone'", name="comfyui_zimage_gguf.cli.gone")

    monkeypatch.setattr(cli_main, "add_bench_parser", broken)
    with pytest.raises(ModuleNotFoundError):
        cli_main.main(["bench"])
