"""Run a repo script the way a user would: plain `python` for one process, `accelerate
launch` for several (CPU ranks talking over gloo), or in the background to be killed.

On a machine without GPUs, accelerate 1.15's `accelerate launch --cpu --num_processes 2`
starts a single process; `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
--num_processes 2` starts two ranks that our scripts set up as MULTI_CPU (see
`ddpm_lesion.core.distributed`). That second form is used here.

Defaults chosen for tests: CUDA hidden (so every run computes on the CPU and results can be
compared) and OMP_NUM_THREADS=1 (CPU float results depend on the thread count, and
`accelerate launch` gives each rank one thread; it also keeps tests polite on shared CPUs).
Pass `env` to override either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now, for `--main_process_port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_command(script: str, args: list[str], num_processes: int = 1, config_file: Path | None = None) -> list[str]:
    """The command line for `script` (relative to the repo root) with `args`.

    `config_file` launches through an accelerate config file instead of flags (its
    `num_processes` applies)."""
    path = str(REPO / script)
    if num_processes == 1 and config_file is None:
        return [sys.executable, path, *args]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    if config_file is not None:
        launch += ["--config_file", str(config_file)]
    else:
        launch += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, path, *args]


def script_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test defaults described above, over the current environment, under `env`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true",
            "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **(env or {})}


def run_script(script: str, args: list[str], num_processes: int = 1, env: dict[str, str] | None = None,
               timeout: float = 300, config_file: Path | None = None, cwd: Path | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """Run `script` to the end and return its exit code and (text) stdout/stderr."""
    return subprocess.run(script_command(script, args, num_processes, config_file), env=script_env(env),
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def start_script(script: str, args: list[str], num_processes: int = 1, env: dict[str, str] | None = None,
                 config_file: Path | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start `script` in the background, in its own process group, so a test can kill the
    launcher and every rank at once: `os.killpg(proc.pid, signal.SIGKILL)`.
    Output goes to pipes; read it with `proc.communicate()` after it ends."""
    return subprocess.Popen(script_command(script, args, num_processes, config_file), env=script_env(env),
                            cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
