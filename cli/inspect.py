"""`python -m comfyui_zimage_gguf inspect FILE...`: what a model file holds, in a user's words (no ComfyUI).

For each GGUF: the model (and who made the file: this pack, city96's tool, stable-diffusion.cpp),
its quant mix, its size, which node (and `type`) loads it and from which folder, and what it pairs
with or why it does not fit Z-Image. A safetensors file is named for what it holds (a VAE, a
diffusion model, a text encoder, a LoRA) with the node that loads it; other formats (a web page, a
Git LFS pointer, a checkpoint) are named as such. `--json` prints the same as a list of objects.
"""
from __future__ import annotations

import json
import os
from collections import Counter

from ..errors import ModelDetectionError, ZImageGGUFError
from ..model_families import DIFFUSION_FOLDER, DIFFUSION_LOADER, TEXT_ENCODER_FOLDER, TEXT_ENCODER_LOADER
from ..model_families.diffusion import OTHER_COMPONENTS, detect_diffusion_model
from ..model_families.pairing import DIFFUSION_MODELS, ENCODERS_BY_DISPLAY, models_taking
from ..model_families.text_encoders import ENCODER_ARCHS, comfy_te_model, detect_text_encoder, encoder_config
from ..ops.gguf_file.reader import identify_other_format, load_gguf
from ..ops.gguf_file.writer import MADE_BY, MADE_BY_KEY

ZIMAGE = DIFFUSION_MODELS["zimage"]
MADE_BY_THIS_PACK = "made by this pack"
CONVERSIONS = {"city96": "converted with city96's tool", "sdcpp": "converted with stable-diffusion.cpp"}
SAFETENSORS_ITEM_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "I16": 2}  # else 1 byte
CONVERT_HINT = "make a GGUF of it: python -m comfyui_zimage_gguf convert FILE OUT.gguf --type Q4_K_M"


def _quant_mix(gguf_file) -> tuple[dict, str]:
    by_bytes, counts = Counter(), Counter()
    for info in gguf_file.tensors.values():
        by_bytes[info.ggml_type.name] += info.n_bytes
        counts[info.ggml_type.name] += 1
    total = sum(by_bytes.values()) or 1
    ordered = [name for name, _ in by_bytes.most_common()]
    def share(name):
        percent = 100 * by_bytes[name] / total
        return f"{percent:.1f}%" if percent >= 0.1 else "<0.1%"

    text = ", ".join(f"{name} {share(name)}" for name in ordered)
    return {name: {"tensors": counts[name], "bytes": by_bytes[name]} for name in ordered}, text + " of the weights"


def describe(path) -> dict:
    """Everything `inspect` says about one file, as plain data."""
    with open(path, "rb") as handle:
        other = identify_other_format(handle.read(64))
    report = {"file": os.path.basename(path), "path": str(path), "size_bytes": os.path.getsize(path)}
    if other is not None and other[0] == "a safetensors file":
        report.update(_describe_safetensors(path))
        return report
    with load_gguf(path) as gguf_file:  # any other format: NotGGUFError names it and what to do
        shapes = gguf_file.shapes
        mix, mix_text = _quant_mix(gguf_file)
        report.update(format="gguf", quant_mix=mix, quant_mix_text=mix_text,
                      made_by=MADE_BY_THIS_PACK if gguf_file.metadata.get(MADE_BY_KEY) == MADE_BY else None)
        if gguf_file.architecture in ENCODER_ARCHS:
            report.update(_describe_encoder(gguf_file, shapes, path))
            if report["made_by"]:
                report["model"] += f" ({MADE_BY_THIS_PACK})"
        else:
            report.update(_describe_diffusion(gguf_file, shapes, path, report["made_by"]))
    return report


def _safetensors_header(path) -> tuple[dict, Counter]:
    from safetensors import safe_open

    shapes, dtype_bytes = {}, Counter()
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                part = handle.get_slice(name)
                shapes[name] = tuple(part.get_shape())
                dtype = part.get_dtype()
                elements = 1
                for size in shapes[name]:
                    elements *= size
                dtype_bytes[dtype] += elements * SAFETENSORS_ITEM_BYTES.get(dtype, 1)
    except Exception as error:  # the library's SafetensorError for a damaged header
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ZImageGGUFError(f"{os.path.basename(path)} is a damaged safetensors file ({reason}): "
                              f"download it again\n{path}") from None
    return shapes, dtype_bytes


def _describe_safetensors(path) -> dict:
    """A safetensors file named for what it holds, with the node that loads it (not this pack's GGUF loaders)."""
    shapes, dtype_bytes = _safetensors_header(path)
    total = sum(dtype_bytes.values()) or 1
    dtypes = ", ".join(f"{dtype} {100 * n / total:.0f}%" for dtype, n in dtype_bytes.most_common())
    out = {"format": "safetensors", "kind": "other", "type": None, "pairs_with": [],
           "quant_mix": {d: {"bytes": n} for d, n in dtype_bytes.items()},
           "quant_mix_text": f"{dtypes or 'no tensors'} (safetensors, not a GGUF)"}
    try:
        info = detect_diffusion_model(None, shapes, source=path)
    except ModelDetectionError:
        info = None
    if info is not None:
        return {**out, "kind": "diffusion_model", "model": f"{info.display_name} diffusion model in safetensors",
                "node": "Load Diffusion Model (ComfyUI's own)", "folder": DIFFUSION_FOLDER, "width": info.width,
                "caption_width": info.caption_width, "note": f"this pack's loader takes GGUF files; {CONVERT_HINT}"}
    if any("lora_" in name or ".lora." in name for name in shapes):
        return {**out, "model": "a LoRA in safetensors", "node": "LoraLoaderModelOnly (ComfyUI's own)",
                "folder": "models/loras", "note": "it works on a GGUF model from this pack's loader too"}
    for component in OTHER_COMPONENTS:
        if component.folder and component.matches(shapes, None, None):
            note = (f"this pack's text-encoder loader also takes .safetensors; {CONVERT_HINT}"
                    if component.use == TEXT_ENCODER_LOADER else None)
            return {**out, "model": f"a {component.kind} in safetensors", "node": component.use,
                    "folder": component.folder, "note": note}
    return {**out, "model": f"a safetensors file of {len(shapes)} tensors that is no model this pack knows",
            "node": None, "folder": None, "note": None}


def _describe_encoder(gguf_file, shapes, path) -> dict:
    arch = detect_text_encoder(gguf_file.metadata, shapes, path)
    config = encoder_config(arch, gguf_file.metadata, shapes, path)
    shape = f"{config.n_layers} layers, {config.hidden_size} wide"
    out = {"kind": "text_encoder", "node": TEXT_ENCODER_LOADER, "folder": TEXT_ENCODER_FOLDER,
           "width": config.hidden_size}
    try:
        known = comfy_te_model(config)
    except ModelDetectionError:
        out.update(model=f"a {arch.arch} text model ({shape}) that ComfyUI has no text encoder for", type=None,
                   pairs_with=[])
    else:
        users = models_taking(known.display)
        out.update(model=f"{known.display} text encoder ({shape})",
                   type=users[0].clip_type if users else None,
                   pairs_with=[{"model": m.display, "type": m.clip_type} for m in users])
    if ZIMAGE.display not in [p["model"] for p in out["pairs_with"]]:
        needs = ENCODERS_BY_DISPLAY[ZIMAGE.encoders[0]]
        out["does_not_fit"] = (f"does not fit {ZIMAGE.display} (needs {needs.display}, {needs.width} wide; "
                               f"this is {config.hidden_size} wide)" if config.hidden_size != needs.width else
                               f"does not fit {ZIMAGE.display} (needs {needs.display}; this is another model "
                               "of the same width)")
    return out


def _describe_diffusion(gguf_file, shapes, path, made_by: str | None = None) -> dict:
    info = detect_diffusion_model(gguf_file.metadata, shapes, source=path)
    model = DIFFUSION_MODELS.get(info.family)
    conversion = made_by or CONVERSIONS.get(info.style)
    out = {"kind": "diffusion_model", "node": DIFFUSION_LOADER, "folder": DIFFUSION_FOLDER, "type": None,
           "model": f"{info.display_name} diffusion model" + (f" ({conversion})" if conversion else ""),
           "width": info.width, "caption_width": info.caption_width, "pairs_with": []}
    if model and model.encoders:
        out["pairs_with"] = [{"encoder": e, "width": ENCODERS_BY_DISPLAY[e].width, "type": model.clip_type}
                             for e in model.encoders]
    elif model and model.takes:
        out["pairs_with"] = [{"encoder": model.takes, "width": None, "type": None}]
    elif info.caption_width:
        out["pairs_with"] = [{"encoder": None, "width": info.caption_width, "type": None}]
    return out


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def render(report: dict) -> list[str]:
    type_note = f", type '{report['type']}'" if report.get("type") else ""
    lines = [
        report["file"],
        f"  model:      {report['model']}",
        f"  {'quant mix:' if report['format'] == 'gguf' else 'dtypes:   '}  {report['quant_mix_text']}",
        f"  size:       {_size(report['size_bytes'])}",
    ]
    if report["node"]:
        lines.append(f"  load with:  {report['node']}{type_note}, from {report['folder']}")
    if report["format"] != "gguf":
        return lines + ([f"  note:       {report['note']}"] if report.get("note") else [])
    if report["kind"] == "diffusion_model":
        pairs = []
        for p in report["pairs_with"]:
            what = f"a {p['encoder']} text encoder" if p["encoder"] else "a text encoder"
            what += f" ({p['width']} wide)" if p["width"] else ""
            pairs.append(what + (f", type '{p['type']}' in the text encoder loader" if p["type"] else ""))
        lines.append("  pairs with: " + (" or ".join(pairs) or "unknown: no text-feature input found"))
    else:
        pairs = [f"{p['model']} (type '{p['type']}')" for p in report["pairs_with"]]
        lines.append("  pairs with: " + (", ".join(pairs) or "no diffusion model in this pack's table"))
        if report.get("does_not_fit"):
            lines.append(f"  note:       {report['does_not_fit']}")
    return lines


def add_inspect_parser(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="say what a model file holds (GGUF, or what else it is), which node "
                                                   "loads it, what it pairs with")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON list (one object per file) for scripts")


def run_inspect(args) -> int:
    status, reports, blocks = 0, [], []
    for path in args.files:
        if not os.path.isfile(path):
            reports.append({"path": path, "error": "no such file"})
            blocks.append([f"{path}", "  error: no such file"])
            status = 1
            continue
        try:
            report = describe(path)
        except ZImageGGUFError as error:
            first, *details = str(error).splitlines()
            reports.append({"path": path, "error": str(error)})
            blocks.append([os.path.basename(path), f"  error: {first}"] + [f"         {d}" for d in details])
            status = 1
            continue
        reports.append(report)
        blocks.append(render(report))
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n\n".join("\n".join(block) for block in blocks))
    return status
