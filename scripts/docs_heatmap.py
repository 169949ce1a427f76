"""Regenerate docs/img/attention_heatmap.png with the demo's report code, offline, in seconds.

    python scripts/docs_heatmap.py [--output docs/img/attention_heatmap.png]

A tiny LLaVA (`hf_cagul.tiny`, random weights) gets a fresh CAGUL adapter; one synthetic
portrait goes through it with the gate forced open, and the demo's `attention_heatmap` and the
report's `write_report` draw what the adapter saw: each visual token coloured by the
text-to-visual attention it received, the rewritten (least-attended) half marked. The VLM is
untrained, so the scores show the mechanism, not what a trained model attends to; `hf-cagul
demo` draws the same figure for its trained model.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from hf_cagul import CagulConfig, get_cagul_model
from hf_cagul.data.synthetic import synthetic_benchmark
from hf_cagul.demo import attention_heatmap
from hf_cagul.evaluation.report import write_report
from hf_cagul.tiny import tiny_vlm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--output", type=Path, default=Path("docs/img/attention_heatmap.png"))
args = parser.parse_args()

vlm, processor = tiny_vlm("llava", seed=0)
model = get_cagul_model(vlm, CagulConfig(token_ratio=0.5)).eval()
splits = synthetic_benchmark(num_people=2, num_unknown=0, forget_fraction=0.5, train_images=1)
heatmap = attention_heatmap(model, processor, splits["forget"])
with tempfile.TemporaryDirectory() as directory:
    metrics = {"title": "attention heat map", "results": {"tiny": {}}}
    plots = [path for path in write_report(directory, metrics, heatmap) if "heatmap" in path.name]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plots[0], args.output)
print(f"wrote {args.output}")
