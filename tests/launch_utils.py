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


# A test-only hook, installed through a `sitecustomize.py` that the launched processes
# import first (its folder leads PYTHONPATH). Right after a worker process's accelerate
# state is set up (process group joined), it sleeps on one rank: the other ranks then run
# ahead, which makes an ordering race between ranks happen every time instead of by luck.
# It can also end one rank there with exit code 2, as a rank whose own error stops it.
RACE_HOOK = '''
import os

if "LOCAL_RANK" in os.environ:  # a worker started by the launcher, not the launcher itself
    import sys
    import time

    from accelerate.state import PartialState

    _init = PartialState.__init__
    _done = []

    def _delayed_init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        if _done:
            return
        _done.append(True)
        rank = os.environ.get("RANK")
        if rank == os.environ.get("RACE_HOOK_FAIL_RANK"):
            print(f"error: injected failure on process {rank}", file=sys.stderr, flush=True)
            os._exit(2)
        if rank == os.environ.get("RACE_HOOK_DELAY_RANK"):
            time.sleep(float(os.environ.get("RACE_HOOK_DELAY_S", "3")))

    PartialState.__init__ = _delayed_init
'''


def race_hook_env(folder: Path, delay_rank: int | None = None, seconds: float = 3.0,
                  fail_rank: int | None = None) -> dict[str, str]:
    """The environment for `run_script`/`start_script` that installs `RACE_HOOK` (written to
    `folder`): `delay_rank` sleeps `seconds` after joining, `fail_rank` exits 2 there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(RACE_HOOK)
    env = {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RACE_HOOK_DELAY_S": str(seconds)}
    if delay_rank is not None:
        env["RACE_HOOK_DELAY_RANK"] = str(delay_rank)
    if fail_rank is not None:
        env["RACE_HOOK_FAIL_RANK"] = str(fail_rank)
    return env
