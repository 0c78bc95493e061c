"""`bisenet train` / `torchrun -m training.train`: the mmseg BiSeNetV1 recipe, iteration based.

SGD (momentum 0.9, wd 5e-4), linear warmup from 0.1x then poly 0.9 down to min_lr,
cross-entropy on the decode head and both auxiliary heads. Every `checkpoint_interval`
iterations `latest.pth` is written atomically, every `eval_interval` the val mIoU is measured
and the best model kept as `best.pth`. `--resume` continues exactly: the data order and each
sample's augmentation are a pure function of (seed, sample number), and the RNG, optimizer,
scheduler and AMP scaler states travel in the checkpoint.
Under torchrun each rank reads its own share of every global batch; DDP with NCCL on GPUs
(SyncBN, AMP) and gloo on CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from core.errors import BisenetError, InputError, MissingFileError, first_line
from core.validate import load_yaml
from core.config_files import config_path
from core.model_config import ConfigError, ModelConfig, check_keys, load_model_config

HELP = "train BiSeNetV1 on Cityscapes, COCO-Stuff, CamVid or your own data (mmseg recipe; torchrun for DDP)"
EXAMPLE = ("bisenet train --config configs/train/camvid_r18_cpu.yaml --work-dir runs/camvid_r18   "
           "# multi-GPU: torchrun --nproc_per_node 4 -m training.train --config ... --work-dir ...")


@dataclass
class TrainConfig:
    """configs/train/*.yaml: which model and data, and overrides of the model's recipe."""
    model: str                              # model config name or YAML
    dataset: str                            # dataset config name or YAML
    data_root: str | None = None            # override the dataset's root
    iterations: int | None = None           # None = the model config's train recipe
    batch_size: int | None = None           # per process
    lr: float | None = None
    warmup_iters: int | None = None
    warmup_ratio: float | None = None
    poly_power: float | None = None
    min_lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    aux_weights: list | None = None
    crop_size: list | None = None           # [H, W]; None = the model config's crop_size
    scale: list | None = None               # RandomResize base (W, H); None = the dataset's
    ratio_range: list | None = None
    photometric: bool = True
    ohem: dict | None = None                # e.g. {thresh: 0.7, min_kept: 10000}
    pretrained: str | None = None           # ImageNet ResNet weights file; None = from scratch
    load_from: str | None = None            # a segmentor checkpoint to fine-tune from (class layers may differ)
    eval_interval: int = 1000
    checkpoint_interval: int = 1000
    log_interval: int = 10
    workers: int = 4
    seed: int = 0
    amp: bool = True                        # CUDA only
    sync_bn: bool = True                    # under DDP on CUDA
    threads: int | None = None              # torch CPU threads; None = torch's default

    def recipe(self, model_cfg: ModelConfig) -> dict:
        """The effective recipe: the model config's train block with this config's overrides."""
        r = dataclasses.asdict(model_cfg.train)
        for k in r:
            v = getattr(self, k, None)
            if v is not None:
                r[k] = v
        return r


def load_train_config(path: str | Path) -> TrainConfig:
    path = config_path("train", path)
    if not path.is_file():
        raise ConfigError(f"no train config {str(path)!r}: pass a YAML path (see configs/train/)")
    data = load_yaml(path, "train config") or {}
    check_keys(TrainConfig, data, str(path))
    try:
        return TrainConfig(**data)
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None


# ---------------------------------------------------------------- schedule and data order
def lr_factor(it: int, base_lr: float, iterations: int, warmup_iters: int, warmup_ratio: float,
              poly_power: float, min_lr: float) -> float:
    """lr(it) / base_lr: mmseg LinearLR(start_factor=warmup_ratio, 0..warmup) then
    PolyLR(eta_min=min_lr, power) from warmup to the end."""
    if it < warmup_iters:
        return warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters
    span = max(iterations - warmup_iters, 1)
    progress = min(it - warmup_iters, span) / span
    return ((base_lr - min_lr) * (1.0 - progress) ** poly_power + min_lr) / base_lr


class SampleStream:
    """Sampler of (index, seed) keys: epoch e is a permutation seeded by (seed, e); sample number
    n of the global stream gets augmentation seed (seed, n). Rank r takes every world-th sample,
    starting at sample `start` (a resume)."""

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world

    def __iter__(self):
        n = self.start + self.rank
        perm_epoch, perm = -1, None
        while True:
            epoch, pos = divmod(n, self.size)
            if epoch != perm_epoch:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
                perm_epoch = epoch
            yield int(perm[pos]), [self.seed, 1, n]   # list seed: its own stream for each n
            n += self.world


# ---------------------------------------------------------------- helpers
def load_for_finetune(model, path) -> list:
    """Weights of an official or own checkpoint, except tensors whose shape differs (the
    conv_seg layers when the classes differ). Returns the names left at init."""
    from training.checkpoints import extract_state_dict, read_checkpoint

    sd = extract_state_dict(read_checkpoint(path))
    own = model.state_dict()
    unknown = sorted(set(sd) - set(own))
    if unknown:
        raise InputError(f"{path}: {len(unknown)} tensors do not belong to this architecture, e.g. {unknown[0]}; "
                         "pick the model config the checkpoint was trained with")
    fits = {k: v for k, v in sd.items() if v.shape == own[k].shape}
    model.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))


def _rng_state() -> dict:
    import torch
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def collate(items):
    import torch
    return (torch.from_numpy(np.stack([img for img, _ in items])),
            torch.from_numpy(np.stack([label for _, label in items])))


class JsonlLog:
    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)

    def write(self, **record) -> None:
        self.f.write(json.dumps(record) + "\n")


def _tensorboard(work_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:     # tensorboard not installed: the JSONL log has everything
        return None
    return SummaryWriter(str(work_dir / "tb"))


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM end the run at the end of the current iteration, so the
    checkpoint written then is exact; a second signal stops at once (KeyboardInterrupt, nothing
    saved). Signals reach only the main thread: elsewhere this changes nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            if handler is not None:
                signal.signal(s, handler)

    def _on_signal(self, signum, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, proc: "Process") -> bool:
        """Stop now? Under DDP every rank stops at the same iteration (any rank's signal counts)."""
        if proc.distributed:
            import torch
            import torch.distributed as dist
            flag = torch.tensor([self.signum or 0], device=proc.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = self.signum or int(flag.item()) or None
        return self.signum is not None


# ---------------------------------------------------------------- the steps of a run
@dataclass
class Process:
    """Where this process trains: its device and its place among torchrun's ranks."""
    device: object           # torch.device
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def set_up_process(device: str | None, threads: int | None) -> Process:
    """The device, torchrun's rank environment and the process group (NCCL on GPUs, gloo on CPU)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if threads:
        torch.set_num_threads(threads)
    return Process(dev, rank, local_rank, world)


def model_and_data_configs(tc: TrainConfig):
    """The model and dataset configs; own classes on a zoo architecture make the model config
    take the dataset's classes (written to <work-dir>/model.yaml for export)."""
    from training.datasets import load_dataset_config

    model_cfg = load_model_config(tc.model)
    ds_cfg = load_dataset_config(tc.dataset, tc.data_root)
    if model_cfg.num_classes != ds_cfg.num_classes or (ds_cfg.class_names and ds_cfg.class_names != model_cfg.class_names):
        if not (ds_cfg.class_names and ds_cfg.palette):
            raise ConfigError(f"model {model_cfg.name} has {model_cfg.num_classes} classes but dataset "
                              f"{ds_cfg.name} has {ds_cfg.num_classes}; give the dataset YAML class_names and palette")
        model_cfg = dataclasses.replace(
            model_cfg, name=f"{model_cfg.name}_{ds_cfg.name}", dataset=ds_cfg.name, num_classes=ds_cfg.num_classes,
            class_names=list(ds_cfg.class_names), palette=[list(p) for p in ds_cfg.palette], checkpoint_url="",
            miou=None, miou_ms=None)
    return model_cfg, ds_cfg


def build_model(tc: TrainConfig, model_cfg: ModelConfig, proc: Process):
    """mmseg init or an ImageNet backbone, an optional fine-tune start, then SyncBN (CUDA DDP)
    and DDP. Returns (model, net): `net` is what the iterations call (forward_train)."""
    import torch
    import torch.nn as nn

    from training.model import BiSeNetV1
    from training.weights import init_from_scratch, load_imagenet_backbone

    torch.manual_seed(tc.seed)
    model = BiSeNetV1(model_cfg, with_aux=True)
    init_from_scratch(model)
    if tc.pretrained:
        n = load_imagenet_backbone(model, tc.pretrained)
        if proc.main:
            print(f"loaded {n} ImageNet backbone tensors from {tc.pretrained}", file=sys.stderr)
    elif model_cfg.pretrained and proc.main:
        print(f"note: the {model_cfg.name} recipe starts from ImageNet weights ({model_cfg.pretrained}); without "
              "--pretrained FILE this run starts from scratch", file=sys.stderr)
    if tc.load_from:
        skipped = load_for_finetune(model, tc.load_from)
        if proc.main:
            print(f"initialized from {tc.load_from}" + (f"; {len(skipped)} tensors left at init because their "
                  f"shapes differ (the class layers): {', '.join(skipped[:4])}" if skipped else ""), file=sys.stderr)
    if proc.distributed and proc.device.type == "cuda" and tc.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(proc.device)
    net = _train_forward_module(model)
    if proc.distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None)
    return model, net


def build_optimizer(model, recipe: dict, use_amp: bool):
    """SGD, warmup + poly schedule, AMP scaler (disabled off CUDA)."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"])
    sched_args = (recipe["lr"], int(recipe["iterations"]), recipe["warmup_iters"], recipe["warmup_ratio"],
                  recipe["poly_power"], recipe["min_lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, *sched_args))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return optimizer, scheduler, scaler


def build_data(tc: TrainConfig, ds_cfg, model_cfg: ModelConfig, crop, batch: int, start_it: int, proc: Process):
    """The train loader (each rank reads its share of the global sample stream, from the
    sample a resume starts at) and the val set (main rank, when evaluating)."""
    import torch

    from training.datasets import SegDataset
    from training.transforms import TrainTransform

    transform = TrainTransform(crop, tc.scale or ds_cfg.scale, tc.ratio_range or ds_cfg.ratio_range,
                               model_cfg.mean, model_cfg.std, ds_cfg.cat_max_ratio, tc.photometric)
    train_set = SegDataset(ds_cfg, "train", transform)
    val_set = SegDataset(ds_cfg, "val") if proc.main and tc.eval_interval > 0 else None
    stream = SampleStream(len(train_set), tc.seed, start=start_it * batch * proc.world, rank=proc.rank,
                          world=proc.world)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch, sampler=stream, num_workers=tc.workers,
        pin_memory=proc.device.type == "cuda",
        generator=torch.Generator(),   # worker seeds from their own generator: the global torch RNG stays untouched
        collate_fn=collate, worker_init_fn=_leave_stop_signals_to_the_main_process)
    return loader, val_set


def _leave_stop_signals_to_the_main_process(_worker_id: int) -> None:
    """Ctrl-C and `kill -TERM -<group>` reach the loader workers too, and torch's workers die on
    SIGTERM (the main process would then fail mid-iteration). The main process ends the run
    after the current iteration and shuts its workers down itself."""
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class Trainer:
    """The state of one run (model, optimizer, schedule, scaler, best mIoU) and what is done
    with it: resume, one iteration, evaluate, save."""

    def __init__(self, tc: TrainConfig, model_cfg: ModelConfig, ds_cfg, recipe: dict, proc: Process, work_dir: Path):
        self.tc, self.model_cfg, self.ds_cfg, self.recipe, self.proc = tc, model_cfg, ds_cfg, recipe, proc
        self.work_dir = work_dir
        self.iterations = int(recipe["iterations"])
        self.crop = tc.crop_size or model_cfg.crop_size
        self.use_amp = bool(tc.amp and proc.device.type == "cuda")
        self.model, self.net = build_model(tc, model_cfg, proc)
        self.optimizer, self.scheduler, self.scaler = build_optimizer(self.model, recipe, self.use_amp)
        self.best_miou = None
        self.saved_at = None         # the iteration latest.pth holds

    def resume(self, path: Path) -> int:
        """Load every state a checkpoint holds; returns the iteration it continues from."""
        from training.checkpoints import CheckpointError, read_checkpoint

        if not path.is_file():
            raise MissingFileError(f"cannot resume: {path} does not exist")
        ckpt = read_checkpoint(path)   # a corrupt file: one line (CheckpointError), not a pickle traceback
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt and self.use_amp:
                self.scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            self.best_miou = ckpt["meta"].get("best_miou")
            self.saved_at = int(ckpt["iteration"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot resume from {path}: not a training checkpoint of this model and "
                                  f"config ({type(e).__name__}: {first_line(e)[:200]}); pass a latest.pth "
                                  "that `bisenet train` wrote for this config") from None
        if self.proc.main:
            print(f"resumed from {path} at iteration {self.saved_at}", file=sys.stderr)
        return self.saved_at

    def step(self, batch) -> tuple:
        """One iteration: forward, the three losses, backward, optimizer and schedule step.
        Returns (loss, its parts, the lr it ran with)."""
        import torch

        from training.losses import seg_loss

        dev = self.proc.device
        img, label = (t.to(dev, non_blocking=True) for t in batch)
        lr = self.optimizer.param_groups[0]["lr"]
        with torch.autocast(dev.type, dtype=torch.float16, enabled=self.use_amp):
            logits, aux = self.net(img)
        loss, parts = seg_loss(logits, aux, label, self.recipe["aux_weights"], self.tc.ohem)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, parts, lr

    def evaluate(self, val_set) -> dict:
        from core.model_info import ModelInfo
        from training.evaluate import ModuleEngine, Predictor, evaluate_dataset

        engine = ModuleEngine(self.model, ModelInfo.from_model_config(self.model_cfg), self.proc.device)
        self.model.eval()
        try:
            return evaluate_dataset(Predictor(engine, self.ds_cfg.test_scale), val_set,
                                    self.ds_cfg.num_classes, self.model_cfg.class_names)
        finally:
            self.model.train()

    def save(self, it: int, miou, name: str = "latest.pth") -> Path:
        """Everything a resume needs, written atomically (a kill mid-save keeps the old file)."""
        from training.checkpoints import save_checkpoint_atomic

        ckpt = {"state_dict": self.model.state_dict(),
                "meta": {"model_config": self.model_cfg.to_dict(), "iteration": it, "miou": miou,
                         "best_miou": self.best_miou, "dataset": self.ds_cfg.name, "crop_size": list(self.crop)},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "iteration": it, "rng": _rng_state()}
        path = save_checkpoint_atomic(ckpt, self.work_dir / name)
        if name == "latest.pth":
            self.saved_at = it
        return path


class RunLog:
    """The main rank's record of a run: log.jsonl, TensorBoard when installed, the progress bar."""

    def __init__(self, work_dir: Path, iterations: int, start_it: int, log_interval: int, progress: bool):
        self.jsonl = JsonlLog(work_dir / "log.jsonl")
        self.tb = _tensorboard(work_dir)
        self.log_interval = log_interval
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=iterations, initial=start_it, unit="it", dynamic_ncols=True, file=sys.stderr,
                            mininterval=2.0)
        self.t_last = time.time()

    def train(self, done: int, end_it: int, loss, parts: dict, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{parts['decode']:.3f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)
        if done % self.log_interval == 0 or done == end_it:
            now = time.time()
            self.jsonl.write(mode="train", iter=done, loss=float(loss.detach()), lr=lr,
                             **{f"loss_{k}": v for k, v in parts.items()}, time=now,
                             sec_per_it=(now - self.t_last) / self.log_interval)
            self.t_last = now
            if self.tb:
                self.tb.add_scalar("train/loss", float(loss.detach()), done)
                self.tb.add_scalar("train/lr", lr, done)

    def val(self, done: int, result: dict, seconds: float) -> None:
        self.jsonl.write(mode="val", iter=done, mIoU=result["mIoU"], aAcc=result["aAcc"], mAcc=result["mAcc"],
                         per_class_iou=result["per_class_iou"], eval_seconds=seconds, time=time.time())
        if self.tb:
            self.tb.add_scalar("val/mIoU", result["mIoU"], done)

    def say(self, msg: str) -> None:
        (self.bar.write if self.bar is not None else print)(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb:
            self.tb.close()


def write_run_files(work_dir: Path, tc: TrainConfig, model_cfg: ModelConfig, recipe: dict, crop, world: int) -> None:
    """model.yaml (what export reads) and config.json (the effective settings of the run)."""
    (work_dir / "model.yaml").write_text(yaml.safe_dump(model_cfg.to_dict(), sort_keys=False))
    (work_dir / "config.json").write_text(json.dumps(
        {"train": dataclasses.asdict(tc), "recipe": recipe, "crop_size": crop, "world_size": world,
         "model_config": model_cfg.to_dict()}, indent=2) + "\n")


# ---------------------------------------------------------------- the loop
def train(tc: TrainConfig, work_dir: str | Path, resume: str | None = None, stop_at: int | None = None,
          device: str | None = None, progress: bool = True) -> dict:
    """Train; returns {'iteration', 'best_miou', 'last_miou', 'model', 'stopped_by'}. `stop_at`
    ends the run early at that iteration with the schedule of the full run (used to test
    resume). Ctrl-C or SIGTERM ends it after the current iteration with latest.pth saved there;
    'stopped_by' is then that signal's number."""
    proc = set_up_process(device, tc.threads)
    model_cfg, ds_cfg = model_and_data_configs(tc)
    recipe = tc.recipe(model_cfg)
    work_dir = Path(work_dir)
    made = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(tc, model_cfg, ds_cfg, recipe, proc, work_dir)
        start_it = trainer.resume(work_dir / "latest.pth" if resume == "auto" else Path(resume)) if resume else 0
    except BaseException:
        if made and not any(work_dir.iterdir()):
            work_dir.rmdir()   # a failed start leaves no empty work dir behind
        raise
    iterations = trainer.iterations
    end_it = min(stop_at, iterations) if stop_at else iterations
    loader, val_set = build_data(tc, ds_cfg, model_cfg, trainer.crop, int(recipe["batch_size"]), start_it, proc)
    log = None
    if proc.main:
        write_run_files(work_dir, tc, model_cfg, recipe, trainer.crop, proc.world)
        log = RunLog(work_dir, iterations, start_it, tc.log_interval, progress)

    trainer.model.train()
    done, last_miou = start_it, None
    with StopSignals() as stop:
        batches = iter(loader)
        for it in range(start_it, end_it):
            if stop.requested(proc):
                break
            loss, parts, lr = trainer.step(next(batches))
            done = it + 1
            if log:
                log.train(done, end_it, loss, parts, lr)
            is_eval = tc.eval_interval > 0 and (done % tc.eval_interval == 0 or done == iterations)
            is_ckpt = done % tc.checkpoint_interval == 0 or done == end_it
            if proc.main and is_eval:
                t0 = time.time()
                result = trainer.evaluate(val_set)
                last_miou = result["mIoU"]
                log.val(done, result, time.time() - t0)
                msg = f"iter {done}: val mIoU {last_miou:.2f} aAcc {result['aAcc']:.2f}"
                if trainer.best_miou is None or last_miou > trainer.best_miou:
                    trainer.best_miou = last_miou
                    trainer.save(done, last_miou, "best.pth")
                    msg += " (best so far, wrote best.pth)"
                log.say(msg)
            if proc.main and (is_ckpt or is_eval):
                trainer.save(done, last_miou if is_eval else None)
            if proc.distributed and (is_eval or is_ckpt):
                import torch.distributed as dist
                dist.barrier()
    if log:
        log.close()
    if stop.signum and proc.main:
        if trainer.saved_at != done:
            trainer.save(done, None)
        print(f"stopped by {signal.Signals(stop.signum).name} at iteration {done} of {iterations}: "
              f"{work_dir / 'latest.pth'} holds it; continue with --resume", file=sys.stderr)
    if proc.distributed:
        _same_model_on_every_rank(trainer.model)
    return {"iteration": done, "best_miou": trainer.best_miou, "last_miou": last_miou, "model": trainer.model,
            "stopped_by": stop.signum}


def _same_model_on_every_rank(model) -> None:
    """BN running stats are per rank on CPU (no SyncBN there): hand every rank rank 0's, so all
    ranks end with one identical model, the one rank 0 saved."""
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, 0)
    dist.barrier()


def _train_forward_module(model):
    import torch.nn as nn

    class TrainForward(nn.Module):
        # DDP syncs gradients only for calls through its forward(); BiSeNetV1.forward is
        # inference, so this adapter's forward is forward_train.
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.forward_train(x)

    return TrainForward(model)


# ---------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="train config YAML (configs/train/*.yaml) naming model, dataset and schedule")
    p.add_argument("--model", help="model config name/YAML (instead of or overriding --config's)")
    p.add_argument("--dataset", help="dataset config name/YAML (instead of or overriding --config's)")
    p.add_argument("--data-root", help="the dataset's root folder (overrides its YAML)")
    p.add_argument("--work-dir", required=True, help="where checkpoints (latest.pth, best.pth) and log.jsonl go")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue exactly from a checkpoint (default: <work-dir>/latest.pth)")
    p.add_argument("--iterations", type=int, help="training iterations (default: the config's, else the model's recipe)")
    p.add_argument("--batch-size", type=int, help="images per iteration per process (default: the model's recipe)")
    p.add_argument("--lr", type=float, help="peak learning rate of the poly schedule (default: the model's recipe)")
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"),
                   help="random training crop, height and width (default: the model's crop_size)")
    p.add_argument("--pretrained", help="ImageNet ResNet weights (.pth; torchvision or mmseg key names)")
    p.add_argument("--load-from", help="fine-tune from a segmentor checkpoint (official or own; class layers may differ)")
    p.add_argument("--eval-interval", type=int, help="iterations between val mIoU evaluations (default 1000)")
    p.add_argument("--checkpoint-interval", type=int,
                   help="iterations between checkpoints (latest.pth; default 1000; Ctrl-C also saves)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 4)")
    p.add_argument("--seed", type=int, help="random seed of weights init, data order and augmentation (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 on CUDA")


def config_from_args(args) -> TrainConfig:
    if args.config:
        tc = load_train_config(args.config)
    elif args.model and args.dataset:
        tc = TrainConfig(model=args.model, dataset=args.dataset)
    else:
        raise ConfigError("pass --config configs/train/<name>.yaml, or both --model and --dataset")
    for key in ("model", "dataset", "data_root", "iterations", "batch_size", "lr", "crop_size", "pretrained", "load_from",
                "eval_interval", "checkpoint_interval", "workers", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(tc, key, list(value) if isinstance(value, tuple) else value)
    if args.no_amp:
        tc.amp = False
    return tc


def run(args) -> int:
    tc = config_from_args(args)
    result = train(tc, args.work_dir, resume=args.resume, device=args.device)
    if result["stopped_by"]:
        return 128 + result["stopped_by"]      # the shell's code for "ended by this signal"
    if int(os.environ.get("RANK", "0")) == 0:
        best = result["best_miou"]
        print(f"done: {result['iteration']} iterations, best val mIoU "
              f"{'n/a' if best is None else f'{best:.2f}'}; checkpoints in {args.work_dir}")
    return 0


def main(argv=None) -> int:
    """`python -m training.train` (what torchrun starts): errors as `bisenet train` has them,
    except that a bug keeps Python's own traceback and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=HELP, epilog=f"Example: {EXAMPLE}",
                                     allow_abbrev=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BisenetError as e:
        print(f"training.train: error: {first_line(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
