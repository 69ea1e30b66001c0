"""MODEL_CARD.md's INT8 section reads the INT8 sidecar as `--backend onnx-int8` does: its own thresholds under the
INT8 keys, and no section for a sidecar that gives none."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.model_card import MODEL_CARD, stale_model_card, write_model_card
from pneumoscan.inference.onnx_runtime import INT8_NAME, spec_path
from pneumoscan.models.card import load_card


def _int8_section(bundle: Path) -> str:
    return (bundle / MODEL_CARD).read_text().split("## INT8 model\n\n")[1].split("\n## ")[0]


def _edit_sidecar(bundle: Path, edit) -> dict:
    """The INT8 sidecar rewritten by ``edit`` (a function of its JSON object); its figures before."""
    path = spec_path(bundle / INT8_NAME)
    before = json.loads(path.read_text())
    path.write_text(json.dumps(edit(dict(before))))
    return before


@pytest.mark.parametrize("generic", ["others", "missing"])
def test_the_card_gives_the_int8_thresholds_whatever_the_sidecar_gives_under_threshold(
    int8_bundle: Path, tmp_path: Path, generic: str
) -> None:
    """The card read ``threshold`` and ``tta_threshold``, the keys other ONNX users read, not the INT8 ones: a sidecar
    with others there (an earlier export put the FP32 ones there) had its card state those as the thresholds the
    INT8 model labels at, and one without them stopped the card's writing on a KeyError."""
    bundle = shutil.copytree(int8_bundle, tmp_path / "bundle")
    figures = _edit_sidecar(bundle, lambda s: s | {"threshold": 0.25, "tta_threshold": 0.75} if generic == "others"
                            else {k: v for k, v in s.items() if k not in ("threshold", "tta_threshold")})
    write_model_card(bundle, load_card(bundle))
    section = _int8_section(bundle)
    assert f"its own thresholds: **{figures['int8_threshold']:.4f}** (" in section, section
    assert f"with test-time augmentation {figures['int8_tta_threshold']:.4f}." in section, section
    assert "0.2500" not in section and "0.7500" not in section


@pytest.mark.parametrize("missing", ["int8_threshold", "int8_val_metrics"])
def test_a_sidecar_without_validated_int8_thresholds_gives_the_card_no_int8_section(
    int8_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    """Without its INT8 threshold or its validation figures (a sidecar `--backend onnx-int8` refuses as not
    validated) the section had stated the thresholds under ``threshold`` as the INT8 model's, or figures of "n/a"."""
    bundle = shutil.copytree(int8_bundle, tmp_path / "bundle")
    _edit_sidecar(bundle, lambda s: {k: v for k, v in s.items() if k != missing})
    with caplog.at_level(logging.WARNING, logger="pneumoscan"):
        write_model_card(bundle, load_card(bundle))
    text = (bundle / MODEL_CARD).read_text()
    assert "## INT8 model" not in text and "## Operating threshold" in text
    assert any("gives no validated INT8 thresholds" in m for m in caplog.messages), caplog.messages
    caplog.clear()  # predict and serve compare the file with the card's text at each start, whatever their backend:
    with caplog.at_level(logging.WARNING, logger="pneumoscan"):  # the file is the card's, and nothing is said twice
        assert stale_model_card(bundle) is None
    assert caplog.messages == []


def test_add_to_card_with_an_int8_sidecar_without_threshold_records_the_evaluation(
    int8_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """`evaluate --add-to-card` saved bundle.json, then stopped on a traceback (KeyError: 'threshold') writing
    MODEL_CARD.md, which was left without the evaluation that bundle.json records. (The card's record is the same
    with a report and without: none is written here, its figures cost about 1 s of CPU.)"""
    bundle = shutil.copytree(int8_bundle, tmp_path / "bundle")
    figures = _edit_sidecar(bundle, lambda s: {k: v for k, v in s.items() if k != "threshold"})
    evaluate(bundle, tiny_dataset, "test", add_to_card=True, data_name="site D")
    assert [e["data"] for e in load_card(bundle).external_evaluations] == ["site D"]
    assert "site D" in (bundle / MODEL_CARD).read_text()
    assert f"its own thresholds: **{figures['int8_threshold']:.4f}** (" in _int8_section(bundle)
