"""The README's Python example runs: the same calls, on a small synthetic scene with the tiny
preset (each substitution below must still find its text, so the example cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SUBSTITUTIONS = {
    '"sample:indian_pines"': '"sample:synthetic?size=32&bands=20&classes=3&seed=2"',
    'preset="cpu", seed=0': 'preset="tiny", steps=10, seed=0, progress=False',
    "ws.update()": "ws.update(progress=False)",
    '"my-classifier"': "str(OUT)",
}


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path / "cache"))
    text = README.read_text()
    section = text[text.index("## Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for old, new in SUBSTITUTIONS.items():
        assert old in code, f"README example no longer has {old}"
        code = code.replace(old, new)
    namespace = {"OUT": tmp_path / "my-classifier"}
    exec(compile(code, str(README), "exec"), namespace)
    ws = namespace["ws"]
    assert ws.bundle.method == "few-label"  # 5-15 labels per class: the few-label head
    assert ws.prediction.method == "few-label" and ws.prediction.suggestions.shape[1] == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("[[") and 0 <= float(out[-1]) <= 100
    assert namespace["class_map"].shape == (32, 32)
    assert (tmp_path / "my-classifier" / "bundle.json").is_file()
