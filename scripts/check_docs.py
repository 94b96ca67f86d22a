#!/usr/bin/env python3
"""Follow README.md and docs/*.md as a newcomer would: every shell block, on a fresh clone.

    python scripts/check_docs.py [--setup] [--keep] [--only REGEX] [--list]

Clones the repository's committed state into a temporary folder, puts the data beside it
(``<tmp>/shared`` -> this checkout's ``../shared``: ESC-50 and the AudioSet weights), and runs
every command of every ```bash block after ``source .venv/bin/activate``, in the clone's root, as
the README says to. ``.venv`` is this checkout's (a link) unless ``--setup`` runs
``scripts/setup.sh`` in the clone first (minutes, needs the package registries).

Each command is matched against :data:`POLICIES` (first match wins); a command no policy names is
a failure, so a command added to the docs has to be given a way to be checked. How:

* ``run``: as written (optional ``[...]`` parts dropped), exit 0;
* ``run01``: as written, exit 0 or 1 (``diagnose``: 1 = drift/the model is affected);
* ``sub``: as written with the placeholders replaced (``DIR`` -> the shipped bundle, ...);
* ``server``: started in the background on a free port, checked ready, stopped (``localhost:8000``
  in later commands points at it);
* ``help``: long-running (training, calibration, the robustness sweep, downloads) or
  placeholder-only commands: their ``--help`` must exit 0;
* ``skip``: cloud commands (Modal) and the test suite itself, with the reason printed.

Inputs the commands name are written in the clone first: ``dog.wav`` and ``clip.wav`` (a
held-out ESC-50 dog clip), ``other.mp3``, ``field/site_a|site_b/*.flac`` and ``recordings/`` (held-out
ESC-50 clips). Prints one line per command (how, exit code, seconds) and exits 1 if any failed.
``tests/test_readme_commands.py`` runs it (marked slow) and checks every command has a policy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/api.md", "docs/batch.md", "docs/design.md", "docs/diagnostics.md", "docs/live.md"]
SHIPPED = "tympan/assets/default"
ESC50 = "../shared/data/esc50"
#: placeholders of the docs and what stands in for them (``sub``)
SUBSTITUTIONS = [(r"~/data/ESC-50", ESC50), (r"--data-dir DIR\b", f"--data-dir {ESC50}"),
                 (r"--bundle DIR\b", f"--bundle {SHIPPED}"), (r"^tympan predict archive/", "tympan predict field/")]
#: (regex on the command, how, why): first match wins
POLICIES: list[tuple[str, str, str]] = [
    (r"^bash scripts/setup\.sh && \.venv/bin/tympan up$", "up", "set-up is done once (--setup); `up --check`"),
    (r"^bash scripts/setup\.sh && \.venv/bin/python -m pytest", "skip", "the test suite itself (it runs this script)"),
    (r"^tympan up\b", "up", "`--check`: exits after the example prediction"),
    (r"^tympan data esc50\b", "help", "downloads the 600 MB release"),
    (r"^tympan data verify ~/data/ESC-50", "sub", "the copy beside the checkout stands in for ~/data/ESC-50"),
    (r"^tympan data (inspect|ood)\b", "run", ""),
    (r"^tympan data featurize --data-dir DIR", "sub", "DIR = the ESC-50 copy beside the checkout"),
    (r"^tympan (train|evaluate)\b", "help", "training takes minutes to hours"),
    (r"^tympan serve$", "server", "the shipped model, on a free port"),
    (r"^tympan serve\b", "help", "variants of the server just started"),
    (r"^tympan predict archive/", "sub", "archive/ = the generated field folder"),
    (r"^tympan predict\b", "run", ""),
    (r"\| tympan listen\b", "skip", "needs a sound card (arecord)"),
    (r"^tympan listen\b", "help", "a stream, sound card or watched folder runs until stopped"),
    (r"^tympan events\b", "help", "reads the store a listener or the server wrote"),
    (r"^curl\b", "run", "against the server started above"),
    (r"^python -c .*\| curl\b", "run", "against the server started above"),
    (r"^tympan dashboard\b", "server", "on a free port"),
    (r"^TYMPAN_ESC50_DIR=\S+ streamlit run dashboard$", "server", "on a free port"),
    (r"^tympan calibrate\b", "help", "330 s and more on the shared CPU"),
    (r"^diagnose --bundle DIR( \[--out DIR\])?$", "sub", "DIR = the shipped bundle"),
    (r"^diagnose --bundle DIR --fit", "help", "calibrates: minutes"),
    (r"^diagnose --robustness\b", "help", "17 minutes on 400 clips"),
    (r"^diagnose --field-dir\b", "run01", "exit 1 = the model is affected (still a report)"),
    (r"^tympan adapt\b", "help", "needs your recordings and minutes of BatchNorm passes"),
    (r"^(pip install 'tympan\[modal\]'|(\S+=\S+ )?modal )", "skip", "needs a Modal account"),
    (r"^\.venv/bin/tympan data ood --dest /tmp/", "help", "the benchmark's input: `tympan data ood` ran above"),
    (r"^bash scripts/build_other_sources\.sh\b", "skip", "downloads about 365 MB of Debian packages"),
    (r"^\.venv/bin/python benchmarks/\S+\.py\b", "help", "benchmarks take minutes on the shared CPU"),
]


@dataclass
class Command:
    text: str
    doc: str
    line: int


def commands(root: Path = REPO) -> list[Command]:
    """Every command of every ```bash block of the docs: continuation lines joined, comments dropped."""
    out = []
    for doc in DOCS:
        text = (root / doc).read_text(encoding="utf-8")
        for m in re.finditer(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M):
            first = text[: m.start(1)].count("\n") + 1
            pending, start = "", first
            for i, raw in enumerate(m.group(1).splitlines()):
                line = re.sub(r"\s{2,}#\s.*$", "", raw).rstrip()  # a trailing comment
                if not pending and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                if not pending:
                    start = first + i
                if line.endswith("\\"):
                    pending += line[:-1].strip() + " "
                    continue
                out.append(Command((pending + line.strip()).strip(), doc, start))
                pending = ""
    return out


def policy(cmd: str) -> tuple[str, str]:
    for pattern, how, why in POLICIES:
        if re.search(pattern, cmd):
            return how, why
    return "none", "no policy in scripts/check_docs.py names this command"


def as_run(cmd: str) -> str:
    """The command with its optional ``[...]`` parts and a trailing ``&`` dropped."""
    return re.sub(r"\s+\[(?:-|\.\.\.)[^\]]*\]", "", cmd).rstrip(" &")  # `[--opt x]`, `[...]`; not `argv[1]`


def help_of(cmd: str) -> str:
    """``tympan train --data-dir X`` -> ``tympan train --help``; ``diagnose --x`` -> ``diagnose --help``."""
    words = as_run(cmd).split()
    prog = words[:2] if words[0].endswith("python") else words[:1]  # python SCRIPT.py
    for w in words[len(prog):len(prog) + 2]:
        if w.startswith("-") or "/" in w or "." in w or w.isupper():
            break
        prog.append(w)
    return " ".join(prog + ["--help"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def write_inputs(clone: Path) -> None:
    """The files the docs' commands name, from held-out ESC-50 clips (fold 5)."""
    import soundfile as sf

    audio = sorted((clone / ESC50 / "audio").glob("5-*.flac"))
    if not audio:
        raise SystemExit(f"{clone / ESC50}: no ESC-50 copy beside the checkout")
    dog = next(p for p in audio if p.stem.endswith("-0"))
    y, sr = sf.read(dog, dtype="float32")
    sf.write(clone / "dog.wav", y, sr, subtype="PCM_16")
    shutil.copyfile(clone / "dog.wav", clone / "clip.wav")
    try:
        sf.write(clone / "other.mp3", y, sr, format="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):  # a libsndfile without MP3: inspect says why
        (clone / "other.mp3").write_bytes(b"not an mp3")
    for i, src in enumerate(audio[:24]):
        # field/: two sites (for --by site) and a few files at the top (for field/*.flac)
        for folder in (f"field/site_{'ab'[i % 2]}", "recordings", *(["field"] if i < 3 else [])):
            (clone / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, clone / folder / src.name)


@dataclass
class Result:
    cmd: Command
    how: str
    ran: str
    rc: int | None
    seconds: float
    ok: bool
    note: str


class Runner:
    def __init__(self, clone: Path, logs: Path) -> None:
        self.clone, self.logs = clone, logs
        self.env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONUNBUFFERED": "1", "TYMPAN_TORCH_THREADS": "1"}
        self.env.pop("TYMPAN_ESC50_DIR", None)  # the docs' commands name their folders
        self.servers: list[subprocess.Popen] = []
        self.api_port: int | None = None
        self.helped: dict[str, tuple[int, str]] = {}
        self.n = 0

    def shell(self, line: str) -> list[str]:
        return ["bash", "-c", f"source .venv/bin/activate && {line}"]

    def log(self) -> Path:
        self.n += 1
        return self.logs / f"{self.n:02d}.log"

    def run(self, line: str, timeout: float = 900) -> tuple[int, str]:
        log = self.log()
        with open(log, "w") as out:
            out.write(f"$ {line}\n")
            out.flush()
            try:
                rc = subprocess.run(self.shell(line), cwd=self.clone, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        return rc, str(log)

    def start(self, line: str, health: str) -> tuple[int, str]:
        log = self.log()
        out = open(log, "w")  # noqa: SIM115 - closed with the process
        out.write(f"$ {line}\n")
        out.flush()
        proc = subprocess.Popen(self.shell(f"exec env {line}"),  # env: `VAR=x cmd` as in the docs cwd=self.clone, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append(proc)
        try:
            wait_http(health, proc)
            return 0, str(log)
        except RuntimeError as exc:
            out.write(f"\ncheck_docs: {exc}\n")
            return 1, str(log)

    def stop_all(self) -> None:
        for p in self.servers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in self.servers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.servers.clear()

    def check(self, cmd: Command) -> Result:
        how, why = policy(cmd.text)
        t0 = time.monotonic()
        ran, rc, ok_codes = "", None, (0,)
        if how == "none":
            return Result(cmd, how, "", None, 0.0, False, why)
        if how == "skip":
            return Result(cmd, how, "", None, 0.0, True, why)
        line = as_run(cmd.text)
        if self.api_port is not None:
            line = line.replace("localhost:8000", f"localhost:{self.api_port}")
        if how == "sub":
            for pattern, value in SUBSTITUTIONS:
                line = re.sub(pattern, value, line)
        if how == "help":
            ran = help_of(cmd.text)
            if ran in self.helped:  # the same --help passed above: not run again (each costs ~15 s of imports)
                rc, log = self.helped[ran]
            else:
                rc, log = self.helped[ran] = self.run(ran)
        elif how == "up":
            line = re.sub(r"\s\[(-[^\]]*)\]", r" \1", cmd.text)  # up's optional parts are what it hands over
            ran = (re.sub(r"^bash scripts/setup\.sh && \.venv/bin/", "", line)
                   + f" --check --api-port {free_port()} --dashboard-port {free_port()}")
            rc, log = self.run(ran)
        elif how == "server":
            port = free_port()
            if line.startswith("tympan serve"):
                ran, health = f"{line} --port {port}", f"http://127.0.0.1:{port}/ready"
                self.api_port = port
            elif line.startswith("tympan dashboard"):
                ran, health = f"{line} --port {port} --headless", f"http://127.0.0.1:{port}/_stcore/health"
            else:
                ran = f"{line} --server.port {port} --server.headless true"
                health = f"http://127.0.0.1:{port}/_stcore/health"
            rc, log = self.start(ran, health)
            if "dashboard" in line:  # the API keeps running for the curl commands; a dashboard need not
                self.servers[-1].send_signal(signal.SIGINT)
        else:
            ran = line
            if how == "run01":
                ok_codes = (0, 1)
            if line.startswith(("curl", "python -c")) and self.api_port is None:
                return Result(cmd, how, ran, None, 0.0, False, "no server started before this command")
            if "curl" in line:  # curl exits 0 on an HTTP error: make it fail on one
                ran = line.replace("curl -s ", "curl -sf ").replace("curl -F ", "curl -sf -F ")
            rc, log = self.run(ran)
        seconds = time.monotonic() - t0
        return Result(cmd, how, ran, rc, seconds, rc in ok_codes, f"{why} [log {log}]".strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", action="store_true", help="run scripts/setup.sh in the clone (else link .venv)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and its logs")
    ap.add_argument("--only", default=None, help="only commands matching this regex")
    ap.add_argument("--list", action="store_true", help="print each command and how it is checked, run nothing")
    args = ap.parse_args(argv)
    cmds = [c for c in commands() if args.only is None or re.search(args.only, c.text)]
    if args.list:
        for c in cmds:
            how, why = policy(c.text)
            print(f"{c.doc}:{c.line}  [{how}] {c.text}" + (f"  ({why})" if why else ""))
        return 0 if all(policy(c.text)[0] != "none" for c in cmds) else 1
    tmp = Path(tempfile.mkdtemp(prefix="tympan-check-docs-"))
    clone = tmp / "tympan"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        (tmp / "shared").symlink_to((REPO.parent / "shared").resolve())
        if args.setup:
            subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, check=True)
        else:
            (clone / ".venv").symlink_to((REPO / ".venv").resolve())
        write_inputs(clone)
        logs = tmp / "logs"
        logs.mkdir()
        runner = Runner(clone, logs)
        results = []
        try:
            for c in cmds:
                r = runner.check(c)
                results.append(r)
                mark = "ok  " if r.ok else "FAIL"
                rc = "-" if r.rc is None else str(r.rc)
                print(f"{mark} {c.doc}:{c.line} [{r.how}] rc {rc} {r.seconds:5.1f} s  {c.text}"
                      + (f"\n       ran: {r.ran}" if r.ran and r.ran != c.text else "")
                      + (f"\n       {r.note}" if r.note else ""), flush=True)
        finally:
            runner.stop_all()
        failed = [r for r in results if not r.ok]
        for r in failed:
            print(f"\n--- {r.cmd.doc}:{r.cmd.line}: {r.cmd.text}")
            log = re.search(r"\[log (.+)\]", r.note)
            if log and Path(log.group(1)).is_file():
                print("\n".join(Path(log.group(1)).read_text(errors="replace").splitlines()[-15:]))
        n_run = sum(r.how not in ("skip", "none") for r in results)
        print(f"\n{len(results)} commands: {n_run} checked, {sum(r.how == 'skip' for r in results)} skipped, "
              f"{len(failed)} failed")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
