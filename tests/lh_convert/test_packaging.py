"""A non-editable install: the built wheel carries the recipes, the lm-eval tasks and the model
aliases, and lh-convert finds them there (not in this checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import json, lh_convert
from lh_convert.convert.sources import load_aliases
from lh_convert.evaluate.runner import EVALS_DIR
from lh_convert.train.outlook import measured_studies
from lh_convert.train.recipes import available_recipes, load_recipe, recipes_dir
print(json.dumps({"package": lh_convert.__file__, "recipes_dir": str(recipes_dir()),
                  "recipes": sorted(available_recipes()),
                  "ctx": load_recipe("smollm2-135m-64k").ctx,
                  "evals_dir": str(EVALS_DIR),
                  "tasks": sorted(p.name for p in EVALS_DIR.glob("*.yaml")),
                  "template": (EVALS_DIR / "_retrieval_template").is_file(),
                  "hooks": (EVALS_DIR / "utils.py").is_file(),
                  "aliases": "smollm2-135m-gguf" in load_aliases(),
                  "studies": len(measured_studies())}))
"""


def test_a_built_wheel_finds_its_recipes_and_tasks(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("lh_convert-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(target)), found
    assert found["recipes_dir"].startswith(str(target)) and found["evals_dir"].startswith(str(target))
    shipped = sorted(path.stem for path in (REPO / "recipes").glob("*.toml"))
    assert found["recipes"] == shipped and found["ctx"] == 65536
    assert found["tasks"] == sorted(path.name for path in (REPO / "evals").glob("*.yaml"))
    assert found["template"] and found["hooks"] and found["aliases"]
    recorded = json.loads((REPO / "docs" / "conversion" / "summary.json").read_text())
    assert found["studies"] == len(recorded) > 0  # plan and extend quote the shipped record
    help_text = subprocess.run([sys.executable, "-m", "lh_convert.cli", "--help"], cwd=tmp_path,
                               env=env, capture_output=True, text=True)
    assert help_text.returncode == 0 and "extend" in help_text.stdout, help_text.stderr
