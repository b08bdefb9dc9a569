"""Getting the process count right under `accelerate launch` on machines without GPUs.

accelerate 1.15 has two traps here. `accelerate launch --cpu --num_processes 2` (and a
`distributed_type: MULTI_CPU` config, without mpirun) starts ONE process. And the form that
does start several CPU processes -- `--multi_gpu`, or accelerate_configs/cpu_2proc.yaml --
leaves each of them believing it is alone (`DistributedType.NO`, rank 0 of 1) unless
`cpu=True` reaches `PartialState`/`Accelerator`; `PartialState` ignores ACCELERATE_USE_CPU
and, without that variable, so does `Accelerator`. Every process would then do all the
work. `use_cpu()` gives the right `cpu=` argument, and `check_process_count` turns any
remaining disagreement with the launcher into an error instead of silent duplication.
"""

from __future__ import annotations

import torch
from accelerate.utils import get_int_from_env, parse_flag_from_env

from ddpm_lesion.core.errors import UserError


def launched_processes() -> int:
    """How many processes the launcher (torchrun or MPI) started; 1 for plain `python`."""
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def use_cpu() -> bool:
    """`cpu=` for `PartialState`/`Accelerator`: asked for with ACCELERATE_USE_CPU, or several
    processes launched on a machine without CUDA."""
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (launched_processes() > 1 and not torch.cuda.is_available())


def check_process_count(num_processes: int) -> None:
    """Refuse to run when accelerate set up fewer processes than were launched."""
    launched = launched_processes()
    if num_processes != launched:
        raise UserError(f"the launcher started {launched} processes but accelerate set up {num_processes}; on CPU use "
                        f"`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...` or "
                        f"`accelerate launch --config_file accelerate_configs/cpu_2proc.yaml ...`.")
