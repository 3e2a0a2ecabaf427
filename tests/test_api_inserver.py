"""The in-server backend's preview tee, without ComfyUI: ComfyUI's execution thread calls
`PromptServer.send_sync(event, data, client_id)`; previews for an API job reach that job's queue."""
from __future__ import annotations

import asyncio
import threading

from comfyui_zimage_gguf.api.backend import Job
from comfyui_zimage_gguf.api.inserver import InServerBackend

UNENCODED_PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 2, 4  # ComfyUI's BinaryEventTypes


class FakePromptServer:
    def __init__(self):
        self.sent = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, sid))


def test_previews_of_an_api_job_reach_its_queue_with_their_step_and_still_go_out():
    async def scenario():
        server = FakePromptServer()
        backend = InServerBackend(server)
        job = Job("p1", "client-1", {}, previews=asyncio.Queue())
        backend._install_preview_tee()
        backend._preview_jobs[job.client_id] = (job, asyncio.get_running_loop())
        image_a, image_b = object(), object()

        def execution_thread():  # what ComfyUI's progress hook sends, from its worker thread
            server.send_sync("progress", {"value": 3, "max": 8, "prompt_id": "p1"}, "client-1")
            server.send_sync(UNENCODED_PREVIEW_IMAGE, ("JPEG", image_a, 512), "client-1")
            server.send_sync("progress", {"value": 4, "max": 8, "prompt_id": "p1"}, "client-1")
            server.send_sync(PREVIEW_IMAGE_WITH_METADATA, (("JPEG", image_b, 512), {"node_id": "8"}), "client-1")
            server.send_sync(UNENCODED_PREVIEW_IMAGE, ("JPEG", object(), 512), "someone-else")

        thread = threading.Thread(target=execution_thread)
        thread.start()
        thread.join()
        first = await asyncio.wait_for(job.previews.get(), 5)
        second = await asyncio.wait_for(job.previews.get(), 5)
        assert (first.step, first.total, first.image) == (3, 8, image_a)
        assert (second.step, second.total, second.image) == (4, 8, image_b)
        assert job.previews.empty()  # another client's preview is not ours
        assert len(server.sent) == 5  # every message still reaches ComfyUI's own sender
        await backend.release(job)
        assert "client-1" not in backend._preview_jobs and "client-1" not in backend._preview_steps

    asyncio.run(scenario())
