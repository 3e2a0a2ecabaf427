"""What a file holds in ComfyUI's terms: diffusion-model detection, text-encoder plans, and the
one table of which diffusion model pairs with which text encoder.

The loaders' display names and folders live here, once, because the messages of every module
below name them ("load it with ... from models/text_encoders").
"""
DIFFUSION_LOADER = "Load Diffusion Model (GGUF, Z-Image pack)"
TEXT_ENCODER_LOADER = "Load Text Encoder (GGUF, Z-Image pack)"
DIFFUSION_FOLDER = "models/diffusion_models"  # ComfyUI also reads models/unet into the same list
TEXT_ENCODER_FOLDER = "models/text_encoders"  # ComfyUI also reads models/clip into the same list
