"""The replication's corpus: Python sources every machine with the venv has offline, cut into
long documents (most outlast 64K positions), for `replicate.py prepare`."""

from __future__ import annotations

import sys
from pathlib import Path

# Packages whose .py sources join the standard library in the corpus (with this venv's versions).
CORPUS_PACKAGES = ("numpy", "pandas", "networkx", "sympy")
DOCUMENT_CHARACTERS = 320_000  # about 90K SmolLM2 tokens: most documents outlast 64K positions


def build_sources(out: Path) -> dict:
    """Write the corpus as .txt documents: each group's .py files (sorted, tests left out) are
    concatenated, each under a `# file: PATH` line, and cut at file boundaries into documents
    of at most DOCUMENT_CHARACTERS (a longer file is a document of its own)."""
    import importlib.metadata
    import sysconfig

    from lh_convert.train.data import builtin_corpus_files

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    groups = {f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib":
              (stdlib, builtin_corpus_files())}
    site = Path(sysconfig.get_paths()["purelib"])
    for package in CORPUS_PACKAGES:
        root = site / package
        groups[f"{package}-{importlib.metadata.version(package)}"] = (site, sorted(
            path for path in root.rglob("*.py")
            if not {"test", "tests", "testing", "__pycache__"} & set(path.relative_to(root).parts)
            and not path.name.startswith("test_")))
    summary = {}
    for name, (base, files) in groups.items():
        folder = out / name
        folder.mkdir(parents=True)
        documents, parts, size, characters = 0, [], 0, 0
        for path in files:
            try:
                text = f"# file: {path.relative_to(base).as_posix()}\n{path.read_text('utf-8')}\n"
            except UnicodeDecodeError:
                continue
            if parts and size + len(text) > DOCUMENT_CHARACTERS:
                (folder / f"{documents:04d}.txt").write_text("".join(parts), encoding="utf-8")
                documents, parts, size = documents + 1, [], 0
            parts.append(text)
            size += len(text)
            characters += len(text)
        if parts:
            (folder / f"{documents:04d}.txt").write_text("".join(parts), encoding="utf-8")
            documents += 1
        summary[name] = {"files": len(files), "documents": documents, "characters": characters}
    return summary
