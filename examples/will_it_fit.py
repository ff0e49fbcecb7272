"""Which models can this machine run? Ask before downloading gigabytes.

    python examples/will_it_fit.py            # at 4096 tokens of context
    python examples/will_it_fit.py 32768      # at a longer context

Everything here is offline: the estimates come from the catalog and from the
headers of files already on disk; nothing is loaded.
"""

import sys

import mlx_local


def format_bytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


context = int(sys.argv[1]) if len(sys.argv) > 1 else 4096

device = mlx_local.device_info()
print(f"This machine: {device}\n")

print(f"The catalog at {context} tokens of context (MLX 4-bit variants):")
print(f"{'name':32} {'license':12} {'thinks':7} {'needs':>9}  fits  on disk")
for row in mlx_local.models(context=context):
    e = row.entry
    thinks = {"none": "", "switchable": "yes", "always": "always"}[e.thinking]
    print(
        f"{e.name:32} {e.license.id:12} {thinks:7} {format_bytes(row.memory.total):>9}  "
        f"{'yes ' if row.fits else 'no  '}  {format_bytes(row.size_on_disk) if row.local else ''}"
    )

# The embedded default, from its GGUF header: weights, KV cache and working memory.
print()
print(mlx_local.estimate_memory(context=context))

# What is on disk, downloaded, converted or imported.
print("\nOn disk:")
for m in mlx_local.local_models():
    print(" ", m)
