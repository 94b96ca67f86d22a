"""The README's and docs' shell blocks work as written (issue #23).

The fast test checks that ``scripts/check_docs.py`` knows how to check every command of every
shell block (a new command needs a policy). The slow one runs it: a fresh clone with the data
beside it, every block followed after ``source .venv/bin/activate`` (minutes).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_docs.py"


def _check_docs():
    spec = importlib.util.spec_from_file_location("check_docs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_docs", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_every_documented_command_has_a_check() -> None:
    cd = _check_docs()
    cmds = cd.commands()
    assert len(cmds) > 40
    missing = [f"{c.doc}:{c.line} {c.text}" for c in cmds if cd.policy(c.text)[0] == "none"]
    assert not missing, missing
    ran = " ".join(c.text for c in cmds)
    assert "$(base64" not in ran  # "Argument list too long" for a 5-s clip
    # past the two set-up commands, programs come from the activated venv, as the README says
    assert "source .venv/bin/activate" in (REPO / "README.md").read_text(encoding="utf-8")


def test_help_of_a_command_is_its_subcommand_help() -> None:
    cd = _check_docs()
    assert cd.help_of("tympan train --data-dir X --arch cnn") == "tympan train --help"
    assert cd.help_of("diagnose --robustness --data-dir ESC50 [--max-clips 200]") == "diagnose --help"
    assert cd.help_of(".venv/bin/python benchmarks/diagnostics.py --reps 200") == (
        ".venv/bin/python benchmarks/diagnostics.py --help")
    assert cd.as_run("diagnose --bundle DIR [--out DIR]") == "diagnose --bundle DIR"


@pytest.mark.slow
def test_readme_and_docs_commands_run_on_a_fresh_clone(esc50_dir: Path) -> None:
    if not (REPO.parent / "shared" / "data" / "esc50" / "meta" / "esc50.csv").is_file():
        pytest.skip("the docs' commands name ../shared/data/esc50, which this checkout lacks")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=3000, env=env,
                         cwd=REPO)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
