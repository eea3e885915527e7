"""Every code block of README.md runs as written (the two install commands at the top
are what CI itself runs). Each block runs in a fresh folder, in its own process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()[-1:]  # the marker line of the install commands
        if before and before[0] in ("<!-- demo-command -->", "<!-- test-command -->"):
            continue
        blocks.append((match.group(1), match.group(2)))
    return blocks


BLOCKS = readme_blocks()


def test_the_readme_has_code_blocks():
    assert len(BLOCKS) >= 6 and any(kind == "bash" for kind, _ in BLOCKS)


def test_a_passing_test_leaves_no_temporary_folder(pytestconfig):
    """The suite's runs write about 18 GB of checkpoints in all, which once filled CI's
    disk: a passing test's ``tmp_path`` is deleted when it ends."""
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"


@pytest.mark.parametrize("name", ["README.md", "benchmarks/README.md", "docs/design.md"])
def test_no_table_is_pasted_into_a_sentence(name):
    """Outside code blocks, a line with three or more cell separators is a table row and
    starts with ``|``: a text replacement once pasted a whole table in place of a word."""
    inside, pasted = False, []
    for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
        elif not inside and not line.lstrip().startswith("|") and line.count(" | ") >= 3:
            pasted.append(f"{name}:{number}: {line[:80]}")
    assert not pasted, pasted


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index, tmp_path):
    kind, code = BLOCKS[index]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_BACKEND", None)  # the blocks choose their own
    command = [sys.executable, "-c", code] if kind == "python" else ["bash", "-euo", "pipefail", "-c", code]
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"README block {index} ({kind}):\n{code}\n--- stderr:\n{completed.stderr[-4000:]}"
