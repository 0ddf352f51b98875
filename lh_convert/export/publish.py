"""Upload a verified export to the Hugging Face hub (``lh-convert export --push-to-hub``).

Everything goes through huggingface_hub's own ``HfApi``: create the repository, create the
branch, upload the folder in one commit (or one pull request), then list the remote files and
check that every local file arrived. The client is a parameter so tests can pass a stand-in.

The token comes from ``HF_TOKEN`` or the user's stored login (``hf auth login``). It is handed
to ``HfApi`` and nowhere else: never printed, logged, returned, or written to a file, and
scrubbed from any error message that reaches the user.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..util.errors import LhConvertError
from ..util.hub import short_reason

NO_TOKEN_MESSAGE = "no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --dry-run"
DEFAULT_BRANCH = "main"
# Remote weight files that transformers could load instead of, or beside, the ones uploaded.
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt",
                    ".pth", ".ckpt")


@dataclass(frozen=True)
class PushRequest:
    """Where and how to upload: ``repo_id`` (``org/name``), a new repository's visibility,
    the branch (``None``: the default branch), a pull request instead of a commit, or a
    dry run that uploads nothing and needs no token."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError:
            raise LhConvertError(f"--push-to-hub {self.repo_id!r} is not a hub repository id; "
                                 f"use org/name, e.g. my-name/smollm2-135m-64k") from None
        if "/" not in self.repo_id:
            raise LhConvertError(f"--push-to-hub {self.repo_id!r} names no owner; use org/name, "
                                 f"e.g. my-name/{self.repo_id}")
        if self.revision is not None and not self.revision.strip():
            raise LhConvertError("--revision is empty; pass a branch name or leave it out for main")


@dataclass(frozen=True)
class UploadFile:
    """One file of the upload: its path relative to the folder (with ``/``) and size in bytes."""

    path: str
    size: int


@dataclass(frozen=True)
class PushResult:
    """What was (or, for a dry run, would be) uploaded, and where it landed.

    ``target`` describes the destination for people; ``revision`` is where the files landed
    (the branch, or the pull request's ``refs/pr/N``; ``None`` for a dry run).
    ``stale_weights`` are weight files already in the repository at that revision that this
    upload did not write: transformers may load them, so the user is warned.
    """

    repo_id: str
    files: tuple[UploadFile, ...]
    dry_run: bool
    target: str
    revision: str | None = None
    repo_url: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    stale_weights: tuple[str, ...] = ()

    @property
    def total_size(self) -> int:
        return sum(file.size for file in self.files)

    def report(self) -> list[str]:
        """Lines for the user: the files of a dry run, or the URLs of a finished upload."""
        if self.dry_run:
            return [f"dry run: would upload {len(self.files)} files "
                    f"({format_size(self.total_size)}) to {self.repo_id} ({self.target}); "
                    f"nothing was uploaded",
                    *(f"  {file.size:>15,} bytes  {file.path}" for file in self.files)]
        return [f"pushed {len(self.files)} files ({format_size(self.total_size)}) to "
                f"{self.repo_id} ({self.revision}); every file is on the hub",
                f"  repository: {self.repo_url}",
                f"  pull request: {self.pr_url}" if self.pr_url else f"  commit: {self.commit_url}"]

    def warnings(self) -> list[str]:
        """One-line warnings for stderr (weight files of an earlier upload left in place)."""
        if not self.stale_weights:
            return []
        return [f"warning: {self.repo_id} ({self.revision}) also holds "
                f"{', '.join(self.stale_weights)} from an earlier upload, which transformers may "
                f"load instead of this export's weights; delete them on the hub"]


def format_size(size: int) -> str:
    """``1536`` -> ``1.5 KB`` (powers of 1000, as the hub shows sizes)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def resolve_token() -> str:
    """The token from ``HF_TOKEN`` or the stored login; a one-line error when there is none."""
    try:
        token = os.environ.get("HF_TOKEN", "").strip() or huggingface_hub.get_token()
    except Exception as error:  # get_token can fail in its OIDC exchange; one line, no token
        raise LhConvertError(f"cannot read the Hugging Face token ({short_reason(error)}); "
                             f"set HF_TOKEN or run `hf auth login`, or use --dry-run") from None
    if not token:
        raise LhConvertError(NO_TOKEN_MESSAGE)
    return token


def upload_files(folder: Path) -> tuple[UploadFile, ...]:
    """Every file under ``folder``, as ``upload_folder`` will send it, sorted by path."""
    folder = Path(folder)
    return tuple(UploadFile(path=path.relative_to(folder).as_posix(), size=path.stat().st_size)
                 for path in sorted(folder.rglob("*")) if path.is_file())


def plan_push(*, folder: Path, request: PushRequest) -> PushResult:
    """The dry run: what ``push_folder`` would upload; no client, no token, no network."""
    return PushResult(repo_id=request.repo_id, files=upload_files(folder), dry_run=True,
                      target=_describe_target(request))


def _describe_target(request: PushRequest) -> str:
    branch = request.revision or DEFAULT_BRANCH
    target = f"a pull request to {branch}" if request.create_pr else f"branch {branch}"
    return f"{target}, {'private' if request.private else 'default visibility'}"


def _retry_command(request: PushRequest, folder: Path) -> str:
    flags = "".join([f" --revision {request.revision}" if request.revision else "",
                     " --create-pr" if request.create_pr else "",
                     " --private" if request.private else ""])
    return f"`hf upload {request.repo_id} {shlex.quote(str(folder))} .{flags}`"


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _stale_weights(remote: set[str], local: set[str]) -> tuple[str, ...]:
    return tuple(sorted(name for name in remote - local
                        if "/" not in name and name.endswith(_WEIGHT_SUFFIXES)))


def push_folder(*, folder: Path, request: PushRequest, token: str | None, commit_message: str,
                api: HfApi | None = None) -> PushResult:
    """Upload ``folder`` to ``request.repo_id`` in one commit (or pull request) and check it.

    Args:
        folder: the finished, verified export.
        request: repository, visibility, branch, pull request.
        token: the user's token, given to ``HfApi`` only (ignored when ``api`` is passed).
        commit_message: the commit's (or pull request's) title.
        api: the hub client; default ``HfApi(token=token)``.

    Raises:
        LhConvertError: a hub call failed, ``--private`` was asked of an existing public
            repository, or a local file is missing from the remote listing afterwards.
    """
    folder = Path(folder)
    files = upload_files(folder)
    client = api if api is not None else HfApi(token=token)
    repo_id = request.repo_id
    try:
        # private=None keeps the account's or organisation's default for a new repository.
        repo_url = client.create_repo(repo_id, private=True if request.private else None,
                                      exist_ok=True, repo_type="model")
        if request.private and not client.repo_info(repo_id, repo_type="model").private:
            raise LhConvertError(f"{repo_id} already exists and is public, and --private does "
                                 f"not change an existing repository; make it private on the hub "
                                 f"or drop --private. Nothing was uploaded")
        if request.revision is not None and request.revision != DEFAULT_BRANCH:
            client.create_branch(repo_id, branch=request.revision, repo_type="model",
                                 exist_ok=True)
        info = client.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                                    revision=request.revision, create_pr=request.create_pr,
                                    commit_message=commit_message)
        landed = (info.pr_revision if request.create_pr else None) \
            or request.revision or DEFAULT_BRANCH
        remote = set(client.list_repo_files(repo_id, revision=landed, repo_type="model"))
    except LhConvertError:
        raise
    except Exception as error:  # the hub boundary: HTTP, network, auth and validation errors
        reason = _redact(short_reason(error), token)
        raise LhConvertError(f"pushing to {repo_id} failed ({reason}); the verified export in "
                             f"{folder} is complete: upload it with "
                             f"{_retry_command(request, folder)}") from None
    missing = [file.path for file in files if file.path not in remote]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LhConvertError(f"the upload to {repo_id} ({landed}) is incomplete: {shown} not on "
                             f"the hub; upload again with {_retry_command(request, folder)}")
    return PushResult(repo_id=repo_id, files=files, dry_run=False, target=_describe_target(request),
                      revision=landed, repo_url=str(repo_url), commit_url=info.commit_url,
                      pr_url=info.pr_url,
                      stale_weights=_stale_weights(remote, {file.path for file in files}))
