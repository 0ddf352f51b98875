"""``lh-convert export`` with a model card and ``--push-to-hub``: the card's content, the dry
run, the token rules, and the upload through a stand-in hub client (tests never reach the hub)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import CommitInfo, RepoUrl

import lh_convert.export.to_hf as export_module
from lh_convert.export import publish
from lh_convert.convert.settings import LighthouseSettings
from lh_convert.cli import main
from lh_convert.util.errors import LhConvertError
from lh_convert.export.to_hf import export
from lh_convert.convert.manifest import read_manifest
from lh_convert.export.model_card import build_model_card, summarize_training
from lh_convert.export.publish import PushRequest, push_folder
from lh_convert.convert.surgery import convert

TINY_SETTINGS = LighthouseSettings(levels=2, pooling=2, topk=16, tile=8, dense_layers=(0, -1))
SECRET = "hf_test_SECRET_token_0123456789abcdef"
REPO = "someone/tiny-llama-1k"


@pytest.fixture(scope="module")
def run_dir(make_tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted (untrained) tiny Llama run at 1K context, shared read-only by the tests."""
    folder = tmp_path_factory.mktemp("publish") / "run"
    convert(model=str(make_tiny_checkpoint("llama")), ctx=1024, out=folder, settings=TINY_SETTINGS)
    return folder


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> Path:
    """The run exported once without a push (no verification: the push tests need a folder)."""
    out = run_dir.parent / "exported"
    export(run=run_dir, out=out, verify=False)
    return out


class FakeHub:
    """Records every call as HfApi would receive it; the remote holds what was uploaded."""

    def __init__(self, token: str | None = None, *, drop: tuple[str, ...] = (),
                 remote_private: bool = True, fail_upload: Exception | None = None,
                 remote_extra: tuple[str, ...] = ()) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.drop, self.remote_private, self.fail_upload = drop, remote_private, fail_upload
        self.remote: list[str] = list(remote_extra)

    def create_repo(self, repo_id: str, **kwargs: Any) -> RepoUrl:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def repo_info(self, repo_id: str, **kwargs: Any) -> Any:
        self.calls.append(("repo_info", {"repo_id": repo_id, **kwargs}))
        return dataclasses.make_dataclass("Info", ["private"])(self.remote_private)

    def create_branch(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> CommitInfo:
        self.calls.append(("upload_folder", kwargs))
        if self.fail_upload is not None:
            raise self.fail_upload
        folder = Path(kwargs["folder_path"])
        self.remote += [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        url = f"https://huggingface.co/{kwargs['repo_id']}"
        return CommitInfo(commit_url=f"{url}/commit/0123abcd", commit_message=kwargs["commit_message"],
                          commit_description="", oid="0123abcd",
                          pr_url=f"{url}/discussions/7" if kwargs["create_pr"] else None)

    def list_repo_files(self, repo_id: str, **kwargs: Any) -> list[str]:
        self.calls.append(("list_repo_files", {"repo_id": repo_id, **kwargs}))
        return [name for name in self.remote if name not in self.drop]

    def called(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for call, kwargs in self.calls if call == name]


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_of_an_untrained_local_run(run_dir: Path) -> None:
    manifest = read_manifest(run_dir)
    card = build_model_card(run_dir=run_dir, manifest=manifest)
    meta = _front_matter(card)
    assert meta == {"library_name": "transformers", "pipeline_tag": "text-generation",
                    "tags": ["lh-convert", "lighthouse-attention", "long-context"]}
    assert f"- **RoPE:** {manifest.rope['description']}" in card
    assert "256 -> 1,024 tokens" in card
    assert "2 levels, pooling 2, top-k 16, tile 8; ran in 2 of 4 layers (1, 2), dense " \
           "attention in layers 0, 3" in card
    assert "Not trained" in card and "## Evaluation" not in card
    assert "ordinary dense llama checkpoint" in card and "lh-convert 0.1.0" in card
    assert str(run_dir.parent) not in card, "the card must not reveal local paths"


def test_card_of_a_trained_hub_run_with_evaluation(run_dir: Path, tmp_path: Path) -> None:
    trained = tmp_path / "run"
    shutil.copytree(run_dir, trained)
    records = [{"kind": "train", "stage": "lighthouse", "step": s, "loss": 5.0, "tokens": 1024 * s}
               for s in (1, 2, 3)]
    records += [{"kind": "eval", "stage": "lighthouse", "step": 3, "val_loss": 4.5,
                 "val_late_loss": 4.75}]
    records += [{"kind": "train", "stage": "dense", "step": s, "loss": 4.0, "tokens": 1024 * s}
                for s in (4, 5)]
    records += [{"kind": "eval", "stage": "dense", "step": 5, "val_loss": 4.25, "val_late_loss": 4.5}]
    (trained / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                           + '{"kind": "tr')  # a line cut short by a crash
    table = "| task | score |\n|---|---|\n| ruler-niah-1k | 0.875 |\n"
    (trained / "eval").mkdir()
    (trained / "eval" / "results.md").write_text(table)
    manifest = dataclasses.replace(read_manifest(trained), source={
        "spec": "llama-1b", "kind": "hub", "path": "/cache/x", "hub_id": "meta-llama/Llama-3.2-1B",
        "alias": "llama-1b", "gguf_file": None})

    stages = summarize_training(run_dir=trained)
    assert [(s.stage, s.steps, s.tokens, s.val_loss) for s in stages] == [
        ("lighthouse", 3, 3072, 4.5), ("dense", 2, 2048, 4.25)]
    card = build_model_card(run_dir=trained, manifest=manifest, repo_id=REPO)
    assert _front_matter(card)["base_model"] == "meta-llama/Llama-3.2-1B"
    assert "| 1: `extend` (Lighthouse) | 3 | 3,072 | 4.5000 | 4.7500 |" in card
    assert "| 2: `recover` (dense) | 2 | 2,048 | 4.2500 | 4.5000 |" in card
    assert "5,120 training tokens in all" in card
    assert "## Evaluation\n\n" + table in card
    assert f'from_pretrained("{REPO}")' in card and "/cache/x" not in card


def test_dry_run_lists_files_and_card_and_touches_no_client(run_dir: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    def no_client(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry run must not construct a hub client")

    monkeypatch.setattr(publish, "HfApi", no_client)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "--out", str(out),
                                       "--push-to-hub", REPO, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "verified in a fresh process" in result.output
    assert "dry run: would upload" in result.output and "nothing was uploaded" in result.output
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert "README.md" in {p.name for p in files} and "config.json" in {p.name for p in files}
    for path in files:
        assert f"{path.stat().st_size:>15,} bytes  {path.relative_to(out).as_posix()}" in result.output
    assert (out / "README.md").read_text() in result.output
    assert f'from_pretrained("{REPO}")' in result.output


def test_missing_token_fails_before_any_work(run_dir: Path, tmp_path: Path, monkeypatch,
                                             assert_one_line_error) -> None:
    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the token was checked")

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(export_module, "load_run_model", no_work)
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "--out", str(out),
                                       "--push-to-hub", REPO])
    line = assert_one_line_error(result)
    assert line == f"error: {publish.NO_TOKEN_MESSAGE}"
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--dry-run"], "add --push-to-hub REPO"),
    (["--private"], "add --push-to-hub REPO"),
    (["--push-to-hub", "not a repo"], "is not a hub repository id"),
    (["--push-to-hub", "no-owner"], "names no owner"),
    (["--push-to-hub", REPO, "--no-verify"], "drop --no-verify"),
], ids=["dry-run-alone", "private-alone", "bad-repo-id", "no-owner", "unverified-push"])
def test_bad_push_options_fail_before_any_work(args: list[str], fragment: str, run_dir: Path,
                                               tmp_path: Path, monkeypatch,
                                               assert_one_line_error) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(export_module, "load_run_model", None)  # any work would fail differently
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "--out",
                                       str(tmp_path / "exported"), *args])
    assert_one_line_error(result, fragment)
    assert not list(tmp_path.iterdir())


def test_push_through_the_cli_with_a_fake_client_never_reveals_the_token(
        run_dir: Path, tmp_path: Path, monkeypatch, capfd, caplog) -> None:
    clients: list[FakeHub] = []

    def make_client(*, token: str | None = None) -> FakeHub:
        clients.append(FakeHub(token))
        return clients[-1]

    monkeypatch.setattr(publish, "HfApi", make_client)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", "--run", str(run_dir), "--out", str(out),
                                       "--push-to-hub", REPO, "--private"])
    assert result.exit_code == 0, result.output
    [client] = clients
    assert client.token == SECRET
    assert client.called("create_repo") == [{"repo_id": REPO, "private": True, "exist_ok": True,
                                             "repo_type": "model"}]
    assert client.called("create_branch") == []
    [upload] = client.called("upload_folder")
    assert (Path(upload["folder_path"]), upload["repo_id"], upload["revision"],
            upload["create_pr"]) == (out, REPO, None, False)
    assert client.called("list_repo_files") == [{"repo_id": REPO, "revision": "main",
                                                 "repo_type": "model"}]
    assert f"repository: https://huggingface.co/{REPO}" in result.output
    assert f"commit: https://huggingface.co/{REPO}/commit/0123abcd" in result.output

    seen = result.output + result.stderr + "".join(capfd.readouterr()) + caplog.text
    assert SECRET not in seen
    for path in [*tmp_path.rglob("*"), *run_dir.rglob("*")]:
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_push_to_a_branch_as_a_pull_request(exported: Path) -> None:
    client = FakeHub()
    result = push_folder(folder=exported, request=PushRequest(repo_id=REPO, revision="long-ctx",
                                                              create_pr=True),
                         token=SECRET, commit_message="upload", api=client)
    assert client.called("create_repo")[0]["private"] is None  # the account's default
    assert client.called("repo_info") == []
    assert client.called("create_branch") == [{"repo_id": REPO, "branch": "long-ctx",
                                               "repo_type": "model", "exist_ok": True}]
    [upload] = client.called("upload_folder")
    assert (upload["revision"], upload["create_pr"], upload["commit_message"]) == \
        ("long-ctx", True, "upload")
    assert client.called("list_repo_files")[0]["revision"] == "refs/pr/7"
    assert result.pr_url == f"https://huggingface.co/{REPO}/discussions/7"
    assert f"  pull request: {result.pr_url}" in result.report()
    assert {f.path for f in result.files} == {p.name for p in exported.iterdir()}


def test_main_revision_creates_no_branch(exported: Path) -> None:
    client = FakeHub()
    push_folder(folder=exported, request=PushRequest(repo_id=REPO, revision="main"),
                token=SECRET, commit_message="upload", api=client)
    assert client.called("create_branch") == []
    assert client.called("upload_folder")[0]["revision"] == "main"


def test_files_missing_on_the_hub_are_an_error(exported: Path) -> None:
    client = FakeHub(drop=("README.md", "config.json"))
    with pytest.raises(LhConvertError, match=r"incomplete: README.md, config.json not on the hub"):
        push_folder(folder=exported, request=PushRequest(repo_id=REPO), token=SECRET,
                    commit_message="upload", api=client)


def test_private_push_to_an_existing_public_repo_uploads_nothing(exported: Path) -> None:
    client = FakeHub(remote_private=False)
    with pytest.raises(LhConvertError, match="already exists and is public"):
        push_folder(folder=exported, request=PushRequest(repo_id=REPO, private=True),
                    token=SECRET, commit_message="upload", api=client)
    assert client.called("upload_folder") == []


def test_hub_failure_is_one_line_without_the_token(exported: Path) -> None:
    failure = ConnectionError(f"proxy refused Authorization: Bearer {SECRET}\nmore detail")
    client = FakeHub(fail_upload=failure)
    with pytest.raises(LhConvertError) as error:
        push_folder(folder=exported, request=PushRequest(repo_id=REPO), token=SECRET,
                    commit_message="upload", api=client)
    message = str(error.value)
    assert "\n" not in message and SECRET not in message and "***" in message
    assert f"`hf upload {REPO} {exported} .`" in message


def test_stale_remote_weights_are_reported(exported: Path) -> None:
    client = FakeHub(remote_extra=("pytorch_model.bin", "old/model.safetensors", ".gitattributes"))
    result = push_folder(folder=exported, request=PushRequest(repo_id=REPO), token=SECRET,
                         commit_message="upload", api=client)
    assert result.stale_weights == ("pytorch_model.bin",)
    assert "pytorch_model.bin" in result.warnings()[0]
