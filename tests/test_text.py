"""The one integer-list syntax (CLI and panel) and the one time-left text."""

from __future__ import annotations

import pytest

from napari_mtmsd._text import eta_text, format_ints, parse_ints
from napari_mtmsd.errors import InputError


def test_parse_and_format_ints():
    assert parse_ints("50:950:50", "t") == tuple(range(50, 1000, 50))
    assert parse_ints("0, 1 2", "s") == (0, 1, 2)
    assert format_ints(tuple(range(50, 1000, 50))) == "50:950:50"
    assert format_ints((0, 1, 3)) == "0, 1, 3"
    with pytest.raises(InputError, match="expected integers"):
        parse_ints("a, b", "stages")


def test_one_syntax_everywhere():
    assert parse_ints("50:53", "--timesteps") == (50, 51, 52, 53)  # once refused by the CLI
    for bad in ("1:2:3:4", "5:1:0", ""):
        with pytest.raises(InputError, match="--timesteps"):
            parse_ints(bad, "--timesteps")


def test_eta_text():
    assert eta_text(10.0, 5, 10) == "10 s left"
    assert eta_text(60.0, 1, 3) == "2 min left"
    assert eta_text(1.0, 0, 10) == ""
