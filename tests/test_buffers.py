"""ops/runtime/buffers.py: the layers' reused CPU output buffers are reused, bounded, per thread, and their
memory goes back to the OS on release."""
import threading

import torch

from comfyui_zimage_gguf.ops.runtime.buffers import (
    DEQUANT_POOL, OUTPUT_BUFFERS, FreedBufferPool, OutputBuffers, release_output_buffers,
)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_one_buffer_per_dtype_is_reused_and_grows_to_the_largest_request():
    buffers = OutputBuffers()
    a = buffers.get((4, 8), torch.float16, "cpu")
    b = buffers.get((2, 8), torch.float16, "cpu")
    assert a.shape == (4, 8) and b.shape == (2, 8) and a.data_ptr() == b.data_ptr()
    assert buffers.get((4, 8), torch.float32, "cpu").data_ptr() != a.data_ptr()
    buffers.get((16, 8), torch.float16, "cpu")
    assert buffers.held_bytes() == 16 * 8 * 2 + 4 * 8 * 4


def test_requests_above_the_bound_and_off_the_cpu_get_no_buffer():
    buffers = OutputBuffers(max_bytes=1024)
    assert buffers.get((512,), torch.float16, "cpu") is not None
    assert buffers.get((513,), torch.float16, "cpu") is None
    assert buffers.get((4,), torch.float16, "meta") is None
    assert buffers.held_bytes() == 1024


def test_threads_get_their_own_buffers_and_release_drops_every_threads():
    buffers = OutputBuffers()
    mine = buffers.get((1024,), torch.float16, "cpu")
    theirs = []
    ready, done = threading.Event(), threading.Event()

    def other():
        theirs.append(buffers.get((1024,), torch.float16, "cpu").data_ptr())
        ready.set()
        done.wait()

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait()
    assert theirs[0] != mine.data_ptr() and buffers.held_bytes() == 2 * 2048
    buffers.release()  # from this thread, while the other is alive
    assert buffers.held_bytes() == 0
    done.set()
    thread.join()


def test_release_gives_the_memory_back():
    release_output_buffers()
    before = _rss_bytes()
    weight = OUTPUT_BUFFERS.get((64, 1 << 20), torch.float16, "cpu")  # 128 MiB
    weight.fill_(1.0)  # fault every page in
    del weight
    held = _rss_bytes()
    assert held - before > 100 << 20
    release_output_buffers("patcher", True)  # as ComfyUI's ON_DETACH callback calls it
    assert OUTPUT_BUFFERS.held_bytes() == 0
    assert held - _rss_bytes() > 100 << 20


def test_pool_reuses_a_map_only_once_nothing_holds_it():
    pool = FreedBufferPool(max_buffers=2)
    a = pool.empty((4, 8), torch.float32)
    a_ptr = a.data_ptr()
    view = a[1:]
    del a
    b = pool.empty((4, 8), torch.float32)  # a's view still holds the first map
    assert b.data_ptr() != a_ptr
    del view
    c = pool.empty((2, 8), torch.float16)
    assert c.data_ptr() == a_ptr and c.shape == (2, 8) and c.dtype == torch.float16
    assert pool.held_bytes() == 2 * 4 * 8 * 4


def test_pool_grows_a_free_map_and_gives_fresh_tensors_when_every_map_is_held_or_too_big():
    pool = FreedBufferPool(max_bytes=4096, max_buffers=1)
    small = pool.empty((16,), torch.float32)
    del small
    big = pool.empty((512,), torch.float32)  # replaces the free 64-byte map
    assert pool.held_bytes() == 2048
    extra = pool.empty((512,), torch.float32)  # the one map is held: a plain tensor
    assert extra.data_ptr() != big.data_ptr() and pool.held_bytes() == 2048
    assert pool.empty((2048,), torch.float32).numel() == 2048 and pool.held_bytes() == 2048
    release_output_buffers()
    pool.release()
    assert pool.held_bytes() == 0
    big.fill_(1.0)  # a held tensor outlives the release
    assert big.sum() == 512


def test_release_output_buffers_drops_the_pool_too():
    DEQUANT_POOL.empty((1024,), torch.float32)
    assert DEQUANT_POOL.held_bytes() > 0
    release_output_buffers()
    assert DEQUANT_POOL.held_bytes() == 0
