"""The standalone bridge: routing over several ComfyUI servers, and the `serve` command's refusals."""
from __future__ import annotations

import base64
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers.api_client import call, generate, start_api, start_fake
from helpers.fake_comfyui import expected_colour
from helpers.png import solid_png_colour

from comfyui_zimage_gguf.api.bridge import is_loopback_host
from comfyui_zimage_gguf.cli.main import main


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_each_request_goes_to_the_server_with_the_shortest_queue():
    busy, idle = start_fake(name="busy"), start_fake(name="idle")
    api = start_api([busy.url, idle.url])
    try:
        busy.occupy(run_seconds=3)
        busy.occupy(run_seconds=3)
        assert generate(api.url, prompt="p", size="64x64")[0] == 200
        assert (len(busy.received), len(idle.received)) == (0, 1)
    finally:
        api.stop()
        busy.thread.stop()
        idle.thread.stop()


def test_simultaneous_requests_spread_over_idle_servers():
    first, second = start_fake(run_seconds=0.5, name="a"), start_fake(run_seconds=0.5, name="b")
    api = start_api([first.url, second.url])
    try:
        threads = [threading.Thread(target=generate, args=(api.url,), kwargs={"prompt": f"{i}", "size": "64x64"})
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(first.received), len(second.received)) == (2, 2)
    finally:
        api.stop()
        first.thread.stop()
        second.thread.stop()


def test_a_server_that_dies_mid_run_is_skipped_and_its_job_runs_elsewhere(caplog):
    dying, survivor = start_fake(run_seconds=5, name="dying"), start_fake(name="survivor")
    api = start_api([dying.url, survivor.url])
    survivor.occupy(run_seconds=1)  # so the first request prefers the other server
    answers = {}
    try:
        with caplog.at_level(logging.INFO, logger="comfyui_zimage_gguf.api"):
            thread = threading.Thread(
                target=lambda: answers.setdefault("in_flight", generate(api.url, prompt="moved", seed=3, size="64x64"))
            )
            thread.start()
            wait_until(lambda: dying.running is not None and dying.running[2])
            dying_port = dying.thread.port
            dying.thread.stop()
            thread.join(30)
            status, _, answer = answers["in_flight"]
            assert status == 200, answer
            assert solid_png_colour(base64.b64decode(answer["data"][0]["b64_json"])) == expected_colour("moved", 3, 0)
            assert [w["5"]["inputs"]["text"] for w in survivor.received] == ["moved"]
            assert generate(api.url, prompt="after", size="64x64")[0] == 200
            assert [w["5"]["inputs"]["text"] for w in survivor.received] == ["moved", "after"]

            revived = start_fake(name="revived", port=dying_port)
            try:
                wait_until(lambda: api.backend.upstreams[0].alive)
                survivor.occupy(run_seconds=2)
                assert generate(api.url, prompt="back", size="64x64")[0] == 200
                assert [w["5"]["inputs"]["text"] for w in revived.received] == ["back"]
            finally:
                revived.thread.stop()
    finally:
        api.stop()
        survivor.thread.stop()
    log = caplog.text
    assert f"ComfyUI at {dying.url} does not answer" in log and "skipping it until it answers again" in log
    assert f"ComfyUI at {dying.url} answers again" in log


def test_no_answering_server_is_503_with_retry_after(caplog):
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="comfyui_zimage_gguf.api"):
        api = start_api([f"http://127.0.0.1:{port}"])
    try:
        status, headers, answer = generate(api.url, prompt="p", size="64x64")
        assert status == 503 and headers["Retry-After"] == "10"
        assert answer["error"]["code"] == "no_server"
        assert f"http://127.0.0.1:{port} does not answer" in caplog.text, "a warning at start, not a crash"
        late = start_fake(name="late", port=port)
        try:
            wait_until(lambda: api.backend.upstreams[0].alive)
            assert generate(api.url, prompt="p", size="64x64")[0] == 200
        finally:
            late.thread.stop()
    finally:
        api.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_serve(capsys, *args) -> tuple[int, str]:
    """The serve command in this process: (exit status, stderr)."""
    status = main(["serve", *args])
    return status, capsys.readouterr().err


def test_port_in_use_exits_with_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, stderr = run_serve(capsys, "--comfyui", "http://127.0.0.1:9", "--port", str(port))
    assert status == 1
    assert stderr == f"error: port {port} is in use; pick another with --port\n"


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_a_non_loopback_address_without_a_key(capsys, host, monkeypatch):
    monkeypatch.delenv("ZIMAGE_GGUF_API_KEY", raising=False)
    monkeypatch.delenv("ZIMAGE_GGUF_API_KEY_FILE", raising=False)
    status, stderr = run_serve(capsys, "--comfyui", "http://127.0.0.1:9", "--host", host, "--port", str(free_port()))
    assert status == 1
    assert stderr == (
        f"error: refusing to listen on {host} without an API key; set --api-key, --api-key-file or "
        "ZIMAGE_GGUF_API_KEY, or listen on 127.0.0.1\n"
    )


def test_missing_workflows_folder_is_one_line(capsys, tmp_path):
    status, stderr = run_serve(capsys, "--comfyui", "http://127.0.0.1:9", "--workflows", str(tmp_path / "nope"))
    assert (status, stderr) == (1, f"error: {tmp_path / 'nope'}: the workflows folder does not exist\n")


def test_loopback_detection():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("192.168.1.20")


def test_serve_command_answers_and_stops_cleanly(tmp_path):
    fake = start_fake()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "comfyui_zimage_gguf", "serve", "--comfyui", fake.url, "--port", str(port),
         "--api-key", "sk-cli-secret", "--workflows", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(lambda: _answers(port), timeout=30)
        assert call(f"http://127.0.0.1:{port}/v1/models")[0] == 401
        status, _, answer = generate(f"http://127.0.0.1:{port}", prompt="cli", size="64x64", key="sk-cli-secret")
        assert status == 200, answer
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        fake.thread.stop()
    assert process.returncode == 0
    assert f"listening on http://127.0.0.1:{port}/v1" in stderr
    assert "sk-cli-secret" not in stderr


def _answers(port: int) -> bool:
    try:
        return call(f"http://127.0.0.1:{port}/v1/models", timeout=2)[0] in (200, 401)
    except OSError:
        return False
