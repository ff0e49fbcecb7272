"""Every name the library prints loads: the model line's, local_models()' and the catalog's.

(Issue 11 item 9: "SmolLM2-135M-Instruct", the name the model line and chat
show for the embedded default, and the import names local_models() lists
were both "not in the catalog".)
"""

from __future__ import annotations

import pytest

import mlx_local
from mlx_local import _assets as assets

pytestmark = pytest.mark.slow  # real models, subprocesses or the network stand-in


@pytest.fixture
def default(models_home, hf_cache, no_network) -> mlx_local.Model:
    """The embedded default, loaded the usual way (offline: it needs no network)."""
    return mlx_local.Model.load(offline=True)


def test_the_default_models_printed_name_loads_it(default, no_network):
    assert default.name == "SmolLM2-135M-Instruct" and default.name in repr(default)
    for name in (default.name, default.name.lower()):
        again = mlx_local.Model.load(name, offline=True)
        assert again.name == default.name and again.path == default.path  # the same import, not a new one
    assert no_network == []


def test_every_name_local_models_lists_loads_that_model(default, smollm2_gguf, models_home, no_network):
    mlx_local.Model.load(smollm2_gguf, gguf_weights="float", offline=True)  # a second import of the file
    listed = mlx_local.local_models()
    assert sorted(m.kind for m in listed) == ["imported", "imported"]
    for m in listed:
        loaded = mlx_local.Model.load(m.name, offline=True)
        assert loaded.path == m.path and loaded.name == m.name
    assert no_network == []


def test_the_default_catalog_row_shows_the_embedded_copy(models_home, hf_cache, no_network):
    row = next(r for r in mlx_local.models() if r.name == "smollm2-135m")
    gguf = assets.path("smollm2")
    assert [(m.kind, m.path) for m in row.local] == [("embedded", gguf)]
    assert row.downloaded and row.size_on_disk == gguf.stat().st_size
    assert row.local[0].name == "SmolLM2-135M-Instruct"
    model = mlx_local.Model.load(offline=True)  # imports it: the import is a copy of the same model
    row = next(r for r in mlx_local.models() if r.name == "smollm2-135m")
    assert sorted(m.kind for m in row.local) == ["embedded", "imported"]
    assert next(m for m in row.local if m.kind == "imported").path == model.path
    assert row.as_dict()["paths"] == [str(m.path) for m in row.local]
    # Other catalog rows show nothing of it.
    assert all(not r.local for r in mlx_local.models() if r.name != "smollm2-135m")
    assert no_network == []


def test_the_embedded_copy_is_not_listed_as_a_removable_model(models_home, hf_cache):
    assert mlx_local.local_models() == []  # the asset is managed by `python -m mlx_local assets`
    with pytest.raises(mlx_local.ModelNotFoundError, match="nothing was deleted"):
        mlx_local.remove("SmolLM2-135M-Instruct")
    assert assets.path("smollm2").is_file()


def test_default_model_is_a_name_that_loads_the_default(default, no_network):
    assert mlx_local.DEFAULT_MODEL == default.name == "SmolLM2-135M-Instruct"
    model = mlx_local.Model.load(mlx_local.DEFAULT_MODEL, offline=True)
    assert model.path == default.path
    assert mlx_local.estimate_memory(mlx_local.DEFAULT_MODEL, offline=True).total > 0
    assert no_network == []


def test_license_is_spelled_as_the_ecosystem_spells_it_and_licence_still_works(models_home, hf_cache):
    from mlx_local._catalog import Licence, License, lookup

    entry = lookup("qwen3-0.6b")
    assert isinstance(entry.license, License) and License is Licence
    assert entry.licence is entry.license and entry.license.id == "apache-2.0"
    with pytest.raises(AttributeError):
        entry.licence = entry.license  # a read-only alias
    by_new = [r.name for r in mlx_local.models(license="apache-2.0")]
    assert by_new and by_new == [r.name for r in mlx_local.models(licence="apache-2.0")]
    assert all(r.entry.license.id == "apache-2.0" for r in mlx_local.models(license="Apache-2.0"))
    row = mlx_local.models(license="apache-2.0")[0].as_dict()
    assert row["license"] == "apache-2.0" and "licence" not in row
    with pytest.raises(mlx_local.InvalidOptionError, match="disagree") as e:
        mlx_local.models(license="mit", licence="apache-2.0")
    assert e.value.option == "license"
