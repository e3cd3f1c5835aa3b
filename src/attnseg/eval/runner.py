"""The evaluation runner: resumable (per-image records), sharded over processes, ending in metrics.json.

Run folder:
    config.json           the settings that must match for a run to be resumed (written once)
    launches.jsonl        one line per launch: command, cwd, time, processes, versions
    records/<phase>-r<rank>of<world>.jsonl   per-image records (sparse confusions), appended as images finish
    segmentor.json        what the segmentor reported about itself (model, settings) on its first image
    tau.json              the τ sweep and the chosen τ (τ searches only)
    metrics.json          mIoU, per-class IoU, pixel accuracy, protocol, τ, counts (written last, atomically)
    confusion.npy         the (C+1)×(C+1) int64 confusion matrix (last index: void)
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import json
import math
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnseg.errors import AttnsegError, BadConfigError, BadDatasetError
from attnseg.eval import metrics as M
from attnseg.eval.datasets import Sample, SegDataset, get_dataset
from attnseg.eval.presence import PresenceCounts, presence_mode, presence_record
from attnseg.eval.protocols import DEFAULT_CLASSES_PER_PROMPT, DEFAULT_TAU_GRID, Protocol, best_class, predict
from attnseg.eval.records import (
    ImageRecord,
    RecordLog,
    atomic_write_bytes,
    atomic_write_json,
    iter_logs,
    read_records,
)

FORMAT = 1
# Settings that do not change a single number and may differ between a run and its resumption.
_NOT_IDENTITY = ("out", "batch_size", "progress", "command", "device", "limit", "allow_pickle")
# What a segmentor reports about one image rather than about itself: left out of segmentor.json.
_PER_IMAGE_META = ("image", "image_size", "prompts", "diagnostics", "timings", "memory", "split_into_prompts")


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of one evaluation (the CLI's flags)."""

    dataset: str
    root: str
    out: str
    split: str | None = None
    model: str | None = None
    method: str = "goca"
    device: str | None = None
    dtype: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    timestep: int | None = None  # the denoising timestep the maps are read at (None: the model's preset)
    template: str | None = None  # prompt template with {} for the class list (None: the segmentor's default)
    allow_pickle: bool = False
    config_folder: str | None = None
    protocol: str = "oracle-tags"
    tau: float | None = None
    tau_search: str = "fixed"
    tau_split: str | None = None
    tau_root: str | None = None
    tau_images: int | None = 200
    tau_grid: tuple[float, ...] = DEFAULT_TAU_GRID
    no_background: str = "argmax"
    classes_per_prompt: int = DEFAULT_CLASSES_PER_PROMPT
    synonyms: bool = True
    seed: int = 0
    limit: int | None = None
    batch_size: int = 1
    segmentor: str | None = None  # MODULE:CALLABLE returning a segmentor, instead of attnseg.Segmentor
    segmentor_args: tuple[tuple[str, Any], ...] = ()
    presence: str | None = None  # on | off; None: on for the open protocol, off for oracle tags
    progress: bool = True
    command: tuple[str, ...] = ()

    def protocol_obj(self) -> Protocol:
        """The Protocol these settings describe (validated)."""
        return Protocol(
            name=self.protocol,
            tau=self.tau,
            tau_mode=self.tau_search,
            tau_grid=tuple(self.tau_grid),
            no_background=self.no_background,
            classes_per_prompt=self.classes_per_prompt,
            synonyms=self.synonyms,
        )

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that made the folder."""
        d = asdict(self)
        for k in _NOT_IDENTITY:
            d.pop(k)
        d["root"] = str(Path(self.root).expanduser().resolve())
        if self.tau_root:
            d["tau_root"] = str(Path(self.tau_root).expanduser().resolve())
        return json.loads(json.dumps(d))  # tuples → lists, as they read back from config.json


# -- processes -------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    """This process's place among the processes of a launch, and the collectives eval needs."""

    rank: int = 0
    world: int = 1
    owned: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of t over all processes."""
        if self.world == 1:
            return t
        buf = t.to(self.device).clone()
        torch.distributed.all_reduce(buf)
        return buf.cpu()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's obj, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def agree(self, err: BaseException | None) -> None:
        """Raise in every process when any one failed, so that no process waits forever for another."""
        errors = self.gather(None if err is None else f"{type(err).__name__}: {err}")
        if err is not None:
            raise err
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            r, e = failed[0]
            raise BadConfigError(f"process {r} of {self.world} failed, so this one stops too: {e}")


def _init_dist() -> _Dist:
    """Join the process group torchrun / accelerate describe in the environment (or one already made)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        backend = str(dist.get_backend())
        device = torch.device("cpu")
        if (
            backend == "nccl"
        ):  # a group made by the caller without a CPU backend: collectives need CUDA tensors
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return _Dist(dist.get_rank(), dist.get_world_size(), False, device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise BadConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():  # one GPU per process, as torchrun / accelerate number them
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    # Shards can finish far apart (a resumed run); the final reduction must not time out meanwhile.
    dist.init_process_group(backend=backend, timeout=timedelta(hours=12))
    return _Dist(dist.get_rank(), dist.get_world_size(), True)


# -- helpers ---------------------------------------------------------------------------------------------
def subset(samples: Sequence[Sample], n: int | None) -> list[Sample]:
    """n samples spread evenly over the sorted list (all of them when n is None or too large)."""
    if n is None or n >= len(samples):
        return list(samples)
    if n < 1:
        raise BadConfigError(f"a sample count must be at least 1, got {n}")
    return [samples[(i * len(samples)) // n] for i in range(n)]


@dataclass(frozen=True)
class _Failed:
    """What the prefetch thread hands over when producing an item raised: the error, raised by the consumer."""

    error: BaseException


class _End(enum.Enum):
    """The prefetch thread's last item: nothing follows."""

    END = enum.auto()


def _prefetch(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate items produced by a background thread (image decoding overlaps the model)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer, raised there
            q.put(_Failed(e))
        q.put(_End.END)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _End.END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def _jsonable(x: Any, depth: int = 0) -> Any:
    """A JSON-safe summary of a segmentor's meta (tensors and objects become short strings)."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if depth > 4:
        return str(x)[:200]
    if isinstance(x, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(x.items())[:200]}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in list(x)[:200]]
    if isinstance(x, torch.Tensor):
        return x.tolist() if x.numel() <= 16 else f"tensor{tuple(x.shape)}"
    return str(x)[:200]


def versions() -> dict[str, Any]:
    """Versions of Python, the libraries that change numbers, and the attnseg checkout."""
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("attnseg", "torch", "numpy", "pillow", "diffusers", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["cuda"] = torch.version.cuda
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode == 0:
            out["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def make_segmentor(cfg: EvalConfig) -> Any:
    """The segmentor a config names: attnseg.Segmentor.from_pretrained, or a MODULE:CALLABLE factory."""
    if cfg.segmentor:
        mod, _, attr = cfg.segmentor.partition(":")
        if not mod or not attr:
            raise BadConfigError(
                f"--segmentor {cfg.segmentor!r}: give MODULE:CALLABLE, e.g. attnseg.eval.fake:make"
            )
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise BadConfigError(f"--segmentor {cfg.segmentor!r} cannot be imported: {e}") from None
        return factory(**dict(cfg.segmentor_args))
    try:
        from attnseg import Segmentor  # type: ignore[attr-defined]
    except ImportError as e:
        raise BadConfigError(f"attnseg.Segmentor is not available in this installation ({e})") from None
    device = cfg.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    extra: dict[str, Any] = dict(cfg.overrides)
    if cfg.tau is not None:
        extra["tau"] = cfg.tau  # so that Segmentation.labels agree with the labels eval scores
    if cfg.template is not None:
        extra["template"] = cfg.template
    if cfg.config_folder is not None:
        extra["config_folder"] = cfg.config_folder
    seg = Segmentor.from_pretrained(
        cfg.model,
        method=cfg.method,
        device=device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        allow_pickle=cfg.allow_pickle,
        presence=presence_mode(cfg.presence, cfg.protocol),
        **extra,
    )
    if cfg.timestep is not None:
        preset = seg.backbone.preset
        if preset.sigma is not None:
            raise BadConfigError(
                f"--timestep: {cfg.model or 'this model'} is noised by σ ({preset.sigma}), not by a timestep"
            )
        seg.backbone.preset = dataclasses.replace(preset, timestep=cfg.timestep)
    return seg


def _model_name(info: Any) -> str | None:
    """A short model name from a segmentor's meta: a string, or the model id / family of a dict."""
    if isinstance(info, dict):
        return info.get("model_id") or info.get("name") or info.get("family")
    return str(info) if info else None


class _Lazy:
    """Build the segmentor on first use: a fully resumed run never loads the model."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.obj: Any = None

    def get(self) -> Any:
        if self.obj is None:
            self.obj = self.factory()
        return self.obj


# -- the run folder --------------------------------------------------------------------------------------
def _prepare_folder(out: Path, cfg: EvalConfig, d: _Dist) -> None:
    """Create the run folder or check that it belongs to these settings; record this launch."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    ident = cfg.identity()
    if path.exists():
        try:
            saved = json.loads(path.read_text())["identity"]
        except (ValueError, KeyError):
            raise BadConfigError(f"{path} is not an attnseg eval config; give this run a new --out") from None
        diff = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
        scored = any(f.stat().st_size for f in (out / "records").glob("*.jsonl"))
        if diff and not scored:
            # A run that stopped before scoring one image (a bad --model, say) holds nothing to keep: its
            # settings give way to the corrected command's instead of blocking it.
            atomic_write_json(
                path, {"format": FORMAT, "identity": ident, "settings": json.loads(json.dumps(asdict(cfg)))}
            )
            diff = []
        if diff:
            said = ", ".join(f"{k}={saved.get(k)!r} (now {ident.get(k)!r})" for k in diff)
            raise BadConfigError(
                f"{out} holds a run with other settings: {said}. Resume with the same settings, give a new "
                f"--out, or remove {out} to start it again"
            )
    else:
        atomic_write_json(
            path, {"format": FORMAT, "identity": ident, "settings": json.loads(json.dumps(asdict(cfg)))}
        )
    launch = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(cfg.command) or list(sys.argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "processes": d.world,
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "seed": cfg.seed,
        "versions": versions(),
    }
    with RecordLog(out / "launches.jsonl") as log:
        log.append(launch)


def _load_done(folder: Path, phase: str, want: set[str], own: RecordLog) -> dict[str, ImageRecord]:
    """Records of earlier launches (any process count) for the ids this process owns."""
    done: dict[str, ImageRecord] = {}
    logs = [(own.path, own.records)] + [
        (p, read_records(p)[0]) for p in iter_logs(folder, phase) if p != own.path
    ]
    for path, records in logs:
        for rec in records:
            if rec.get("id") in want and rec["id"] not in done:
                done[rec["id"]] = ImageRecord.from_json(rec, str(path))
    return done


# -- one phase: every image of a sample list, each scored once -------------------------------------------
class TauSource(enum.Enum):
    """Where a phase's τ comes from when it is not a number given in advance."""

    SEGMENTOR = "the segmentor's own τ (Segmentation.tau)"


@dataclass(frozen=True)
class _Phase:
    """What one pass over a list of images needs."""

    name: str  # "main" or "tau"
    dataset: SegDataset
    samples: list[Sample]
    tau: float | TauSource | None  # the τ of the record's confusion; None: grid only, or argmax labels
    want_grid: bool


@dataclass(frozen=True)
class _PhaseTotals:
    """A phase's records summed over every process."""

    conf: torch.Tensor  # (C+1)×(C+1)
    grid: torch.Tensor  # G×(C+1)×(C+1), empty without a grid
    tau: float | None
    images: int
    sec: float
    diag: dict[str, float]  # mean over images of each per-image diagnostic
    presence: PresenceCounts  # presence decisions against the ground truth (empty without a presence step)


class Runner:
    """Runs one evaluation in this process (one shard of it under torchrun / accelerate)."""

    def __init__(self, cfg: EvalConfig, segmentor_factory: Callable[[], Any] | None = None) -> None:
        """Settings, and optionally a factory that returns the segmentor (defaults to make_segmentor)."""
        self.cfg = cfg
        self.protocol = cfg.protocol_obj()
        self.out = Path(cfg.out).expanduser()
        self.seg = _Lazy(segmentor_factory or (lambda: make_segmentor(cfg)))
        self.seg_meta: dict[str, Any] | None = None
        if cfg.batch_size < 1:
            raise BadConfigError(f"--batch-size must be at least 1, got {cfg.batch_size}")

    # .. setup ..
    def _open(self, d: _Dist) -> tuple[SegDataset, list[Sample], SegDataset | None, list[Sample]]:
        """The data set(s) and sample lists; checks the held-out split is disjoint from the scored one."""
        cfg, protocol = self.cfg, self.protocol
        dataset = get_dataset(cfg.dataset, cfg.root, cfg.split)
        protocol.check(dataset)
        samples = subset(dataset.samples, cfg.limit)
        held, held_samples = None, []
        if protocol.tau_mode == "heldout":
            split = cfg.tau_split or (dataset.heldout_split if not cfg.tau_root else None)
            if split is None and not cfg.tau_root:
                raise BadConfigError(
                    f"{dataset.title} has no default held-out split: pass --tau-root (for the world: a folder "
                    "rendered with `attnseg world render --split train`) and/or --tau-split"
                )
            held = get_dataset(cfg.dataset, cfg.tau_root or cfg.root, split)
            overlap = held.scene_keys() & dataset.scene_keys()
            if overlap:
                raise BadConfigError(
                    f"the held-out split for τ ({held.root}, {held.split or 'all'}) shares {len(overlap)} images with "
                    f"the scored split ({dataset.root}, {dataset.split or 'all'}); choose τ on a split that is not scored "
                    "(or use --tau-search test-oracle to reproduce the paper's oracle sweep, labelled as such)"
                )
            held_samples = subset(held.samples, cfg.tau_images)
        return dataset, samples, held, held_samples

    def run(self) -> dict[str, Any]:
        """Evaluate, resuming from the run folder; every process returns the final metrics."""
        d = _init_dist()
        try:
            return self._run(d)
        finally:
            if d.owned:
                torch.distributed.destroy_process_group()

    def _run(self, d: _Dist) -> dict[str, Any]:
        err: AttnsegError | None = None
        try:
            dataset, samples, held, held_samples = self._open(d)
            if d.rank == 0:
                _prepare_folder(self.out, self.cfg, d)
        except AttnsegError as e:
            err = e
        d.agree(err)
        try:
            if d.rank != 0:
                self._check_folder()
        except AttnsegError as e:
            err = e
        d.agree(err)
        protocol = self.protocol
        uses_tau = protocol.uses_tau(dataset)
        tau_info: dict[str, Any] | None = None

        if uses_tau and protocol.tau_mode == "heldout":
            assert held is not None
            grid = self._phase(d, _Phase("tau", held, held_samples, None, True)).grid
            tau_info = self._choose_tau(dataset, grid, "heldout", held, len(held_samples))
            main = _Phase("main", dataset, samples, tau_info["chosen"], True)
        elif uses_tau and protocol.tau_mode == "test-oracle":
            main = _Phase("main", dataset, samples, None, True)
        elif uses_tau:
            tau = float(protocol.tau) if protocol.tau is not None else TauSource.SEGMENTOR
            main = _Phase("main", dataset, samples, tau, True)
        else:
            main = _Phase("main", dataset, samples, None, False)

        agg = self._phase(d, main)
        if uses_tau and protocol.tau_mode == "test-oracle":
            tau_info = self._choose_tau(dataset, agg.grid, "test-oracle", dataset, len(samples))
            tau = tau_info["chosen"]
            conf = agg.grid[list(protocol.tau_grid).index(tau)]
        else:
            conf = agg.conf
            tau = agg.tau if uses_tau else None
        result = self._metrics(dataset, samples, conf, tau, agg, tau_info, d)
        if d.rank == 0:
            if tau_info is not None:
                atomic_write_json(self.out / "tau.json", tau_info)
            buf = io.BytesIO()
            np.save(buf, conf.numpy())
            atomic_write_bytes(self.out / "confusion.npy", buf.getvalue())
            atomic_write_json(self.out / "metrics.json", result)
        return result

    def _check_folder(self) -> None:
        """A process other than rank 0 checks that the folder rank 0 prepared has these settings."""
        try:
            saved = json.loads((self.out / "config.json").read_text())["identity"]
        except (OSError, ValueError, KeyError):
            raise BadConfigError(
                f"{self.out}/config.json is missing: is --out on a file system all processes share?"
            ) from None
        if saved != self.cfg.identity():
            raise BadConfigError(
                f"{self.out}/config.json differs from this process's settings: launch every process alike"
            )

    # .. the pass over images ..
    def _phase(self, d: _Dist, ph: _Phase) -> _PhaseTotals:
        """Score this process's shard of ph.samples (skipping recorded images) and reduce over processes."""
        n = ph.dataset.num_classes + 1
        shard = ph.samples[d.rank :: d.world]
        want = {s.id for s in shard}
        folder = self.out / "records"
        err: BaseException | None = None
        recs: dict[str, ImageRecord] = {}
        log: RecordLog | None = None
        try:
            log = RecordLog(folder / f"{ph.name}-r{d.rank}of{d.world}.jsonl")
            recs = _load_done(folder, ph.name, want, log)
            self._score(ph, shard, log, recs, d)
        except Exception as e:  # noqa: BLE001 - handed to every process by agree(), then raised
            err = e
        finally:
            if log is not None:
                log.close()
        d.agree(err)
        return self._reduce(ph, [recs[s.id] for s in shard], n, d)

    def _score(
        self, ph: _Phase, shard: list[Sample], log: RecordLog, recs: dict[str, ImageRecord], d: _Dist
    ) -> None:
        """Segment the shard's unrecorded images and append one record per image.

        Batches are fixed blocks of the shard, so a resumed run puts every image in the same batch as an
        uninterrupted one: a block with any image missing is run again whole, and only the missing records are
        written. Images of a block with different class lists share it too (a segmentor with `segment_each`
        runs them in one forward; another is called once per class list).
        """
        from tqdm import tqdm

        cfg, protocol, ds = self.cfg, self.protocol, ph.dataset
        size = cfg.batch_size
        blocks = [shard[i : i + size] for i in range(0, len(shard), size)]
        todo = [b for b in blocks if any(s.id not in recs for s in b)]
        bar = tqdm(
            total=len(shard),
            initial=sum(s.id in recs for s in shard),
            unit="img",
            desc=f"{ds.name} {ph.name}" + (f" [rank 0 of {d.world}]" if d.world > 1 else ""),
            disable=not cfg.progress or d.rank != 0,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        running = M.ConfusionMeter(ds.num_classes)  # for the progress bar only

        def load(s: Sample) -> tuple[Sample, Any, np.ndarray, list[int]]:
            img, gt = ds.load_image(s), ds.load_mask(s)
            if gt.shape != (img.height, img.width):
                raise BadDatasetError(
                    f"{ds.title}: label {s.mask} is {gt.shape[1]}×{gt.shape[0]} but image {s.image} is {img.width}×{img.height}"
                )
            return s, img, gt, protocol.prompt_ids(ds, gt)

        items = _prefetch(map(load, (s for b in todo for s in b)), 2 * size)
        try:
            for block in todo:
                self._flush(ph, [next(items) for _ in block], log, recs, running, bar)
        finally:
            items.close()
            bar.close()

    def _flush(
        self,
        ph: _Phase,
        batch: list[Any],
        log: RecordLog,
        recs: dict[str, ImageRecord],
        running: M.ConfusionMeter,
        bar: Any,
    ) -> None:
        """Segment one batch (each image with its own class list) and record each image."""
        ds, protocol = ph.dataset, self.protocol
        images = [b[1] for b in batch]
        per_image: list[list[torch.Tensor]] = [[] for _ in batch]
        diags: list[list[dict[str, Any]]] = [[] for _ in batch]
        found: list[dict[str, Any]] = [{} for _ in batch]
        own_tau: float | None = None
        chunks = [protocol.chunks(b[3]) if b[3] else [] for b in batch]  # per image: its segment calls
        if any(chunks):
            self.seg.get()  # loaded before the clock starts: sec is segmentation time
        t0 = time.perf_counter()
        for step in range(max(map(len, chunks), default=0)):
            members = [j for j, c in enumerate(chunks) if step < len(c)]
            names = {j: [protocol.prompt_text(ds, i) for i in chunks[j][step]] for j in members}
            res = self._segment_rows(images, names)
            for j, r in res.items():
                sc = torch.as_tensor(r.scores)
                h, w = batch[j][2].shape
                if tuple(sc.shape) != (len(names[j]), h, w):
                    raise BadConfigError(
                        f"the segmentor returned scores of shape {tuple(sc.shape)} for {len(names[j])} classes on a "
                        f"{w}×{h} image; Segmentation.scores must be K×H×W at the image size"
                    )
                per_image[j].append(sc.float())
                diags[j] += (getattr(r, "meta", None) or {}).get("diagnostics") or []
                found[j] = presence_record(getattr(r, "meta", None), chunks[j][step], found[j])
                if getattr(r, "tau", None) is not None:
                    own_tau = float(r.tau)
            if self.seg_meta is None:
                meta = dict(getattr(res[members[0]], "meta", {}) or {})
                self.seg_meta = _jsonable({k: v for k, v in meta.items() if k not in _PER_IMAGE_META})
                self._save_meta()
        sec = (time.perf_counter() - t0) / len(batch)
        for j, (s, _img, gt, ids) in enumerate(batch):
            if s.id in recs:  # recorded by an earlier launch; its block was run again only for its neighbours
                continue
            rec = self._record(ph, s, gt, per_image[j], ids, own_tau, sec, _scalar_means(diags[j]))
            if found[j]:
                rec = replace(
                    rec,
                    present=tuple(found[j]["present"]),
                    presence_scores=dict(found[j]["presence_scores"]),
                )
            log.append(rec.to_json())
            recs[s.id] = rec
            bar.update(1)
            if rec.conf is not None:
                running.add_matrix(M.dense(rec.conf, ds.num_classes + 1))
                m = running.compute().miou
                if not math.isnan(m):
                    bar.set_postfix_str(f"mIoU {100 * m:.1f}", refresh=False)

    def _segment_rows(self, images: list[Any], names: dict[int, list[str]]) -> dict[int, Any]:
        """Segment images[j] with names[j] for every j: one batched call where the segmentor can take it."""
        seg, seed, order = self.seg.get(), self.cfg.seed, list(names)
        if hasattr(seg, "segment_each"):
            res = list(seg.segment_each([images[j] for j in order], [names[j] for j in order], seed=seed))
        else:  # a plain segmentor: one call per distinct class list
            res_of: dict[int, Any] = {}
            lists: dict[tuple[str, ...], list[int]] = {}
            for j in order:
                lists.setdefault(tuple(names[j]), []).append(j)
            for classes, js in lists.items():
                out = seg.segment([images[j] for j in js], list(classes), seed=seed)
                res_of.update(zip(js, list(out) if isinstance(out, (list, tuple)) else [out]))
            res = [res_of.get(j) for j in order]
        if len(res) != len(order) or any(r is None for r in res):
            raise BadConfigError(f"the segmentor returned {len(res)} results for {len(order)} images")
        return dict(zip(order, res))

    def _record(
        self,
        ph: _Phase,
        s: Sample,
        gt: np.ndarray,
        parts: list[torch.Tensor],
        ids: list[int],
        own_tau: float | None,
        sec: float,
        diag: dict[str, float],
    ) -> ImageRecord:
        """The per-image record: prompted ids, τ, sparse confusion and (for τ sweeps) the grid's confusions."""
        ds, protocol = ph.dataset, self.protocol
        n, fill = ds.num_classes + 1, protocol.fill(ds)
        tau: float | None
        if ph.tau is TauSource.SEGMENTOR:
            tau = own_tau  # None when nothing was prompted: every pixel is background whatever τ is
            if parts and tau is None:
                raise BadConfigError("the segmentor reports no τ (Segmentation.tau is missing): pass --tau")
        else:
            tau = ph.tau
        sec = round(sec, 4)
        if not parts:  # nothing to prompt: every pixel is background (or void)
            gt_t = torch.from_numpy(gt)
            flat = tuple(M.sparse(M.confusion(gt_t, torch.full_like(gt_t, fill), n)))
            conf = flat if ph.tau is not None or not ph.want_grid else None
            grid = (flat,) * len(protocol.tau_grid) if ph.want_grid else None
            return ImageRecord(s.id, tuple(ids), None, conf, grid, sec, diag)
        scores = torch.cat(parts, 0)
        gt_t = torch.from_numpy(gt).to(scores.device)
        if not protocol.uses_tau(ds):
            conf = tuple(M.sparse(M.confusion(gt_t, predict(scores, ids, None, fill), n)))
            return ImageRecord(s.id, tuple(ids), None, conf, None, sec, diag)
        grid = None
        if ph.want_grid:
            best, bid = best_class(scores, ids)
            grid = tuple(
                tuple(M.sparse(g)) for g in M.grid_confusions(gt_t, best, bid, protocol.tau_grid, fill, n)
            )
        conf = None
        if tau is not None:
            conf = tuple(M.sparse(M.confusion(gt_t, predict(scores, ids, tau, fill), n)))
        return ImageRecord(s.id, tuple(ids), tau, conf, grid, sec, diag)

    def _save_meta(self) -> None:
        """segmentor.json: what the segmentor said about itself, once per run folder."""
        path = self.out / "segmentor.json"
        if self.seg_meta is not None and not path.exists():
            try:
                atomic_write_json(path, {"meta": self.seg_meta})
            except OSError:
                pass  # another process wrote it at the same moment

    # .. reduction ..
    def _reduce(self, ph: _Phase, recs: list[ImageRecord], n: int, d: _Dist) -> _PhaseTotals:
        """Sum this shard's records and reduce over processes."""
        g = len(self.protocol.tau_grid)
        conf = torch.zeros(n, n, dtype=torch.int64)
        grid = torch.zeros(g if ph.want_grid else 0, n, n, dtype=torch.int64)
        taus: set[float] = set()
        sec = 0.0
        diag_sum: dict[str, float] = {}
        diag_count: dict[str, int] = {}
        presence = PresenceCounts.zeros(n)
        err: BaseException | None = None
        try:
            for rec in recs:
                presence.add(rec, n)
                if rec.conf is not None:
                    conf += M.dense(rec.conf, n)
                if ph.want_grid:
                    if rec.grid is None or len(rec.grid) != g:
                        raise BadConfigError(
                            f"record {rec.id} in {self.out} has no τ grid of {g} values; use a new --out"
                        )
                    for k, cell in enumerate(rec.grid):
                        grid[k] += M.dense(cell, n)
                if rec.tau is not None:
                    taus.add(rec.tau)
                sec += rec.sec
                for key, value in rec.diag.items():
                    diag_sum[key] = diag_sum.get(key, 0.0) + value
                    diag_count[key] = diag_count.get(key, 0) + 1
        except Exception as e:  # noqa: BLE001 - a malformed record stops every process
            err = e
        d.agree(err)
        conf = M.ConfusionMeter.from_matrix(conf).all_reduce(d.all_reduce).mat
        grid = d.all_reduce(grid)
        presence = presence.all_reduce(d.all_reduce)
        parts = d.gather(
            {"images": len(recs), "taus": sorted(taus), "sec": sec, "diag": (diag_sum, diag_count)}
        )
        all_taus = sorted({t for p in parts for t in p["taus"]})
        if len(all_taus) > 1:
            raise BadConfigError(
                f"records in {self.out} were scored with different τ {all_taus}; use a new --out"
            )
        images = sum(p["images"] for p in parts)
        if images != len(ph.samples):
            raise BadConfigError(
                f"only {images} of {len(ph.samples)} images have records; run the same command again"
            )
        tau: float | None = all_taus[0] if all_taus else None
        if isinstance(ph.tau, float):
            if all_taus and all_taus != [ph.tau]:
                raise BadConfigError(
                    f"records in {self.out} were scored with τ {all_taus}, not {ph.tau}; use a new --out"
                )
            tau = ph.tau
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for p in parts:
            for key, value in p["diag"][0].items():
                totals[key] = totals.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + p["diag"][1][key]
        return _PhaseTotals(
            conf=conf,
            grid=grid,
            tau=tau,
            images=images,
            sec=sum(p["sec"] for p in parts),
            diag={k: totals[k] / counts[k] for k in sorted(totals)},
            presence=presence,
        )

    def _choose_tau(
        self, dataset: SegDataset, grid: torch.Tensor, mode: str, on: SegDataset, images: int
    ) -> dict[str, Any]:
        """The τ of the grid with the highest mIoU (the smallest on a tie)."""
        taus = list(self.protocol.tau_grid)
        mious = [M.ConfusionMeter.from_matrix(grid[k]).compute().miou for k in range(len(taus))]
        best = max(range(len(taus)), key=lambda k: (-1.0 if math.isnan(mious[k]) else mious[k], -k))
        return {
            "mode": mode,
            "oracle": mode == "test-oracle",
            "on": {"root": str(on.root.resolve()), "split": on.split or "all", "images": images},
            "grid": taus,
            "mIoU": [None if math.isnan(m) else m for m in mious],
            "chosen": taus[best],
        }

    def _metrics(
        self,
        ds: SegDataset,
        samples: list[Sample],
        conf: torch.Tensor,
        tau: float | None,
        agg: _PhaseTotals,
        tau_info: dict[str, Any] | None,
        d: _Dist,
    ) -> dict[str, Any]:
        """The content of metrics.json."""
        cfg = self.cfg
        sc = M.ConfusionMeter.from_matrix(conf, ds.class_kinds).compute().to_json()
        meta = self.seg_meta
        if meta is None and (self.out / "segmentor.json").exists():
            try:
                meta = json.loads((self.out / "segmentor.json").read_text()).get("meta")
            except ValueError:
                meta = None
        meta = meta or {}
        model = cfg.model or _model_name(meta.get("model")) or "default"
        method = meta.get("method", cfg.method) if cfg.segmentor else cfg.method
        gt_px = conf[: ds.num_classes].sum(1).tolist()
        return {
            "format": FORMAT,
            "dataset": ds.name,
            "title": ds.title,
            "split": ds.split or "all",
            "root": str(ds.root.resolve()),
            "model": str(model),
            "method": str(method),
            "segmentor": cfg.segmentor,
            "model_info": meta.get("model"),
            "seed": cfg.seed,
            "mIoU": sc["mIoU"],
            "pixel_accuracy": sc["pixel_accuracy"],
            "mean_accuracy": sc["mean_accuracy"],
            "per_class_iou": dict(zip(ds.class_names, sc["iou"])),
            "kind_iou": sc["kind_iou"]
            or None,  # mean IoU of stuff and of things, where the data set names kinds
            "diagnostics": agg.diag or None,  # the segmentor's per-image diagnostics, averaged over images
            "protocol": agg.presence.describe_protocol(self.protocol.describe(ds, tau)),
            "presence": agg.presence.summary(ds.class_names, range(ds.num_classes)),
            "tau": tau,
            "tau_search": tau_info,
            "counts": {
                "images": agg.images,
                "images_in_split": len(ds.samples),
                "pixels": sc["pixels"],
                "classes": ds.num_classes,
                "classes_scored": sc["classes_scored"],
                "void_pixels": int(conf[:, -1].sum()),
                "gt_pixels_per_class": dict(zip(ds.class_names, gt_px)),
                "processes": d.world,
                "seconds_per_image": agg.sec / max(1, agg.images),
            },
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def run_eval(cfg: EvalConfig, segmentor_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Evaluate with cfg, resuming whatever the run folder already holds; returns the metrics."""
    return Runner(cfg, segmentor_factory).run()


def _scalar_means(diagnostics: list[dict[str, Any]]) -> dict[str, float]:
    """Per key, the mean of the finite numbers among a segmentor's per-prompt diagnostics of one image."""
    values: dict[str, list[float]] = {}
    for entry in diagnostics:
        for key, value in entry.items() if isinstance(entry, dict) else ():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(str(key), []).append(float(value))
    return {k: sum(v) / len(v) for k, v in values.items()}
