"""Serve a published CAGUL adapter through transformers' ``pipeline("image-text-to-text")``.

    python examples/serve_pipeline.py --adapter org/forget-adapter --image photo.jpg
    python examples/serve_pipeline.py --tiny --adapter ./runs/tiny/adapter   # offline, CPU

The adapter's hooks live on the VLM itself, so the pipeline gets the hooked VLM
(``model.base_model``): every image goes through the gate, flagged ones are rewritten, the
others pass untouched. (Passing the `CagulModel` wrapper works too, but transformers logs that
it does not know the class.)
"""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from hf_cagul import CagulModel
from hf_cagul.tiny import tiny_vlm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--adapter", required=True, help="Hub repo id or local adapter directory")
parser.add_argument("--model", default="llava-hf/llava-1.5-7b-hf", help="the adapter's base VLM")
parser.add_argument("--image", default=None, help="image file (--tiny: a generated one)")
parser.add_argument("--question", default="Who is the person in this image?")
parser.add_argument("--tiny", action="store_true", help="tiny offline LLaVA instead of --model")
args = parser.parse_args()

if args.tiny:
    vlm, processor = tiny_vlm("llava")
else:
    vlm = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.bfloat16)
    processor = AutoProcessor.from_pretrained(args.model)
model = CagulModel.from_pretrained(vlm, args.adapter).eval()
image = Image.open(args.image) if args.image else Image.new("RGB", (32, 32), (180, 120, 90))

device = 0 if torch.cuda.is_available() and not args.tiny else -1
serve = pipeline("image-text-to-text", model=model.base_model, processor=processor, device=device)
messages = [
    {
        "role": "user",
        "content": [{"type": "image", "image": image}, {"type": "text", "text": args.question}],
    }
]
with model.trace() as traces:  # the gate's decision for each image of the call
    output = serve(text=messages, max_new_tokens=32, generate_kwargs={"do_sample": False})
answer = output[0]["generated_text"][-1]["content"]
gate = {"probability": traces[0].probability, "flagged": bool(traces[0].flagged)}
print(json.dumps({"answer": answer, "gate": gate}))
