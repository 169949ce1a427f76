"""The hf_cagul adapter inspector as a Hugging Face Space (Gradio SDK).

Copy this file into a Gradio Space with a ``requirements.txt`` that reads ``hf_cagul[app]``,
and name the base model and the adapter in the Space's variables ``CAGUL_BASE_MODEL`` and
``CAGUL_ADAPTER`` (or edit the constants below). Locally: ``python app.py``, or
``hf-cagul app --model M --adapter A``.
"""

from __future__ import annotations

import os

from hf_cagul.app import AppArguments, build_from_arguments, launch_app

BASE_MODEL = "llava-hf/llava-1.5-7b-hf"
"""The base VLM, unless ``CAGUL_BASE_MODEL`` names another."""
ADAPTER = "your-name/your-cagul-adapter"
"""The adapter, unless ``CAGUL_ADAPTER`` names another."""

arguments = AppArguments(
    model=os.environ.get("CAGUL_BASE_MODEL", BASE_MODEL),
    adapter=os.environ.get("CAGUL_ADAPTER", ADAPTER),
)
demo = build_from_arguments(arguments)

if __name__ == "__main__":
    # A Space serves on every interface (its proxy sets GRADIO_SERVER_NAME); locally, this
    # machine only.
    launch_app(demo, host=os.environ.get("GRADIO_SERVER_NAME"))
