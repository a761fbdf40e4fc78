"""The one reader of the package's JSON records."""

from __future__ import annotations

import pytest

from napari_mtmsd._versioned import read_json, versions, write_json
from napari_mtmsd.errors import ModelFileError


def test_round_trip_and_every_defect_named(tmp_path):
    path = tmp_path / "thing.json"
    write_json(path, 3, {"a": 1})
    assert read_json(path, 3, "a thing") == {"format_version": 3, "a": 1}
    with pytest.raises(ModelFileError, match=r"format 3 .*reads format version 4: redo it"):
        read_json(path, 4, "a thing", "redo it")
    with pytest.raises(ModelFileError, match=r"no other\.json .*not a thing"):
        read_json(tmp_path / "other.json", 3, "a thing")
    path.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="JSON object"):
        read_json(path, 3, "a thing")
    path.write_text("{oops")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_json(path, 3, "a thing")


def test_versions_name_the_libraries():
    assert {"napari-mtmsd", "numpy", "torch", "scikit-learn", "safetensors"} <= set(versions())
