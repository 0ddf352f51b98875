"""The model card meets the hub's conventions: base_model, license copied from the source,
datasets from the run's pinned data, the two tags, pipeline_tag; a plain title and sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lh_convert.convert.manifest import read_manifest
from lh_convert.convert.settings import LighthouseSettings
from lh_convert.convert.surgery import convert
from lh_convert.export.card_facts import BUILT_IN_CORPUS, source_license, training_data
from lh_convert.export.model_card import build_model_card

TINY = LighthouseSettings(levels=2, pooling=2, topk=16, tile=8, dense_layers=(0, -1))


def _meta(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def licensed_run(make_tiny_checkpoint, tmp_path_factory) -> Path:
    """A tiny run converted from a local folder whose README states a license."""
    source = tmp_path_factory.mktemp("src") / "tiny-llama"
    shutil.copytree(make_tiny_checkpoint("llama"), source)
    (source / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# tiny\n")
    run = source.parent / "run"
    convert(model=str(source), ctx=1024, out=run, settings=TINY)
    return run


def _trained_copy(run: Path, tmp_path: Path, data_paths: list[str]) -> Path:
    trained = tmp_path / "run"
    shutil.copytree(run, trained)
    rows = [{"kind": "train", "stage": "lighthouse", "step": 1, "loss": 5.0, "tokens": 1024},
            {"kind": "eval", "stage": "lighthouse", "step": 1, "val_loss": 4.5,
             "val_late_loss": 4.6}]
    (trained / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (trained / "recipe.json").write_text(json.dumps({"recipe": {}, "data": {"paths": data_paths}}))
    return trained


def test_untrained_card_names_license_and_says_it_is_untrained(licensed_run: Path) -> None:
    card = build_model_card(run_dir=licensed_run, manifest=read_manifest(licensed_run))
    meta = _meta(card)
    assert meta["license"] == "apache-2.0"
    assert {"long-context", "lighthouse-attention"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation" and "datasets" not in meta
    assert "# tiny-llama, extended to a 1,024-token context" in card
    assert ("`tiny-llama` with its context window extended from 256 to 1,024 tokens by "
            "lh-convert and prepared for training with Lighthouse Attention (Peng, Ghosh, "
            "Quesnelle, arXiv 2605.06554); it has not been trained at the new length yet.") in card
    assert "trained, (" not in card  # the old broken sentence


def test_trained_card_names_hub_datasets_and_local_data_plainly(licensed_run: Path,
                                                                 tmp_path: Path) -> None:
    trained = _trained_copy(licensed_run, tmp_path, ["HuggingFaceFW/fineweb-edu",
                                                      str(tmp_path / "secret" / "notes.txt")])
    manifest = read_manifest(trained)
    manifest = type(manifest)(**{**manifest.__dict__, "source": {
        **manifest.source, "hub_id": "HuggingFaceTB/SmolLM2-135M"}})
    card = build_model_card(run_dir=trained, manifest=manifest)
    meta = _meta(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta["datasets"] == ["HuggingFaceFW/fineweb-edu"]
    assert ("Training data: the hub dataset `HuggingFaceFW/fineweb-edu`, local data "
            "`notes.txt`.") in card
    assert "then trained at the new length with Lighthouse Attention" in card
    assert str(tmp_path) not in card


def test_built_in_corpus_is_named(licensed_run: Path, tmp_path: Path) -> None:
    trained = _trained_copy(licensed_run, tmp_path, [])
    assert training_data(trained).datasets == ()
    assert f"Training data: {BUILT_IN_CORPUS}." in build_model_card(
        run_dir=trained, manifest=read_manifest(trained))


def test_license_from_a_gguf_file_and_none_when_absent(tmp_path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(tmp_path / "m.Q4_1.gguf", "llama")
    writer.add_license("llama3.2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert source_license({"path": str(tmp_path), "gguf_file": "m.Q4_1.gguf"}) == "llama3.2"
    assert source_license({"path": str(tmp_path)}) is None  # no README
    assert source_license({"path": None}) is None
