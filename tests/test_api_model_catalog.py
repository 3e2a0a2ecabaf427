"""Models that follow the installed files: real (tiny, header-true) GGUF and safetensors files in a temp dir,
classified by the loaders' own detection and paired into `z-image-turbo-<quant>` ids."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

from factories import write_llama_cpp_encoder_gguf

from comfyui_zimage_gguf.api.catalog import WorkflowCatalog
from comfyui_zimage_gguf.api.model_catalog import InstalledModel, classify, pair_installed, quant_label


def write_zimage_header_gguf(path, qtype: Q = Q.Q4_0) -> str:
    """The two tensors Z-Image's detection reads (caption embedder 3840x2560, a refiner k-norm), zero blocks."""
    writer = gguf.GGUFWriter(str(path), "lumina2")
    shape = (3840, 2560)
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    writer.add_tensor("cap_embedder.1.weight", np.zeros(byte_shape, np.uint8), raw_shape=byte_shape, raw_dtype=qtype)
    writer.add_tensor("noise_refiner.0.attention.k_norm.weight", np.ones(128, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def write_encoder(path, hidden: int = 2560, qtype: Q = Q.Q8_0) -> str:
    write_llama_cpp_encoder_gguf(path, n_layers=1, hidden=hidden, heads=2, kv_heads=1, head_dim=128, ffn=64, vocab=32,
                                 ggml_type=qtype, keep_state_dict=False)
    return str(path)


def write_vae(path, latent_channels: int = 16) -> str:
    save_file({"decoder.conv_in.weight": np.zeros((512, latent_channels, 3, 3), np.float16)}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "unet_q4": write_zimage_header_gguf(root / "z_image_turbo-Q4_0.gguf", Q.Q4_0),
        "unet_q8": write_zimage_header_gguf(root / "z_image_turbo-Q8_0.gguf", Q.Q8_0),
        "unet_unnamed": write_zimage_header_gguf(root / "my-zimage.gguf", Q.Q4_0),
        "enc_q4": write_encoder(root / "Qwen3-4B-Instruct-2507-Q4_0.gguf", qtype=Q.Q4_0),
        "enc_q8": write_encoder(root / "Qwen3-4B-Instruct-2507-Q8_0.gguf", qtype=Q.Q8_0),
        "enc_narrow": write_encoder(root / "Qwen3-1.7B-Q4_0.gguf", hidden=2048, qtype=Q.Q4_0),
        "vae_ae": write_vae(root / "ae.safetensors"),
        "vae_other": write_vae(root / "another-flux-vae.safetensors"),
        "vae_sd": write_vae(root / "sd-vae.safetensors", latent_channels=4),
    }


def listed(files, *keys):
    return [(files[key].rsplit("/", 1)[-1], files[key]) for key in keys]


@pytest.mark.parametrize("name, label", [
    ("z_image_turbo-Q4_K_M.gguf", "Q4_K_M"), ("z_image_turbo-Q8_0.gguf", "Q8_0"), ("Qwen3-4B-Instruct-2507-Q4_0.gguf",
                                                                                  "Q4_0"),
    ("z-image-turbo-bf16.gguf", "BF16"), ("zimage-test-1layer-Q4_0-0123456789.gguf", "Q4_0"),
    ("z_image_turbo-IQ4_XS.gguf", "IQ4_XS"), ("z_image_turbo-q5_k_s.gguf", "Q5_K_S"), ("my-zimage.gguf", None),
])
def test_quant_label_from_the_file_name(name, label):
    assert quant_label(name) == label


def test_each_file_is_classified_by_the_loaders_detection(files):
    kinds = {key: classify(path).kind for key, path in files.items()}
    assert kinds == {"unet_q4": "zimage", "unet_q8": "zimage", "unet_unnamed": "zimage", "enc_q4": "encoder",
                     "enc_q8": "encoder", "enc_narrow": None, "vae_ae": "vae", "vae_other": "vae", "vae_sd": None}
    assert classify(files["unet_unnamed"]).quant == "Q4_0"  # no label in the name: the file's matrix type


def test_one_model_per_zimage_gguf_with_its_own_quant_encoder_and_the_preferred_vae(files):
    models = pair_installed(listed(files, "unet_q8", "unet_q4", "enc_q4"),
                            listed(files, "enc_narrow", "enc_q8", "enc_q4"),
                            listed(files, "vae_other", "vae_sd", "vae_ae"))
    assert [(m.id, m.unet, m.clip, m.vae) for m in models] == [
        ("z-image-turbo-Q4_0", "z_image_turbo-Q4_0.gguf", "Qwen3-4B-Instruct-2507-Q4_0.gguf", "ae.safetensors"),
        ("z-image-turbo-Q8_0", "z_image_turbo-Q8_0.gguf", "Qwen3-4B-Instruct-2507-Q8_0.gguf", "ae.safetensors"),
    ]  # the encoder GGUF listed among the diffusion files is no model


def test_without_a_same_quant_encoder_the_largest_fitting_one_is_taken(files):
    (model,) = pair_installed(listed(files, "unet_q8"), listed(files, "enc_q4", "enc_narrow"), listed(files, "vae_other"))
    assert (model.id, model.clip, model.vae) == ("z-image-turbo-Q8_0", "Qwen3-4B-Instruct-2507-Q4_0.gguf",
                                                 "another-flux-vae.safetensors")


def test_two_files_of_one_quant_get_ids_from_their_names(files):
    models = pair_installed(listed(files, "unet_q4", "unet_unnamed"), listed(files, "enc_q4"), listed(files, "vae_ae"))
    assert sorted((m.id, m.unet) for m in models) == [("z-image-turbo-Q4_0", "z_image_turbo-Q4_0.gguf"),
                                                      ("z-image-turbo-my-zimage", "my-zimage.gguf")]


@pytest.mark.parametrize("missing", ["encoder", "vae"])
def test_no_model_without_a_fitting_encoder_or_vae(files, missing):
    encoders = listed(files, "enc_narrow") if missing == "encoder" else listed(files, "enc_q4")
    vaes = listed(files, "vae_sd") if missing == "vae" else listed(files, "vae_ae")
    assert pair_installed(listed(files, "unet_q4"), encoders, vaes) == []


def test_an_installed_model_runs_the_packs_workflows_with_its_files():
    catalog = WorkflowCatalog(None)
    model = InstalledModel("z-image-turbo-Q4_0", "sub/z-Q4_0.gguf", "Qwen3-4B-Q4_0.gguf", "ae.safetensors", 5)
    served = catalog.installed_workflow(model)
    loaders = {node["class_type"]: node["inputs"] for node in served.workflow.values()}
    assert loaders["ZImageGGUFDiffusionModelLoader"]["unet_name"] == "sub/z-Q4_0.gguf"
    assert loaders["ZImageGGUFTextEncoderLoader"]["clip_name"] == "Qwen3-4B-Q4_0.gguf"
    assert loaders["VAELoader"]["vae_name"] == "ae.safetensors"
    assert (served.id, served.created) == ("z-image-turbo-Q4_0", 5)
    edit = {node["class_type"]: node["inputs"] for node in catalog.edit_workflow(served).values()}
    assert edit["ZImageGGUFDiffusionModelLoader"]["unet_name"] == "sub/z-Q4_0.gguf" and "LoadImage" in edit
