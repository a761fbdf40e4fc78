"""The saved classifier: diffusion model, feature spec, trained heads and classes in one
directory (``bundle.json``, ``model/``, ``classifier/``), so it moves between machines whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._atomic import atomic_dir, verify
from ._versioned import read_json, write_json
from .errors import ModelFileError
from .features import FeatureSpec

if TYPE_CHECKING:
    from .classifier import MTMSDClassifier
    from .fewlabel import FewLabelClassifier
    from .model import DiffusionModel

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
_OWN_KEYS = ("spec", "class_names", "colors", "model_fingerprint")  # the rest is ``meta``


@dataclasses.dataclass
class ClassifierBundle:
    """Everything needed to classify a new cube: the diffusion model, the feature spec, the
    trained heads and the classes."""

    model: DiffusionModel
    spec: FeatureSpec
    classifier: MTMSDClassifier | FewLabelClassifier
    class_names: list[str] | None = None
    colors: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_dir(path, kind="classifier") as tmp:
            self.model.save(tmp / "model")
            self.classifier.save(tmp / "classifier")
            record = {
                "kind": "napari-mtmsd classifier",
                "spec": self.spec.to_dict(),
                "class_names": self.class_names,
                "colors": None if self.colors is None else np.asarray(self.colors).tolist(),
                "model_fingerprint": self.model.fingerprint(),
                **self.meta,
            }
            write_json(tmp / BUNDLE_FILE, BUNDLE_FORMAT, record)
        return path

    @property
    def method(self) -> str:
        """``"paper"`` (the fusion ensemble) or ``"few-label"`` (``fewlabel.FewLabelClassifier``);
        bundles saved before the few-label method hold the paper's heads."""
        return self.meta.get("method", "paper")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ClassifierBundle:
        from .classifier import MTMSDClassifier
        from .fewlabel import FewLabelClassifier
        from .model import DiffusionModel

        path = Path(path)
        info = read_json(
            path / BUNDLE_FILE, BUNDLE_FORMAT, "a classifier directory", "train it again"
        )
        if not isinstance(info.get("model_fingerprint"), str):
            raise ModelFileError(f"{path / BUNDLE_FILE} is damaged: no model_fingerprint")
        verify(path)  # every file of the bundle against its manifest, before anything is used
        model = DiffusionModel.load(path / "model", device=device)
        if model.fingerprint() != info["model_fingerprint"]:
            raise ModelFileError(
                f"the diffusion model in {path / 'model'} is not the one this classifier was "
                "trained on (fingerprint mismatch)"
            )
        heads = FewLabelClassifier if info.get("method") == "few-label" else MTMSDClassifier
        classifier = heads.load(path / "classifier")
        meta = {k: v for k, v in info.items() if k not in _OWN_KEYS}
        try:
            colors = None if info.get("colors") is None else np.asarray(info["colors"], np.uint8)
            spec = FeatureSpec.from_dict(info["spec"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path / BUNDLE_FILE}: damaged spec or colours ({e})") from e
        return cls(model, spec, classifier, info.get("class_names"), colors, meta)
