"""An OpenAI-compatible image API over ComfyUI: `POST /v1/images/generations`, `GET /v1/models`.

Importing this package needs neither ComfyUI nor aiohttp: `workflow_params` is shared with the
standard-library `queue` command. The server parts (`app`, `inserver`, `bridge`) import aiohttp.
"""
