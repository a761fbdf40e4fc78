"""The package as napari and users meet it: light imports, the public API, the manifest."""

from __future__ import annotations

import subprocess
import sys

import pytest

import napari_mtmsd


def test_napari_start_up_imports_no_torch():
    """napari imports the reader, writer, sample data and widget modules at start-up."""
    code = (
        "import sys, napari_mtmsd, napari_mtmsd._reader, napari_mtmsd._writer, "
        "napari_mtmsd._sample_data, napari_mtmsd._qt; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", sorted(set(napari_mtmsd.__all__) - {"__version__"}))
def test_public_api_resolves(name):
    assert getattr(napari_mtmsd, name) is not None


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no_such_thing"):
        napari_mtmsd.no_such_thing  # noqa: B018


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-mtmsd")
    manifest.validate_imports()
    assert manifest.name == "napari-mtmsd"
    assert manifest.contributions.readers and manifest.contributions.writers
    assert manifest.contributions.sample_data
