"""The `queue` command against bad inputs and a scripted stand-in for the ComfyUI HTTP API on 127.0.0.1."""
from __future__ import annotations

import argparse
import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from comfyui_zimage_gguf.cli.queue import add_queue_parser, run_queue

API_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "z_image_turbo_gguf_api.json"
UI_WORKFLOW = API_WORKFLOW.parents[1] / "Z-Image Turbo GGUF - text to image.json"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_queue_parser(parser.add_subparsers(dest="command", required=True))
    return run_queue(parser.parse_args(["queue", *argv]))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeComfy:
    """Answers /object_info, /prompt, /queue, /history and /view the way ComfyUI does, from a script."""

    def __init__(self, known_types, history_after_polls=1):
        self.known_types = set(known_types)
        self.prompt_status = 200
        self.prompt_body = {"prompt_id": "p-1", "number": 0, "node_errors": {}}
        self.history_entry = {
            "outputs": {"10": {"images": [{"filename": "zimg_00001_.png", "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        self.history_after_polls = history_after_polls
        self.history_polls = 0
        self.posted_prompts: list[dict] = []
        self.view_queries: list[dict] = []

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        url = urllib.parse.urlsplit(path)
        if method == "GET" and url.path.startswith("/object_info/"):
            name = urllib.parse.unquote(url.path.removeprefix("/object_info/"))
            return self._json({name: {"name": name}} if name in self.known_types else {})
        if method == "POST" and url.path == "/prompt":
            self.posted_prompts.append(json.loads(body)["prompt"])
            return self._json(self.prompt_body, self.prompt_status)
        if method == "GET" and url.path == "/queue":
            running = [[0, "p-1", {}, {}, []]] if self.history_polls < self.history_after_polls else []
            return self._json({"queue_running": running, "queue_pending": []})
        if method == "GET" and url.path == "/history/p-1":
            self.history_polls += 1
            done = self.history_entry is not None and self.history_polls > self.history_after_polls
            return self._json({"p-1": self.history_entry} if done else {})
        if method == "GET" and url.path == "/view":
            self.view_queries.append(dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)))
            return 200, "image/png", PNG_BYTES
        return 404, "text/plain", b"404: Not Found"

    @staticmethod
    def _json(data, status=200):
        return status, "application/json", json.dumps(data).encode()


@pytest.fixture
def fake_server():
    servers = []

    def start(script: FakeComfy) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                status, content_type, payload = script.handle(method, self.path, self.rfile.read(length))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def workflow_types() -> set[str]:
    return {node["class_type"] for node in json.loads(API_WORKFLOW.read_text()).values()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: ")
    return err


def test_missing_file(tmp_path, capsys):
    assert run_cli([str(tmp_path / "nope.json")]) == 1
    assert one_line_error(capsys) == f"error: {tmp_path / 'nope.json'}: no such file"


def test_file_that_is_not_json(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"3": {"class_type": ')
    assert run_cli([str(path)]) == 1
    assert one_line_error(capsys).startswith(f"error: {path}: not JSON")


def test_binary_file(tmp_path, capsys):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xfe\x00")
    assert run_cli([str(path)]) == 1
    assert one_line_error(capsys) == f"error: {path}: not JSON (not UTF-8 text)"


def test_ui_format_file_names_the_fix(capsys):
    assert run_cli([str(UI_WORKFLOW), "--server", f"http://127.0.0.1:{closed_port()}"]) == 1
    assert one_line_error(capsys) == (
        f"error: {UI_WORKFLOW}: this is a UI-format workflow; use the *_api.json file or export it with File → Export (API)"
    )


def test_json_that_is_no_workflow(tmp_path, capsys):
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    assert run_cli([str(path)]) == 1
    assert "not an API-format workflow" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("option", "value", "missing"),
    [
        ("--seed", "5", "KSampler"),
        ("--steps", "2", "KSampler"),
        ("--width", "64", "EmptySD3LatentImage or EmptyLatentImage"),
        ("--prompt", "a cat", "CLIPTextEncode feeding a sampler's positive input"),
        ("--unet", "z.gguf", "ZImageGGUFDiffusionModelLoader or UNETLoader or UnetLoaderGGUF"),
        ("--clip", "q.gguf", "ZImageGGUFTextEncoderLoader or CLIPLoader or CLIPLoaderGGUF"),
    ],
)
def test_override_without_its_node_is_refused(tmp_path, capsys, option, value, missing):
    path = tmp_path / "vae_only_api.json"
    path.write_text(json.dumps({"1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}}))
    assert run_cli([str(path), option, value, "--server", f"http://127.0.0.1:{closed_port()}"]) == 1
    assert one_line_error(capsys) == f"error: the workflow has no {missing} to apply {option} to"


def test_unreachable_server(capsys):
    port = closed_port()
    assert run_cli([str(API_WORKFLOW), "--server", f"http://127.0.0.1:{port}"]) == 1
    assert one_line_error(capsys).startswith(f"error: cannot reach ComfyUI at http://127.0.0.1:{port}: ")


def node_id_of(workflow: dict, class_type: str) -> str:
    (node_id,) = [key for key, node in workflow.items() if node["class_type"] == class_type]
    return node_id


def test_success_applies_overrides_by_node_type_and_saves_the_image(fake_server, tmp_path, capsys):
    script = FakeComfy(workflow_types(), history_after_polls=2)
    url = fake_server(script)
    out = tmp_path / "out.png"
    argv = [str(API_WORKFLOW), "--server", url, "--prompt", "a red fox in snow", "--seed", "123",
            "--width", "64", "--height", "96", "--steps", "2", "--out", str(out), "--poll-interval", "0.01",
            "--unet", "z_image_turbo-Q4_K_M.gguf", "--clip", "Qwen3-4B-Q6_K.gguf", "--vae", "other_ae.safetensors"]
    assert run_cli(argv) == 0

    assert out.read_bytes() == PNG_BYTES
    assert script.view_queries == [{"filename": "zimg_00001_.png", "subfolder": "", "type": "output"}]
    (sent,) = script.posted_prompts
    original = json.loads(API_WORKFLOW.read_text())
    changed = {
        (node_id, name): value
        for node_id, node in sent.items()
        for name, value in node["inputs"].items()
        if original[node_id]["inputs"][name] != value
    }
    sampler_id = next(key for key, node in original.items() if node["class_type"] == "KSampler")
    latent_id = next(key for key, node in original.items() if node["class_type"] == "EmptySD3LatentImage")
    positive_id = original[sampler_id]["inputs"]["positive"][0]
    assert changed == {
        (positive_id, "text"): "a red fox in snow",
        (sampler_id, "seed"): 123,
        (sampler_id, "steps"): 2,
        (latent_id, "width"): 64,
        (latent_id, "height"): 96,
        (node_id_of(original, "ZImageGGUFDiffusionModelLoader"), "unet_name"): "z_image_turbo-Q4_K_M.gguf",
        (node_id_of(original, "ZImageGGUFTextEncoderLoader"), "clip_name"): "Qwen3-4B-Q6_K.gguf",
        (node_id_of(original, "VAELoader"), "vae_name"): "other_ae.safetensors",
    }
    stdout = capsys.readouterr().out
    assert "queued prompt p-1" in stdout
    assert "running" in stdout
    assert f"saved {out}" in stdout


def test_missing_node_type_on_the_server_stops_before_queueing(fake_server, capsys):
    script = FakeComfy(workflow_types() - {"ZImageGGUFTextEncoderLoader"})
    assert run_cli([str(API_WORKFLOW), "--server", fake_server(script)]) == 1
    error = one_line_error(capsys)
    assert "has no node type ZImageGGUFTextEncoderLoader" in error
    assert script.posted_prompts == []


def test_rejected_workflow_shows_the_node_errors(fake_server, capsys):
    script = FakeComfy(workflow_types())
    script.prompt_status = 400
    script.prompt_body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"1": {"class_type": "ZImageGGUFDiffusionModelLoader", "dependent_outputs": ["10"], "errors": [
            {"type": "value_not_in_list", "message": "Value not in list",
             "details": "unet_name: 'z_image_turbo-Q8_0.gguf' not in []", "extra_info": {}}]}},
    }
    assert run_cli([str(API_WORKFLOW), "--server", fake_server(script)]) == 1
    assert one_line_error(capsys) == (
        "error: ComfyUI rejected the workflow: Prompt outputs failed validation; node 1 "
        "(ZImageGGUFDiffusionModelLoader): Value not in list (unet_name: 'z_image_turbo-Q8_0.gguf' not in [])"
    )


def test_failed_run_shows_the_exception_message(fake_server, capsys):
    script = FakeComfy(workflow_types())
    script.history_entry = {
        "outputs": {},
        "status": {"status_str": "error", "completed": False, "messages": [
            ["execution_start", {"prompt_id": "p-1"}],
            ["execution_error", {"prompt_id": "p-1", "node_id": "2", "node_type": "ZImageGGUFTextEncoderLoader",
                                 "exception_type": "/opt/ComfyUI/custom_nodes/comfyui_zimage_gguf.errors.IncompatibleModelError",
                                 "exception_message": "enc.gguf: width 1024, the model expects 2560\n",
                                 "traceback": ["..."]}],
        ]},
    }
    assert run_cli([str(API_WORKFLOW), "--server", fake_server(script), "--poll-interval", "0.01"]) == 1
    assert one_line_error(capsys) == (
        "error: ComfyUI failed to run the workflow: node 2 (ZImageGGUFTextEncoderLoader) failed: "
        "IncompatibleModelError: enc.gguf: width 1024, the model expects 2560"
    )


def test_gives_up_after_the_timeout(fake_server, capsys):
    script = FakeComfy(workflow_types())
    script.history_entry = None
    argv = [str(API_WORKFLOW), "--server", fake_server(script), "--timeout", "0.2", "--poll-interval", "0.02"]
    assert run_cli(argv) == 1
    assert one_line_error(capsys) == (
        "error: gave up after 0.2s waiting for prompt p-1; it may still be running on the server"
    )


def test_done_in_counts_from_the_queueing_not_from_the_last_poll(fake_server, capsys):
    import time

    from comfyui_zimage_gguf.cli.queue import ComfyClient, wait_for_outputs

    client = ComfyClient(fake_server(FakeComfy(workflow_types(), history_after_polls=0)))
    queued_at = time.monotonic() - 136.0  # the websocket followed the run for 136 s before the history poll
    wait_for_outputs(client, "p-1", timeout_s=600, poll_interval_s=0.01, start=queued_at)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done in")]
    assert 136.0 <= float(line.removeprefix("done in ").removesuffix("s")) < 200


# --- the saved file: named by the server only through its base name, never over an existing file ---

def run_in(tmp_path, monkeypatch, url, *extra):
    monkeypatch.chdir(tmp_path)
    return run_cli([str(API_WORKFLOW), "--server", url, "--poll-interval", "0.01", *extra])


def test_server_file_name_is_reduced_to_its_base_name(fake_server, tmp_path, monkeypatch, capsys):
    script = FakeComfy(workflow_types())
    script.history_entry["outputs"]["10"]["images"][0]["filename"] = "../../sub/zimg_00001_.png"
    (tmp_path / "work").mkdir()
    assert run_in(tmp_path / "work", monkeypatch, fake_server(script)) == 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["zimg_00001_.png"]
    assert (tmp_path / "work" / "zimg_00001_.png").read_bytes() == PNG_BYTES


@pytest.mark.parametrize("name", ["../../.bashrc", ".bashrc", "notes.txt", "..\\..\\evil.sh", "x.png/"])
def test_server_file_name_without_an_image_extension_is_refused(fake_server, tmp_path, monkeypatch, capsys, name):
    # before: `../../.bashrc` from the server overwrote ./.bashrc
    (tmp_path / ".bashrc").write_bytes(b"mine")
    script = FakeComfy(workflow_types())
    script.history_entry["outputs"]["10"]["images"][0]["filename"] = name
    assert run_in(tmp_path, monkeypatch, fake_server(script)) == 1
    assert "which is no plain image file name" in one_line_error(capsys)
    assert (tmp_path / ".bashrc").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bashrc"]


def test_existing_image_is_kept_and_the_new_one_numbered_unless_overwrite(fake_server, tmp_path, monkeypatch, capsys):
    (tmp_path / "zimg_00001_.png").write_bytes(b"earlier")
    url = fake_server(FakeComfy(workflow_types()))
    assert run_in(tmp_path, monkeypatch, url) == 0
    assert f"saved zimg_00001__00001.png" in capsys.readouterr().out
    assert (tmp_path / "zimg_00001_.png").read_bytes() == b"earlier"
    assert (tmp_path / "zimg_00001__00001.png").read_bytes() == PNG_BYTES
    assert run_in(tmp_path, monkeypatch, url, "--out", "zimg_00001_.png", "--overwrite") == 0
    assert (tmp_path / "zimg_00001_.png").read_bytes() == PNG_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zimg_00001_.png", "zimg_00001__00001.png"]


def test_unwritable_output_folder_is_one_line(fake_server, tmp_path, capsys):
    url = fake_server(FakeComfy(workflow_types()))
    out = tmp_path / "missing" / "o.png"
    assert run_cli([str(API_WORKFLOW), "--server", url, "--poll-interval", "0.01", "--out", str(out)]) == 1
    assert one_line_error(capsys) == f"error: cannot write {out}: the folder {out.parent} does not exist"
