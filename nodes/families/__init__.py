"""What a file holds in ComfyUI's terms: diffusion-model detection, text-encoder plans, and the
one table of which diffusion model pairs with which text encoder."""
