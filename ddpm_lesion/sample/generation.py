"""Generate a folder of synthetic images: split across processes and shard jobs,
resumable after a kill, byte-identical however the work was split.

The steps, each in its own module: the main process checks the output folder
(`output_folder`) and lists the canonical blocks of indices of this job (`sharding`) that
still miss images; the processes deal those blocks out; each samples a block on its device
(`sampling`) while worker threads encode and write the previous block's PNGs with their
provenance (`provenance`); at the end the main process rebuilds the manifest and the
preview grids from what is on disk. Settings left on `auto` (sampler and steps, batch size,
precision) are resolved once, by the main process, before anything is planned (`autotune`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from diffusers import SchedulerMixin, UNet2DModel
from PIL import Image
from tqdm.auto import tqdm

from ddpm_lesion.core import run_files, wandb_review
from ddpm_lesion.core.distributed import (
    SharedUserError,
    check_process_count,
    main_process_first,
    run_on_main_process,
    same_on_every_process,
    use_cpu,
)
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.figures import encode_png
from ddpm_lesion.core.fileio import write_bytes_atomic
from ddpm_lesion.core.options import MixedPrecision, ReportTo
from ddpm_lesion.model.conditioning import class_index, load_class_names, null_label
from ddpm_lesion.model.pretrained import load_pipeline, model_sha256
from ddpm_lesion.sample.autotune import auto_batch_size, bf16_is_fast
from ddpm_lesion.sample.copy_rejection import (
    Reference,
    Slot,
    default_reference,
    fill_block,
    load_reference,
    png_fields,
    reserve_block,
)
from ddpm_lesion.sample.output_folder import OutputLayout, finalize, prepare_output, recorded_config, remove_leftovers
from ddpm_lesion.sample.provenance import image_settings, png_text
from ddpm_lesion.sample.sample_config import MAY_CHANGE_ON_RESUME, CompileMode, SampleConfig, validate
from ddpm_lesion.sample.sampler_records import read_distilled, read_picked_sampler
from ddpm_lesion.sample.samplers import (
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    SchedulerName,
    denoise,
    image_generators,
    initial_noise,
    make_scheduler,
)
from ddpm_lesion.sample.sharding import Shard, block_indices, num_blocks, parse_shard, shard_blocks

DEFAULT_SAMPLER = {"scheduler": DEFAULT_SCHEDULER.value, "num_inference_steps": DEFAULT_STEPS}

AUTOCAST_DTYPES: dict[MixedPrecision, torch.dtype | None] = {
    MixedPrecision.NO: None,
    MixedPrecision.FP16: torch.float16,
    MixedPrecision.BF16: torch.bfloat16,
}


@dataclasses.dataclass
class SampleSummary:
    made: int  # images this job wrote (all its processes)
    already_there: int  # images of this job found on disk and skipped
    seconds: float
    num_processes: int
    grids: list[Path]
    rejected: int = 0  # near copies turned down for the images now in the folder (--reject_copies)

    @property
    def images_per_second(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else 0.0


def distributed_state() -> PartialState:
    """This process's rank and the number of processes, checked against the launcher (see
    `ddpm_lesion.core.distributed` for why that is needed on CPU-only machines)."""
    state = PartialState(cpu=use_cpu())
    check_process_count(state.num_processes)
    return state


def generate(cfg: SampleConfig) -> SampleSummary:
    """Make this process's share of the images of `cfg` (of its `--shard`) not on disk yet.

    Every process returns; the summary's grids are filled in on the main process only."""
    with same_on_every_process():
        validate(cfg)
        wandb_review.wanted(cfg.report_to)  # a missing wandb fails now, not after the sampling
        shard = parse_shard(cfg.shard)
    state = distributed_state()
    model = main_process_first(state, lambda: _load_model(cfg))
    pipeline, source, distilled, class_idx = model.pipeline, model.source, model.distilled, model.class_idx
    shape, size, sha256, own_sampler = model.shape, model.size, model.sha256, model.own_sampler
    unet = pipeline.unet.to(state.device, memory_format=torch.channels_last)
    layout = OutputLayout(cfg.output_dir, cfg.prefix)
    guided = class_idx is not None and cfg.guidance_scale != 1.0
    cfg, auto_notes = run_on_main_process(state, lambda: _resolve(cfg, layout, source, unet, shape, state.device,
                                                                  guided, own_sampler))
    scheduler = make_scheduler(cfg.scheduler, pipeline.scheduler.config)
    if cfg.num_inference_steps > scheduler.config.num_train_timesteps:  # every process: the same shared cfg
        raise SharedUserError(f"--num_inference_steps {cfg.num_inference_steps} exceeds the model's "
                              f"{scheduler.config.num_train_timesteps} training timesteps.")
    settings = image_settings(model_sha256=sha256, seed=cfg.seed, scheduler=cfg.scheduler.value,
                              steps=cfg.num_inference_steps, batch_size=cfg.batch_size,
                              mixed_precision=cfg.mixed_precision.value, torch_compile=cfg.torch_compile.value,
                              native_size=(shape[2], shape[1]), size=size,
                              class_label=None if class_idx is None else cfg.class_label,
                              guidance_scale=cfg.guidance_scale)

    # The main process plans while the others wait; the job's missing blocks are then dealt
    # out round-robin, so a resumed run is balanced however the earlier one was split.
    job_size, todo = run_on_main_process(state, lambda: _plan(cfg, shard, layout, settings, state.print))
    reference = None
    if cfg.reject_copies is not None and todo:
        reference = run_on_main_process(state, lambda: load_reference(cfg.reject_copies, shape[1], cfg.train_csv,
                                                                      cfg.label_filter, cfg.id_column, None))
    job_todo = sum(len(missing) for _, missing in todo)
    state.print(_header(cfg, source, settings, state, job_size, job_todo, layout, auto_notes, distilled))
    if cfg.torch_compile is not CompileMode.NO:
        unet.compile(mode=cfg.torch_compile.value)

    start = time.perf_counter()
    _sample_and_write(unet, scheduler, todo[state.process_index::state.num_processes],
                      cfg=cfg, layout=layout, settings=settings, shape=shape, size=size, class_idx=class_idx,
                      state=state, reference=reference)
    state.wait_for_everyone()
    summary = SampleSummary(made=job_todo, already_there=job_size - job_todo, seconds=time.perf_counter() - start,
                            num_processes=state.num_processes, grids=[])
    if state.is_main_process:
        summary.grids, summary.rejected = finalize(layout, cfg.num_images, settings, cfg.reject_copies is not None)
        if cfg.report_to is ReportTo.WANDB:
            from ddpm_lesion.sample import sample_review  # wandb and the copy audit only when asked for

            sample_review.log_run(cfg, layout, summary.grids, summary.made, summary.images_per_second, source,
                                  settings)
        state.print(_summary_text(summary, layout))
    return summary


@dataclasses.dataclass
class _Model:
    """The model to sample and what the request needs from it, checked against the request."""

    pipeline: Any
    source: str
    distilled: dict[str, Any] | None
    class_idx: int | None
    shape: tuple[int, int, int]
    size: tuple[int, int]
    sha256: str
    own_sampler: tuple[dict[str, Any], str]


def _load_model(cfg: SampleConfig) -> _Model:
    pipeline, source = load_pipeline(cfg.model_dir, cfg.checkpoint)
    distilled = read_distilled(source)
    unet = pipeline.unet.eval()
    shape = _image_shape(unet)
    sha256 = model_sha256(unet)
    return _Model(pipeline, source, distilled, _class_to_generate(cfg, unet, source), shape,
                  _output_size(shape, cfg.output_size), sha256, model_sampler(source, sha256, distilled))


def model_sampler(source: str, sha256: str, distilled: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The sampler a model comes with, and why: a distilled model's own (`distilled.json`);
    else the one `ddpm-lesion pick-sampler` measured on these very weights (`sampler.json`,
    ignored once the weights have changed, e.g. by more training); else the default,
    DDPM with 50 steps, the origin's sampler."""
    if distilled is not None:
        return distilled, "distilled model"
    picked = read_picked_sampler(source)
    if picked is None:
        return DEFAULT_SAMPLER, "the default; ddpm-lesion pick-sampler finds a faster one that is as good"
    if picked.get("model_sha256") != sha256:
        return DEFAULT_SAMPLER, (f"the default; {run_files.PICKED_SAMPLER} there was measured on other weights, rerun "
                         "ddpm-lesion pick-sampler")
    return picked, f"measured as good as DDPM-50 on this model, {run_files.PICKED_SAMPLER}"


def _resolve(cfg: SampleConfig, layout: OutputLayout, source: str, unet: UNet2DModel, shape: tuple[int, int, int],
             device: torch.device, guided: bool, own_sampler: tuple[dict[str, Any], str]
             ) -> tuple[SampleConfig, list[str]]:
    """The automatic settings (`resolve_auto`) and the images to reject copies of
    (`_resolve_copy_check`), with their log lines; the output folder's record wins."""
    recorded = None if cfg.overwrite else recorded_config(layout)
    cfg, notes = resolve_auto(cfg, recorded, unet, shape, device, guided, own_sampler)
    cfg, note = _resolve_copy_check(cfg, source, recorded)
    return cfg, notes + [note]


def _resolve_copy_check(cfg: SampleConfig, source: str, recorded: dict[str, Any] | None) -> tuple[SampleConfig, str]:
    """`cfg` with the training images to reject copies of, and a log line: `--reject_copies`
    as given, none with `--no_reject_copies`, else `copy_rejection.default_reference`."""
    if cfg.reject_copies is not None:
        return cfg, f"copies of the training images in {cfg.reject_copies} rejected"
    if cfg.no_reject_copies:
        return cfg, "copies not checked (--no_reject_copies)"
    options, note = default_reference(source, recorded)
    return (cfg if options is None else dataclasses.replace(cfg, **options)), note


def resolve_auto(cfg: SampleConfig, recorded: dict[str, Any] | None, unet: UNet2DModel, shape: tuple[int, int, int],
                 device: torch.device, guided: bool, own_sampler: tuple[dict[str, Any], str] | None = None
                 ) -> tuple[SampleConfig, list[str]]:
    """`cfg` with its automatic settings made concrete, and a log line for each.

    A folder that already recorded a value (its `sample_config.yaml`) keeps it, so resuming
    never depends on today's free memory, on which machine resumes or on a changed default.
    Shard jobs that start at the same time may find no record yet and would each measure
    their own machine, so they must agree on a batch size given explicitly. `own_sampler` is
    the model's own sampler and why (`model_sampler`; default: DDPM-50).
    """
    recorded = recorded or {}
    own, why = own_sampler or (DEFAULT_SAMPLER, "the default")
    changes, notes = _resolve_sampler(cfg, recorded, own, why)
    if cfg.mixed_precision is MixedPrecision.AUTO:
        if recorded.get("mixed_precision") in {p.value for p in MixedPrecision} - {MixedPrecision.AUTO.value}:
            changes["mixed_precision"] = MixedPrecision(recorded["mixed_precision"])
            notes.append(f"mixed precision {changes['mixed_precision'].value} (auto: as recorded in the folder)")
        else:
            native = bf16_is_fast(device)
            changes["mixed_precision"] = MixedPrecision.BF16 if native else MixedPrecision.NO
            notes.append(f"mixed precision {changes['mixed_precision'].value} (auto: this {device.type} has "
                         f"{'native' if native else 'no native'} bf16)")
    if cfg.batch_size is None:
        if isinstance(recorded.get("batch_size"), int):
            changes["batch_size"] = recorded["batch_size"]
            notes.append(f"batch {changes['batch_size']} (auto: as recorded in the folder)")
        elif cfg.shard is not None:
            raise UserError("--shard needs an explicit --batch_size (the same for every shard job): an automatic "
                            "one depends on each machine's free memory, and images made with different batch sizes "
                            "differ.")
        else:
            precision = changes.get("mixed_precision", cfg.mixed_precision)
            changes["batch_size"] = auto_batch_size(unet, shape, device, AUTOCAST_DTYPES[precision],
                                                    rows_per_image=2 if guided else 1, ceiling=cfg.max_batch_size)
            notes.append(f"batch {changes['batch_size']} (auto: {'free memory' if device.type == 'cuda' else 'CPU'}, "
                         f"at most {cfg.max_batch_size})")
    return dataclasses.replace(cfg, **changes), notes


def _resolve_sampler(cfg: SampleConfig, recorded: dict[str, Any], own: dict[str, Any], why: str
                     ) -> tuple[dict[str, Any], list[str]]:
    """The automatic scheduler and step count (the changes to `cfg`) and a log line for them:
    what the folder recorded, else the model's own sampler (`model_sampler`)."""
    was_recorded = {"scheduler": recorded.get("scheduler") in {s.value for s in SchedulerName},
                    "num_inference_steps": isinstance(recorded.get("num_inference_steps"), int)}
    changes, described = {}, {}
    for name, in_record in was_recorded.items():
        if getattr(cfg, name) is None:
            changes[name], reason = (recorded[name], "as recorded in the folder") if in_record else (own[name], why)
            described.setdefault(reason, []).append(
                f"sampler {changes[name]}" if name == "scheduler" else f"{changes[name]} steps")
    if "scheduler" in changes:
        changes["scheduler"] = SchedulerName(changes["scheduler"])
    return changes, [f"{', '.join(what)} (auto: {reason})" for reason, what in described.items()]


def _distilled_warning(cfg: SampleConfig, source: str, distilled: dict[str, Any] | None) -> str | None:
    """A warning when a distilled model is sampled with other settings than it was distilled for:
    allowed (e.g. to measure how much worse), but never by accident."""
    if distilled is None or (cfg.scheduler.value, cfg.num_inference_steps) == (distilled["scheduler"],
                                                                              distilled["num_inference_steps"]):
        return None
    return (f"warning: the model in {source} was distilled for {distilled['num_inference_steps']} steps of "
            f"{distilled['scheduler']} (its {run_files.DISTILLED}); other settings, like {cfg.scheduler.value} with "
            f"{cfg.num_inference_steps} steps here, give poor images. Leave --scheduler and --num_inference_steps "
            f"unset to use its own.")


def _header(cfg: SampleConfig, source: str, settings: dict[str, str], state: PartialState, job_size: int,
            job_todo: int, layout: OutputLayout, auto_notes: list[str], distilled: dict[str, Any] | None) -> str:
    """What is about to happen, for the log: model, sampler, processes, work left."""
    lines = [f"model: {source} (sha256 {settings['model_sha256'][:16]}...)"]
    sampler = (f"{cfg.scheduler.value}, {cfg.num_inference_steps} steps, batch {cfg.batch_size}, "
               f"mixed precision {cfg.mixed_precision.value}, {settings['native_resolution']} px")
    if cfg.torch_compile is not CompileMode.NO:
        sampler += f", torch.compile {cfg.torch_compile.value}"
    if "class_label" in settings:
        sampler += f", class {settings['class_label']} (guidance {settings['guidance_scale']})"
    if settings["resolution"] != settings["native_resolution"]:
        sampler += f", resized to {settings['resolution']}"
    threads = f" with {torch.get_num_threads()} CPU threads each" if state.device.type == "cpu" else ""
    lines.append(f"{sampler}; {state.num_processes} process(es) on {state.device}{threads}")
    lines += [f"  {note}" for note in auto_notes]
    if warning := _distilled_warning(cfg, source, distilled):
        lines.append(warning)
    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", cfg.mixed_precision.value)
    if launcher_precision != cfg.mixed_precision.value:
        lines.append(f"note: accelerate's mixed precision '{launcher_precision}' is not used; precision is part of "
                     f"an image's identity, so it comes from --mixed_precision only.")
    shard = f"shard {cfg.shard}: " if cfg.shard else ""
    lines.append(f"{shard}{job_size} image(s), {job_size - job_todo} already in {layout.individual}, "
                 f"{job_todo} to make")
    return "\n".join(lines)


def _plan(cfg: SampleConfig, shard: Shard, layout: OutputLayout, settings: dict[str, str],
          log: Callable[[str], None]) -> tuple[int, list[tuple[int, list[int]]]]:
    """Check the output folder, clear this job's half-written leftovers, and list the job's
    blocks that still miss images. Returns (images in the job, [(block, missing indices)])."""
    record = dataclasses.replace(cfg, overwrite=False, shard=None)  # reusable with --config for the whole run
    prepare_output(layout, settings, record, MAY_CHANGE_ON_RESUME, cfg.overwrite, log)
    wanted = {b: _wanted(b, cfg) for b in shard_blocks(num_blocks(cfg.num_images, cfg.batch_size), shard)}
    remove_leftovers(layout, (i for indices in wanted.values() for i in indices))
    todo = [(b, missing) for b, indices in wanted.items()
            if (missing := [i for i in indices if not layout.image_path(i).exists()])]
    return sum(len(indices) for indices in wanted.values()), todo


def _sample_and_write(unet: UNet2DModel, scheduler: SchedulerMixin, work: list[tuple[int, list[int]]], *,
                      cfg: SampleConfig, layout: OutputLayout, settings: dict[str, str],
                      shape: tuple[int, int, int], size: tuple[int, int], class_idx: int | None,
                      state: PartialState, reference: Reference | None = None) -> None:
    """Sample each block on the device and hand its missing images to the PNG writers;
    with a `reference`, near copies of its training images are replaced first
    (`copy_rejection`)."""
    labels = None if class_idx is None else torch.full((cfg.batch_size,), class_idx, device=state.device)
    desc = "sampling" if state.num_processes == 1 else f"sampling (process 0 of {state.num_processes})"
    with _BackgroundWriter(workers=min(8, os.cpu_count() or 1), max_pending=4 * cfg.batch_size) as writer, \
            tqdm(total=sum(len(m) for _, m in work), unit="img", desc=desc, disable=not state.is_main_process,
                 dynamic_ncols=True) as bar:
        def sample(block: int) -> tuple[range, np.ndarray]:
            indices = block_indices(block, cfg.batch_size)
            generators = image_generators(cfg.seed, indices)
            noise = initial_noise(generators, shape).to(state.device)
            return indices, denoise(unet, scheduler, noise, generators, cfg.num_inference_steps,
                                    AUTOCAST_DTYPES[cfg.mixed_precision], class_labels=labels,
                                    guidance_scale=cfg.guidance_scale).cpu().numpy()  # the one sync per block

        for block, missing in work:
            indices, pixels = sample(block)
            if reference is None:
                slots = {i: Slot(pixels[i - indices.start], i) for i in missing}
            else:
                wanted = _wanted(block, cfg)
                slots = fill_block(wanted, pixels[:len(wanted)], reference,
                                   lambda round_, b=block: sample(reserve_block(b, round_, cfg.batch_size)))
            for i in missing:
                writer.submit(_save_image, slots[i].pixels, layout.image_path(i),
                              png_text(settings, i) | png_fields(slots[i]), size)
            bar.update(len(missing))


def _class_to_generate(cfg: SampleConfig, unet: UNet2DModel, source: str) -> int | None:
    """The class index to condition on: required for a class-conditional model, refused
    for an unconditional one (None)."""
    if unet.config.num_class_embeds is None:
        if cfg.class_label is not None:
            class_index(None, cfg.class_label, source)  # raises, naming the fix
        if cfg.guidance_scale != 1.0:
            raise UserError(f"--guidance_scale applies to class-conditional models; the model in {source} is "
                            f"unconditional.")
        return None
    names = load_class_names(source) or [str(i) for i in range(null_label(unet))]  # unnamed: by index
    if cfg.class_label is None:
        raise UserError(f"the model in {source} is class-conditional: choose what to generate with --class_label "
                        f"({', '.join(names)}).")
    return class_index(names, cfg.class_label, source)


def _wanted(block: int, cfg: SampleConfig) -> range:
    """The indices of `block` that are part of the run (the padding past the end is not)."""
    indices = block_indices(block, cfg.batch_size)
    return range(indices.start, min(indices.stop, cfg.num_images))


def _image_shape(unet: UNet2DModel) -> tuple[int, int, int]:
    """(channels, height, width) of the images the UNet was trained on."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return unet.config.in_channels, height, width


def _output_size(shape: tuple[int, int, int], output_size: int | None) -> tuple[int, int]:
    """(width, height) of the saved images: native, or `output_size` wide keeping the aspect."""
    _, height, width = shape
    if output_size is None:
        return width, height
    return output_size, round(output_size * height / width)


def _save_image(pixels: np.ndarray, path: Path, text: dict[str, str], size: tuple[int, int]) -> None:
    """Encode one image with its provenance and write it atomically (temp name, then rename),
    so a file under its final name is always complete."""
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    write_bytes_atomic(path, encode_png(image, text))


class _BackgroundWriter:
    """Encodes and writes PNGs on worker threads while the device samples the next block.

    zlib and file I/O release the GIL, so a few threads keep pace with a GPU. At most
    `max_pending` images wait in memory; the first failed write stops the run.
    """

    def __init__(self, workers: int, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png-writer")
        self._pending: deque[Future[None]] = deque()
        self._max_pending = max_pending

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._max_pending or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def __enter__(self) -> _BackgroundWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def _summary_text(summary: SampleSummary, layout: OutputLayout) -> str:
    grids = ", ".join(str(p) for p in summary.grids) or "none (a grid of n = 16, 36, 64 shows images 0..n-1, once all are on disk)"
    rejected = (f"{summary.rejected} near copies of training images rejected and replaced ({layout.rejected})\n"
                if summary.rejected else "")
    return (f"{rejected}made {summary.made} image(s) ({summary.already_there} were already there) in {summary.seconds:.1f} s, "
            f"{summary.images_per_second:.2f} images/s on {summary.num_processes} process(es)\n"
            f"images: {layout.individual}\nmanifest: {layout.manifest}\ngrids: {grids}")
