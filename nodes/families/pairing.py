"""Which text encoder a diffusion model needs, by caption width, and what to say when the pair is wrong.

Pure data and string building: no ComfyUI, no torch. Widths are read from ComfyUI 0.18.1
(`comfy/text_encoders/llama.py` configs, `comfy/model_detection.py` caption/context widths).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import IncompatibleModelError


@dataclass(frozen=True)
class KnownEncoder:
    display: str  # what users call it: "Qwen3-4B"
    family: str  # ComfyUI's structural family: "qwen3", "qwen25", "llama", "gemma2"
    width: int  # hidden size = width of the hidden states handed to the diffusion model
    comfy_name: str  # ComfyUI's key for it (TEModel / embedding_key): "qwen3_4b"
    comfy_config: str  # its config dataclass in comfy.text_encoders.llama
    head_dim: int  # a class constant of that dataclass: a file with another head_dim cannot be built from it
    files: tuple[str, ...]  # what a user loads: ComfyUI's own file name where known, a GGUF name pattern


KNOWN_ENCODERS: tuple[KnownEncoder, ...] = (
    KnownEncoder("Qwen3-0.6B", "qwen3", 1024, "qwen3_06b", "Qwen3_06BConfig", 128, ("a Qwen3-0.6B GGUF",)),
    KnownEncoder("Qwen3-1.7B (Ovis 2.5)", "qwen3", 2048, "qwen3_2b", "Ovis25_2BConfig", 128, ("a Qwen3-1.7B GGUF",)),
    KnownEncoder(
        "Qwen3-4B", "qwen3", 2560, "qwen3_4b", "Qwen3_4BConfig", 128,
        ("qwen_3_4b.safetensors", "a Qwen3-4B GGUF such as Qwen3-4B-Instruct-2507-Q4_K_M.gguf"),
    ),
    KnownEncoder("Qwen3-8B", "qwen3", 4096, "qwen3_8b", "Qwen3_8BConfig", 128, ("a Qwen3-8B GGUF such as Qwen3-8B-Q4_K_M.gguf",)),
    KnownEncoder("Qwen2.5-3B", "qwen25", 2048, "qwen25_3b", "Qwen25_3BConfig", 128, ("a Qwen2.5-3B GGUF",)),
    KnownEncoder(
        "Qwen2.5-VL-7B", "qwen25", 3584, "qwen25_7b", "Qwen25_7BVLI_Config", 128,
        ("qwen_2.5_vl_7b_fp8_scaled.safetensors", "a Qwen2.5-VL-7B-Instruct GGUF"),
    ),
    KnownEncoder("Llama-3.1-8B", "llama", 4096, "llama", "Llama2Config", 128, ("a Llama-3.1-8B-Instruct GGUF",)),
    KnownEncoder(
        "Mistral-Small-3.2-24B", "llama", 5120, "mistral3_24b", "Mistral3Small24BConfig", 128,
        ("a Mistral-Small-3.2-24B GGUF",),
    ),
    KnownEncoder("Gemma-2-2B", "gemma2", 2304, "gemma2_2b", "Gemma2_2B_Config", 256, ("a Gemma-2-2B safetensors file",)),
)

ENCODERS_BY_DISPLAY = {e.display: e for e in KNOWN_ENCODERS}


@dataclass(frozen=True)
class DiffusionModel:
    display: str
    width_field: str  # where ComfyUI reads the caption width from the model file
    encoders: tuple[str, ...]  # KnownEncoder.display of each encoder a variant of it was trained with
    stacked_layers: int = 1  # hidden states of this many encoder layers are concatenated (Flux.2 takes 3)


DIFFUSION_MODELS: dict[str, DiffusionModel] = {
    "z_image": DiffusionModel("Z-Image", "cap_feat_dim (cap_embedder.1.weight)", ("Qwen3-4B",)),
    "lumina2": DiffusionModel("Lumina 2", "cap_feat_dim (cap_embedder.1.weight)", ("Gemma-2-2B",)),
    "qwen_image": DiffusionModel("Qwen-Image", "joint_attention_dim (txt_in.weight)", ("Qwen2.5-VL-7B",)),
    "flux2": DiffusionModel(
        "Flux.2", "context_in_dim (txt_in.weight)", ("Qwen3-4B", "Qwen3-8B", "Mistral-Small-3.2-24B"), stacked_layers=3
    ),
}


def encoders_of_width(width: int, family: str | None = None) -> list[KnownEncoder]:
    return [e for e in KNOWN_ENCODERS if e.width == width and (family is None or e.family == family)]


def describe_width(width: int, family: str | None = None) -> str:
    """'Qwen3-8B' / 'Qwen3-8B or Llama-3.1-8B' / 'an unknown gemma3 model' for a hidden size."""
    names = [e.display for e in encoders_of_width(width, family)]
    if names:
        return " or ".join(names)
    return f"an unknown {family} model" if family else "an unknown model"


def check_encoder_matches_model(
    encoder_name: str,
    encoder_width: int,
    model_name: str,
    model_family: str,
    expected_width: int,
    encoder_family: str | None = None,
) -> KnownEncoder | None:
    """Raise IncompatibleModelError unless the encoder's hidden states fit the diffusion model's caption input.

    `encoder_name`/`model_name` are the files (named in the message), `encoder_width` the encoder's
    hidden size, `expected_width` the caption width read from the diffusion model file and
    `model_family` a DIFFUSION_MODELS key (an unknown family is checked by width alone). When
    `encoder_family` is given, a same-width encoder of another family is refused as well.
    Returns the known encoder the model expects, or None when the table has none of that width.
    """
    model = DIFFUSION_MODELS.get(model_family)
    stacked = model.stacked_layers if model else 1
    model_display = model.display if model else model_family
    needed_width = expected_width // stacked if expected_width % stacked == 0 else None
    expected = None
    if model and needed_width:
        expected = next((ENCODERS_BY_DISPLAY[d] for d in model.encoders if ENCODERS_BY_DISPLAY[d].width == needed_width), None)

    width_ok = encoder_width == needed_width
    family_ok = encoder_family is None or expected is None or encoder_family == expected.family
    if width_ok and family_ok:
        return expected

    if needed_width is None:
        wanted = f"{stacked} concatenated encoder layers, yet its caption width {expected_width} is not a multiple of {stacked}"
    else:
        wanted = f"{expected.display}, {needed_width} wide" if expected else f"a text encoder {needed_width} wide"
        if stacked > 1:
            wanted += f" ({model_display} concatenates {stacked} of its layers: caption width {expected_width} = {stacked} x {needed_width})"
    found = f"{describe_width(encoder_width, encoder_family)}, {encoder_width} wide"
    if expected:
        remedy = f"Load {' or '.join(expected.files)} instead."
    elif model:
        known = ", ".join(f"{d} ({ENCODERS_BY_DISPLAY[d].width * stacked})" for d in model.encoders)
        remedy = (
            f"No known encoder gives caption width {expected_width}; the {model_display} variants known here take: {known}. "
            "Check that the diffusion model file is what you think it is."
        )
    else:
        remedy = f"Load a text encoder whose hidden size is {expected_width} ({describe_width(expected_width)})."
    raise IncompatibleModelError(
        f"Text encoder {encoder_name} does not fit diffusion model {model_name}: "
        f"{model_display} expects {wanted}; this encoder is {found}. {remedy}"
    )
