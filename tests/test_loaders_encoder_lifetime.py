"""A text encoder the loader wrapped (conditioning tag, progress bar) is freed as soon as its last
reference goes, without waiting for Python's cycle collector. Before, the wrappers stored a bound
method of the model in the model itself: a reference cycle that kept each swapped-out encoder alive
until the next full collection, and made ComfyUI log "Potential memory leak detected with model
ZImageTEModel_" on every encoder swap."""
import gc
import types
import weakref

import pytest
import torch
import torch.nn as nn

from comfyui_zimage_gguf.nodes.loaders import ENCODER_TAG, show_encode_progress, tag_encoder


class TextModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def encode_token_weights(self, token_weight_pairs):
        x = self.embed(torch.tensor(token_weight_pairs))
        for layer in self.layers:
            x = layer(x)
        return x, None, {}


class Bar:
    def __init__(self, total):
        self.steps = []

    def update_absolute(self, value, total):
        self.steps.append(value)


@pytest.fixture
def no_cycle_collector():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def loaded_encoder():
    clip = types.SimpleNamespace(cond_stage_model=TextModel())
    tag_encoder(clip, {"file": "qwen.gguf"})
    show_encode_progress(clip, progress_bar=Bar)
    return clip


def test_wrapped_encoder_still_encodes_and_tags():
    clip = loaded_encoder()
    with torch.inference_mode():
        out = clip.cond_stage_model.encode_token_weights([1, 2])
    assert out[2][ENCODER_TAG] == {"file": "qwen.gguf"} and out[0].shape == (2, 4)


def test_dropping_the_last_reference_frees_the_encoder_without_the_cycle_collector(no_cycle_collector):
    clip = loaded_encoder()
    with torch.inference_mode():
        clip.cond_stage_model.encode_token_weights([1, 2])
    model = weakref.ref(clip.cond_stage_model)
    del clip
    assert model() is None, gc.get_referrers(model())


def test_freed_heap_pages_are_returned_once_at_the_first_encode(monkeypatch, no_cycle_collector):
    from comfyui_zimage_gguf.nodes import loaders

    trims = []
    monkeypatch.setattr(loaders, "_malloc_trim", lambda: trims.append(1))
    clip = loaded_encoder()
    loaders.return_freed_memory_at_first_encode(clip)
    assert trims == []
    with torch.inference_mode():
        first = clip.cond_stage_model.encode_token_weights([1, 2])
        clip.cond_stage_model.encode_token_weights([3])
    assert trims == [1] and first[2][ENCODER_TAG] == {"file": "qwen.gguf"}
    model = weakref.ref(clip.cond_stage_model)
    del clip, first
    assert model() is None  # no cycle through this wrapper either (refcounting alone freed it)
