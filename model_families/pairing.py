"""The one table of which diffusion model takes which text encoder, and the messages when a pair is wrong.

Pure data and string building: no ComfyUI, no torch. Widths are read from ComfyUI 0.18.1
(`comfy/text_encoders/llama.py` configs, `comfy/model_detection.py` caption/context widths).
A diffusion model is keyed by the family that detection (`diffusion.py`) gives it: one spelling.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import IncompatibleModelError
from . import TEXT_ENCODER_FOLDER, TEXT_ENCODER_LOADER

FIRST_LINE_LIMIT = 120  # the editor's toast shows the error type and the message's first line


@dataclass(frozen=True)
class KnownEncoder:
    display: str  # what users call it: "Qwen3-4B"
    family: str  # ComfyUI's structural family: "qwen3", "qwen25", "llama", "gemma2"
    width: int  # hidden size = width of the hidden states handed to the diffusion model
    comfy_name: str  # ComfyUI's key for it (TEModel / embedding_key): "qwen3_4b"
    comfy_config: str  # its config dataclass in comfy.text_encoders.llama
    head_dim: int  # a class constant of that dataclass: a file with another head_dim cannot be built from it
    files: tuple[str, ...]  # what a user loads: ComfyUI's own file name where known, a GGUF name pattern
    download: str = ""  # where to get it


KNOWN_ENCODERS: tuple[KnownEncoder, ...] = (
    KnownEncoder("Qwen3-0.6B", "qwen3", 1024, "qwen3_06b", "Qwen3_06BConfig", 128, ("a Qwen3-0.6B GGUF",)),
    KnownEncoder("Qwen3-1.7B", "qwen3", 2048, "qwen3_2b", "Ovis25_2BConfig", 128, ("a Qwen3-1.7B GGUF",)),
    KnownEncoder(
        "Qwen3-4B", "qwen3", 2560, "qwen3_4b", "Qwen3_4BConfig", 128,
        ("Qwen3-4B-Instruct-2507-Q8_0.gguf (or another quant of it)", "qwen_3_4b.safetensors"),
        download="https://huggingface.co/unsloth/Qwen3-4B-Instruct-2507-GGUF",
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
    """A diffusion-model family and the text encoder(s) it takes.

    `encoders` are KnownEncoder.display names (checked by width and family at sampling time);
    `encoder_text` describes what a model takes when it is not one llama-style encoder (T5, CLIP):
    those pairs are not checked, only named. `clip_type` is the text-encoder loader's `type`.
    """

    family: str  # detection family (diffusion.py's DiffusionSignature.family)
    display: str
    clip_type: str | None = None
    encoders: tuple[str, ...] = ()
    encoder_text: str | None = None
    stacked_layers: int = 1  # hidden states of this many encoder layers are concatenated (FLUX.2 takes 3)
    width_field: str = ""  # where ComfyUI reads the caption width from the model file

    @property
    def takes(self) -> str | None:
        """'Qwen3-4B' / 'T5-XXL + CLIP-L': what to tell a user the model takes."""
        return " or ".join(self.encoders) if self.encoders else self.encoder_text


_CAP = "cap_feat_dim (cap_embedder.1.weight)"
_TXT_IN = "context_in_dim (txt_in.weight)"

PAIRINGS: tuple[DiffusionModel, ...] = (
    DiffusionModel("zimage", "Z-Image", "lumina2", ("Qwen3-4B",), width_field=_CAP),
    DiffusionModel("zimage_pixel", "Z-Image (pixel space)", "lumina2", ("Qwen3-4B",), width_field=_CAP),
    DiffusionModel("lumina2", "Lumina Image 2.0", "lumina2", ("Gemma-2-2B",), width_field=_CAP),
    DiffusionModel("qwen_image", "Qwen-Image", "qwen_image", ("Qwen2.5-VL-7B",),
                   width_field="joint_attention_dim (txt_in.weight)"),
    DiffusionModel("flux2", "FLUX.2", "flux2", ("Qwen3-4B", "Qwen3-8B", "Mistral-Small-3.2-24B"), stacked_layers=3,
                   width_field=_TXT_IN),
    DiffusionModel("hunyuan_video", "HunyuanVideo", encoder_text="LLaVA-LLaMA-3-8B + CLIP-L"),
    DiffusionModel("chroma", "Chroma", "chroma", encoder_text="T5-XXL"),
    DiffusionModel("flux", "FLUX.1", encoder_text="T5-XXL + CLIP-L"),
    DiffusionModel("sd3", "Stable Diffusion 3", "sd3", encoder_text="CLIP-L + CLIP-G + T5-XXL"),
    DiffusionModel("wan", "Wan", "wan", encoder_text="umT5-XXL"),
    DiffusionModel("hidream", "HiDream-I1", "hidream", encoder_text="Llama-3.1-8B + T5-XXL + CLIP-L + CLIP-G"),
    DiffusionModel("pixart", "PixArt", "pixart", encoder_text="T5-XXL"),
    DiffusionModel("ltxv", "LTX-Video", "ltxv", encoder_text="T5-XXL"),
    DiffusionModel("cosmos", "Cosmos", "cosmos", encoder_text="T5-XXL"),
    DiffusionModel("aura_flow", "AuraFlow", encoder_text="Pile-T5-XL"),
    DiffusionModel("sdxl", "Stable Diffusion XL", "stable_diffusion", encoder_text="CLIP-L + CLIP-G"),
    DiffusionModel("sd1", "Stable Diffusion 1.x", "stable_diffusion", encoder_text="CLIP-L"),
    DiffusionModel("sd2", "Stable Diffusion 2.x", "stable_diffusion", encoder_text="OpenCLIP-H"),
)

DIFFUSION_MODELS: dict[str, DiffusionModel] = {m.family: m for m in PAIRINGS}


def _clip_type_encoders() -> dict[str, tuple[str, ...]]:
    table: dict[str, list[str]] = {}
    for model in PAIRINGS:
        if model.clip_type and model.encoders:
            names = table.setdefault(model.clip_type, [])
            names += [e for e in model.encoders if e not in names]
    return {clip_type: tuple(names) for clip_type, names in table.items()}


# Which encoders a CLIP type's models were trained with, for the types whose models take one
# llama-style encoder (derived from PAIRINGS); other types are not checked.
CLIP_TYPE_ENCODERS: dict[str, tuple[str, ...]] = _clip_type_encoders()


def models_for_clip_type(clip_type: str) -> list[DiffusionModel]:
    return [m for m in PAIRINGS if m.clip_type == clip_type and m.encoders]


def models_taking(encoder_display: str) -> list[DiffusionModel]:
    """The diffusion models (one per display name) trained with this encoder."""
    seen, out = set(), []
    for m in PAIRINGS:
        if encoder_display in m.encoders and m.display not in seen and m.family != "zimage_pixel":
            seen.add(m.display)
            out.append(m)
    return out


def caption_encoder(family: str) -> str | None:
    model = DIFFUSION_MODELS.get(family)
    return model.takes if model else None


def encoders_of_width(width: int, family: str | None = None) -> list[KnownEncoder]:
    return [e for e in KNOWN_ENCODERS if e.width == width and (family is None or e.family == family)]


def describe_width(width: int, family: str | None = None) -> str:
    """'Qwen3-8B' / 'Qwen3-8B or Llama-3.1-8B' / 'an unknown gemma3 model' for a hidden size."""
    names = [e.display for e in encoders_of_width(width, family)]
    if names:
        return " or ".join(names)
    return f"an unknown {family} model" if family else "an unknown model"


def first_line(*candidates: str) -> str:
    """The first candidate that fits FIRST_LINE_LIMIT (the last one when none does)."""
    for text in candidates:
        if len(text) <= FIRST_LINE_LIMIT:
            return text
    return candidates[-1]


def _encoder_width_needed(model, caption_width: int) -> tuple[int, int | None]:
    """How many encoder layers the model stacks into its caption input, and the encoder width that
    gives `caption_width` (None when it is not a multiple)."""
    stacked = model.stacked_layers if model else 1
    return stacked, (caption_width // stacked if caption_width % stacked == 0 else None)


def _mismatch_details(encoder_name: str, encoder_width: int, found: str, model_name: str, model, display: str,
                      expected_width: int, expected) -> list[str]:
    """The lines under a mismatch's first line: both files, the widths, what to download."""
    stacked, needed_width = _encoder_width_needed(model, expected_width)
    details = [f"Text encoder: {encoder_name} ({found}, {encoder_width} wide)."]
    where = f", read from {model.width_field}" if model and model.width_field else ""
    model_line = f"Diffusion model: {model_name} ({display}, caption width {expected_width}{where})."
    if stacked > 1:
        model_line += (f" {display} concatenates {stacked} layers of its encoder: "
                       + (f"caption width {expected_width} = {stacked} x {needed_width}." if needed_width else
                          f"yet {expected_width} is not a multiple of {stacked}."))
    details.append(model_line)
    if expected:
        where_from = f" from {expected.download}" if expected.download else ""
        details.append(
            f"Download {' or '.join(expected.files)}{where_from} into {TEXT_ENCODER_FOLDER}, and pick it in "
            f"'{TEXT_ENCODER_LOADER}' with type '{model.clip_type}'.")
    elif model and model.encoders:
        known = ", ".join(f"{d} ({ENCODERS_BY_DISPLAY[d].width * stacked})" for d in model.encoders)
        details.append(f"The {display} text encoders known here give caption widths: {known}.")
    else:
        details.append(f"Text encoders {expected_width} wide: {describe_width(expected_width)}.")
    return details


def check_encoder_matches_model(
    encoder_name: str,
    encoder_width: int,
    model_name: str,
    model_family: str,
    expected_width: int,
    encoder_family: str | None = None,
    encoder_display: str | None = None,
    model_display: str | None = None,
) -> KnownEncoder | None:
    """Raise IncompatibleModelError unless the encoder's hidden states fit the diffusion model's caption input.

    `encoder_name`/`model_name` are the files (named in the message), `encoder_width` the encoder's
    hidden size, `expected_width` the caption width read from the diffusion model file and
    `model_family` the detection family (one not in DIFFUSION_MODELS is checked by width alone,
    and named `model_display`). When `encoder_family` is given, a same-width encoder of another
    family is refused as well; `encoder_display` names the encoder when the loader knew it.
    Returns the known encoder the model expects, or None when the table has none of that width.
    """
    model = DIFFUSION_MODELS.get(model_family)
    _, needed_width = _encoder_width_needed(model, expected_width)
    display = model.display if model else (model_display or model_family)
    expected = None
    if model and needed_width:
        expected = next((ENCODERS_BY_DISPLAY[d] for d in model.encoders if ENCODERS_BY_DISPLAY[d].width == needed_width), None)

    width_ok = encoder_width == needed_width
    family_ok = encoder_family is None or expected is None or encoder_family == expected.family
    if width_ok and family_ok:
        return expected

    found = encoder_display or describe_width(encoder_width, encoder_family)
    if expected:
        if width_ok:  # same width, another model
            head = (f"{display} takes {expected.display}, but {{enc}} is {found} of the same width: "
                    f"load a {expected.display} text encoder.")
        else:
            head = (f"{display} takes {expected.display}, {needed_width} wide, but {{enc}} is {encoder_width} wide: "
                    f"load a {expected.display} text encoder.")
        message = first_line(head.format(enc=encoder_name), head.format(enc="the text encoder"))
    elif model and model.encoders:
        message = first_line(
            f"{model_name} has caption width {expected_width}, which no {display} text encoder gives: "
            "check that it is the diffusion model you meant.",
            f"This {display} file has caption width {expected_width}, which no known text encoder gives: check the file.")
    else:
        head = (f"{display} takes a text encoder {expected_width} wide, but {{enc}} is {encoder_width} wide: "
                f"load one {expected_width} wide.")
        message = first_line(head.format(enc=encoder_name), head.format(enc="the text encoder"))

    details = _mismatch_details(encoder_name, encoder_width, found, model_name, model, display, expected_width,
                                expected)
    raise IncompatibleModelError("\n".join([message] + details))


def check_clip_type(file_name: str, clip_type: str, encoder: KnownEncoder) -> None:
    """Refuse an encoder the CLIP type's models were not trained with, at load, naming what to do."""
    expected = CLIP_TYPE_ENCODERS.get(clip_type)
    if not expected or encoder.display in expected:
        return
    models = models_for_clip_type(clip_type)
    main = models[0]  # the first row of a type is the model the pack is for (lumina2: Z-Image)
    better = [m for m in PAIRINGS if m.clip_type and encoder.display in m.encoders]
    head = (f"Type '{clip_type}' is for {main.display}, which takes {main.takes}; {{enc}} is {encoder.display}: "
            f"load a {main.encoders[0]} text encoder.")
    details = [
        f"Text encoder: {file_name} ({encoder.display}, {encoder.width} wide).",
        f"Type '{clip_type}' serves: " + "; ".join(f"{m.display} ({m.takes})" for m in models) + ".",
    ]
    if better:
        details.append(f"For {better[0].display} with this encoder, pick type '{better[0].clip_type}'.")
    first = ENCODERS_BY_DISPLAY[main.encoders[0]]
    details.append(f"Download {' or '.join(first.files)}"
                   + (f" from {first.download}" if first.download else "") + f" into {TEXT_ENCODER_FOLDER}.")
    raise IncompatibleModelError("\n".join(
        [first_line(head.format(enc=file_name), head.format(enc="this file"))] + details))
