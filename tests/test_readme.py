"""The README runs as written: every command and Python block, in order, on the demo data, offline, sizes shortened.

Each ```bash / ```python block is tagged on the line before it:
``<!-- readme-test: run -->`` runs it and wants every command to succeed; ``<!-- readme-test: needs WHAT -->``
runs each command here, where WHAT is missing, and wants a one-line message naming the problem (never a traceback
or an "unexpected" error); ``<!-- readme-test: skip (why) -->`` is for what CI runs anyway.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
SHORTER = [("--train 400 --val 100", "--train 16 --val 6"), ("--max_steps 200", "--max_steps 2")]  # the slow ones shortened


def _blocks() -> list[tuple[int, str, str, str]]:
    """(line, tag, language, text) of every bash and python block of the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(bash|python)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        tag = re.match(r"^<!-- readme-test: (\w+)", lines[i - 1]) if i else None
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append((i + 1, tag.group(1) if tag else "", fence.group(1), "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


BLOCKS = _blocks()


def _commands(text: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, the slow sizes shortened."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            command = " ".join(shlex.quote(w) for w in words)
            for slow, short in SHORTER:
                command = command.replace(slow, short)
            out.append(command)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the README's commands run: the repository's configs, metrics and scripts at hand, a fresh data folder."""
    work = tmp_path_factory.mktemp("readme")
    for name in ("configs", "metrics", "dataset_scripts", "benchmarks"):
        (work / name).symlink_to(ROOT / name)
    return work


def _env(work: Path) -> dict:
    bin_dir = str(Path(sys.executable).parent)  # qid and python of this environment, as after `source .venv/bin/activate`
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(work / ".cache"), "OMP_NUM_THREADS": "1"}


def test_every_block_is_tagged():
    assert BLOCKS and all(tag in ("run", "needs", "skip") for _, tag, _, _ in BLOCKS), [(line, tag) for line, tag, _, _ in BLOCKS]


@pytest.mark.parametrize("line, tag, language, text", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_block(workdir, line, tag, language, text):
    if tag == "skip":
        pytest.skip("not run by the tests (see its tag)")
    env = _env(workdir)
    if language == "python":
        done = subprocess.run([sys.executable, "-c", text], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    for command in _commands(text):
        done = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        if tag == "run":
            assert done.returncode == 0, (command, done.stdout[-1500:], done.stderr[-3000:])
            continue
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        assert done.returncode != 0, command  # it needs what is not here
        assert re.match(r"^qid \S+: error: ", last) and "Traceback" not in done.stderr and "unexpected" not in last, (command, last)
