"""Quantize a model at a few settings and see what each one loses.

    .venv/bin/python examples/convert_and_compare.py [output folder]
    MLX_LOCAL_MODEL=Qwen/Qwen3-0.6B .venv/bin/python examples/convert_and_compare.py

Runs offline on the embedded default model (SmolLM2-135M-Instruct, from its
Q4_1 GGUF: the reference is that file dequantized to float). It converts to
4-bit with groups of 64 and of 32 weights, then lets ``recipe="auto"`` pick
the smallest setting whose mean KL divergence from the reference is at most
0.1 nats per token, prints each report, and asks every result the same
question. The models are written to the output folder (default: a temporary
folder, deleted at the end). About a minute on a 2-core CPU.
"""

import os
import sys
import tempfile
from pathlib import Path

import mlx_local

source = os.environ.get("MLX_LOCAL_MODEL") or None
question = "What is the capital of France?"
settings = {
    "4bit-g64": dict(bits=4, group_size=64),
    "4bit-g32": dict(bits=4, group_size=32),
    "auto": dict(recipe="auto"),
}

with tempfile.TemporaryDirectory() as tmp:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
    reports = {}
    for name, options in settings.items():
        print(f"--- {name}", flush=True)
        reports[name] = mlx_local.convert(source, out / name, overwrite=True, **options)
        print(reports[name], "\n", flush=True)

    print(f"{'':10}{'size':>10}  {'bits/w':>6}  {'KL nats':>7}  {'top-1':>6}  answer to {question!r}")
    for name, report in reports.items():
        answer = mlx_local.Model.load(report.dest).generate(question, max_tokens=24).text
        q = report.quality
        print(
            f"{name:10}{report.output_bytes / 1e6:>7.1f} MB  {report.bits_per_weight:6.2f}  "
            f"{q.mean_kl:7.4f}  {q.top1_agreement:6.1%}  {answer!r}"
        )
