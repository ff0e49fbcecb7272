"""The example notebooks run top to bottom, offline, on the embedded default model.

Each notebook in ``examples/notebooks/`` is executed with nbclient in a kernel
running this interpreter (a kernel spec of our own in a temporary folder, so
no Jupyter installation or configuration is needed beyond ``.[test]``), with
the notebook's folder as the working directory and this process's environment
(the isolated caches from conftest) plus ``HF_HUB_OFFLINE=1``.

``run_notebook`` is also how the committed notebooks get their outputs:

    .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); import test_notebooks as t; t.refresh()"
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

# jupyter_core warns that it will move its folders unless this is set; opting in
# now keeps that warning (an error under pytest's filterwarnings) away.
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

import nbformat  # noqa: E402
import pytest  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in

NOTEBOOKS = Path(__file__).resolve().parent.parent / "examples" / "notebooks"
EXPECTED = ["getting_started.ipynb", "quantization.ipynb"]
KERNEL_NAME = "mlx-local-python"
CELL_TIMEOUT = 600  # seconds; a whole conversion with its quality check is one cell


def run_notebook(path: Path, *, env: dict[str, str] | None = None, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` and return it with its outputs (the file is not written).

    Raises nbclient's ``CellExecutionError`` if a cell fails.
    """
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="mlx_local-notebook-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME, kernel_spec_manager=specs, connection_file=str(Path(tmp) / "connection.json")
        )

        kernel_env = {**os.environ, **(env or {})}
        kernel_env.setdefault("HF_HUB_OFFLINE", "1")
        kernel_env["JUPYTER_PLATFORM_DIRS"] = "1"
        kernel_env["IPYTHONDIR"] = str(Path(tmp) / "ipython")  # not the user's ~/.ipython
        kernel_env.pop("MPLBACKEND", None)  # the kernel's inline backend, so charts become PNG outputs

        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,  # no per-cell timestamps in the saved notebooks
            coalesce_streams=True,  # a streamed answer is one output, not one per token
            resources={"metadata": {"path": str(path.parent)}},  # the kernel's working directory
        )
        # cleanup_kc: shut the kernel down afterwards (nbclient only does so on its own for kernel managers it made)
        client.execute(env=kernel_env, cleanup_kc=True)
    return nb


def refresh(names: list[str] | None = None) -> None:
    """Execute the notebooks in place, so the committed files carry the outputs of a real run."""
    import time

    for name in names or EXPECTED:
        path = NOTEBOOKS / name
        start = time.perf_counter()
        nb = run_notebook(path)
        nb.metadata.pop("widgets", None)
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"{name}: {time.perf_counter() - start:.1f} s")


# ------------------------------------------------------------------ checks


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    found = [c for c in nb.cells if c.get("id") == cell_id]
    assert found, f"the notebook has no cell with id {cell_id!r}"
    return found[0]


def text_of(c: nbformat.NotebookNode) -> str:
    """Everything a code cell printed or displayed as text."""
    parts = []
    for out in c.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def has_png(c: nbformat.NotebookNode) -> bool:
    return any(
        out.output_type in ("display_data", "execute_result") and "image/png" in out.data for out in c.get("outputs", [])
    )


def check_getting_started(nb: nbformat.NotebookNode) -> None:
    assert "SmolLM2-135M-Instruct" in text_of(cell(nb, "load"))
    assert "backend=" in text_of(cell(nb, "runtime")) and "memory" in text_of(cell(nb, "runtime"))
    assert "Paris" in text_of(cell(nb, "generate"))
    streamed = text_of(cell(nb, "stream"))
    assert streamed.strip() and ("[stop]" in streamed or "[length]" in streamed)
    assert "tokens/s" in text_of(cell(nb, "stats")) and "peak memory" in text_of(cell(nb, "stats"))
    assert "Biscuit" in text_of(cell(nb, "chat")).split("What is my dog called?")[-1]
    thinking = text_of(cell(nb, "thinking"))
    assert "thinking support: none" in thinking and "InvalidOptionError" in thinking
    chart = cell(nb, "memory-chart")
    assert has_png(chart), "the memory chart was not drawn"
    assert "KV cache" in text_of(chart) and "measured" in text_of(chart)
    check_structured_output_and_tools(nb)


def check_structured_output_and_tools(nb: nbformat.NotebookNode) -> None:
    """The schema, pydantic and act cells of getting_started: parsed values and the tool's result."""
    text, printed = text_of(cell(nb, "schema")).strip().splitlines()
    parsed, kind = printed.rsplit(" ", 1)
    value = json.loads(text)
    assert ast.literal_eval(parsed) == value and set(value) == {"city", "country", "population"}
    assert isinstance(value["population"], int) and kind == "int" and ": " not in text  # compact JSON
    assert re.fullmatch(r"Place\(name='[^']+', country='[^']+'\)", text_of(cell(nb, "pydantic")).strip())
    act = text_of(cell(nb, "act"))
    assert re.search(r"^tool call \(generic\): get_weather\(\{'city': '[^']+'\}\)$", act, re.M), act
    assert re.search(r"^tool result: \['22 degrees and sunny in [^']+'\]$", act, re.M), act
    assert "22" in act.split("answer: ", 1)[1] and act.rstrip().endswith("[stop]")


def check_quantization(nb: nbformat.NotebookNode) -> None:
    reports = text_of(cell(nb, "convert"))
    for label in ("3-bit g64", "4-bit g64", "4-bit g32", "6-bit g64", "8-bit g64"):
        assert label in reports, f"no report for {label}"
    assert reports.count("KL nats") == 5 and "bits/weight" in reports
    assert "mean KL" in text_of(cell(nb, "table"))
    assert has_png(cell(nb, "plot")), "the size/quality chart was not drawn"
    answer = text_of(cell(nb, "use"))
    assert "4-bit, group 32" in answer and "Paris" in answer


CHECKS: dict[str, Callable[[nbformat.NotebookNode], None]] = {
    "getting_started.ipynb": check_getting_started,
    "quantization.ipynb": check_quantization,
}


def test_the_notebooks_are_there():
    present = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name in EXPECTED:
        assert name in present, f"{NOTEBOOKS / name} is missing"
    assert set(present) <= set(CHECKS), f"add checks for the new notebooks: {sorted(set(present) - set(CHECKS))}"


@pytest.mark.parametrize("name", sorted({*EXPECTED, *(p.name for p in NOTEBOOKS.glob("*.ipynb"))}))
def test_notebook_runs(name, smollm2_gguf):
    path = NOTEBOOKS / name
    assert path.is_file(), f"{path} is missing"
    nb = run_notebook(path)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, f"{name} has no code cells"
    for c in code_cells:
        errors = [o for o in c.outputs if o.output_type == "error"]
        assert not errors, f"cell {c.get('id')} of {name} failed: {errors[0].ename}: {errors[0].evalue}"
        assert c.execution_count is not None, f"cell {c.get('id')} of {name} did not run"
    CHECKS[name](nb)
