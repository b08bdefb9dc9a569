"""One command on several processes (`accelerate launch`): the right process count, one
decision shared by all, one error message.

Process count. accelerate 1.15 has two traps here. `accelerate launch --cpu --num_processes 2` (and a
`distributed_type: MULTI_CPU` config, without mpirun) starts ONE process. And the form that
does start several CPU processes -- `--multi_gpu`, or accelerate_configs/cpu_2proc.yaml --
leaves each of them believing it is alone (`DistributedType.NO`, rank 0 of 1) unless
`cpu=True` reaches `PartialState`/`Accelerator`; `PartialState` ignores ACCELERATE_USE_CPU
and, without that variable, so does `Accelerator`. Every process would then do all the
work. `use_cpu()` gives the right `cpu=` argument, and `check_process_count` turns any
remaining disagreement with the launcher into an error instead of silent duplication.

Decisions and errors: see the section "decide once, act together" below.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import torch
from accelerate.utils import broadcast_object_list, get_int_from_env, parse_flag_from_env

from ddpm_lesion.core.errors import UserError

T = TypeVar("T")


class SupportsMain(Protocol):
    """`accelerate.PartialState` or `Accelerator`: all the helpers below need."""

    @property
    def is_main_process(self) -> bool: ...


def launched_processes() -> int:
    """How many processes the launcher (torchrun or MPI) started; 1 for plain `python`."""
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def use_cpu() -> bool:
    """`cpu=` for `PartialState`/`Accelerator`: asked for with ACCELERATE_USE_CPU, or several
    processes launched on a machine without CUDA."""
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (launched_processes() > 1 and not torch.cuda.is_available())


def check_process_count(num_processes: int) -> None:
    """Refuse to run when accelerate set up fewer processes than were launched (every process
    sees the same counts, so the error is shared: printed once)."""
    launched = launched_processes()
    if num_processes != launched:
        raise SharedUserError(f"the launcher started {launched} processes but accelerate set up {num_processes}; on CPU use "
                        f"`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...` or "
                        f"`accelerate launch --config_file accelerate_configs/cpu_2proc.yaml ...`.")


# ------------------------------------------------------------------ decide once, act together
#
# Under `accelerate launch` every process runs the same command. A check-then-write on a
# shared folder ("does it hold a run? then refuse; else write the config") made by every
# process races with the main process's write: a process that looks after the write sees a
# run that is not there for the others. So folder decisions are made by the main process
# alone and shared (`run_on_main_process`), work whose first run writes a cache is done by
# the main process first (`main_process_first`), and either way every process gets the
# same answer or the same error at the same moment: none is left waiting at a barrier.


class SharedUserError(UserError):
    """A `UserError` that every process raises together (a verdict the main process shared,
    or a check of the command line every process makes alike): only the main process prints
    it, so the user reads it once instead of once per process."""


def global_rank() -> int:
    """This process's rank among all launched processes (0 for plain `python`), read from the
    launcher's environment so it is known before and without a process group."""
    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0)


@contextlib.contextmanager
def same_on_every_process() -> Iterator[None]:
    """For checks whose inputs are the same on every process (the command line, the launcher's
    environment): their `UserError` is raised everywhere at once, so it is marked shared."""
    try:
        yield
    except SharedUserError:
        raise
    except UserError as err:
        raise SharedUserError(str(err)) from None


def run_on_main_process(state: SupportsMain, decide: Callable[[], T]) -> T:
    """Run `decide` on the main process only and hand its result to every process; if it
    raises `UserError`, every process raises it (the others would otherwise wait forever, or
    decide again from a folder the main process is already writing)."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = decide()
        except UserError as err:
            error = str(err)
    result, error = broadcast_object_list([result, error])
    if error is not None:
        raise SharedUserError(error)
    return result


def main_process_first(state: SupportsMain, work: Callable[[], T]) -> T:
    """Run `work` on the main process, then -- only if it succeeded -- on the others; each
    process returns its own result. For work that fills a cache the others then read (decoded
    images, a downloaded model): one writer, and a failure is reported once, not retried by
    every process."""
    result: T | None = None

    def first() -> None:
        nonlocal result
        result = work()

    run_on_main_process(state, first)
    return result if state.is_main_process else work()  # type: ignore[return-value]


PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_failed(err: BaseException) -> bool:
    """True for the error a collective raises when another process has ended (gloo/NCCL see
    its socket close): that process has printed the reason already."""
    return isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_GONE)


def run_command(command: Callable[[], int | None]) -> int:
    """The top of every command: its exit code, a `UserError` as one `error: ...` paragraph
    (exit 2) printed by one process, and a process whose peer ended first leaves quietly."""
    try:
        return int(command() or 0)
    except UserError as err:
        if not isinstance(err, SharedUserError) or global_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not peer_failed(err):
            raise
        print(f"process {global_rank()} stopped: another process ended first (its message is above).",
              file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Tear the process group down while the command still runs. Left to interpreter exit,
    gloo's worker threads may be destroyed while still joinable, and the C++ runtime then
    aborts a process whose work is done ("terminate called without an active exception",
    exit -6): a finished 2-rank `balance` failed that way under load."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
