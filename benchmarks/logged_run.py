"""Running a step of a benchmark as a subprocess: its output appended to a log, its CPU time measured, a failure
ending the benchmark; a training run once and reused after. Used by the benchmarks that train or predict."""

from __future__ import annotations

import re
import resource
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_logged(cmd: list, log: Path) -> float:
    """Run ``cmd`` (its items as strings, the repository root as cwd), its output appended to ``log`` after a
    ``$ cmd`` line; returns the CPU seconds it used.

    Raises:
        SystemExit: the command failed (its exit status and the log named).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    before = child_cpu_seconds()
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        rc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(map(str, cmd))}; see {log}")
    return child_cpu_seconds() - before


def slug(name: str) -> str:
    """A variant's run folder name: "rate 0.02, step at 250" -> rate_0.02_step_at_250."""
    return re.sub(r"[^0-9a-z.]+", "_", name.lower()).strip("_")


def variant_cmd(demo_cmd: list, out: Path, overrides: list[str]) -> list[str]:
    """A demo training command retrained as a benchmark variant: writing to ``out``, never resuming (a variant run is
    trained whole, :func:`trained_once`), no periodic checkpoints, with ``overrides`` appended (detectron2's later
    ``KEY VALUE`` wins)."""
    cmd = [str(c) for c in demo_cmd if str(c) != "--resume"]
    cmd[cmd.index("OUTPUT_DIR") + 1] = str(out)
    return [*cmd, "SOLVER.CHECKPOINT_PERIOD", str(10 ** 9), *overrides]


def trained_once(cmd: list, run: Path, log: Path) -> float | None:
    """Run the training ``cmd`` (which writes ``run/model_final.pth``) unless that file exists; returns the CPU
    seconds the training used, kept in ``run/cpu_seconds.txt`` so that a reused run still reports its cost (None for
    a run finished before that file was kept). The command is kept in ``run/command.txt``: a finished run is reused
    only for the same command (a run finished before that file was kept is taken to be this command's).

    Raises:
        SystemExit: ``run`` holds a training made with another command.
    """
    cpu_file, cmd_file = run / "cpu_seconds.txt", run / "command.txt"
    text = shlex.join(str(c) for c in cmd) + "\n"
    if (run / "model_final.pth").exists():
        if cmd_file.exists() and cmd_file.read_text() != text:
            raise SystemExit(f"{run} holds a training made with another command ({cmd_file}); delete it to train "
                             f"again with:\n{text}")
        if not cmd_file.exists():
            cmd_file.write_text(text)
    else:
        cpu_file.unlink(missing_ok=True)
        cpu = round(run_logged(cmd, log), 1)
        run.mkdir(parents=True, exist_ok=True)
        cpu_file.write_text(f"{cpu}\n")
        cmd_file.write_text(text)
    return float(cpu_file.read_text()) if cpu_file.exists() else None
