"""Training hooks: validation loss, best checkpoint that survives ``--resume``, curves at the end."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from detectron2.engine.hooks import BestCheckpointer, EvalHook, HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch.nn.parallel import DistributedDataParallel

from detx.core.io import write_json
from detx.viz.curves import plot_training_curves

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _number_attributes(model: torch.nn.Module) -> dict[str, dict[str, int | float]]:
    """Each module's plain int/float attributes (not bools, tensors or parameters): the Python-side state a
    training forward may update, e.g. RetinaNet's ``loss_normalizer`` (an EMA of the foreground anchor count)."""
    return {name: {k: v for k, v in vars(m).items() if type(v) in (int, float)} for name, m in model.named_modules()}


def _restore_number_attributes(model: torch.nn.Module, saved: dict[str, dict[str, int | float]]) -> None:
    """Put back what :func:`_number_attributes` saved; a number attribute created since is removed."""
    for name, m in model.named_modules():
        before = saved.get(name, {})
        for k in [k for k, v in vars(m).items() if type(v) in (int, float) and k not in before]:
            delattr(m, k)
        for k, v in before.items():
            setattr(m, k, v)


class ValidationLoss(EvalHook):
    """Every ``period`` iterations and after the last one (detectron2's ``EvalHook`` schedule and scalar
    logging): the model's training losses on the whole validation set, computed in train mode under
    ``no_grad``, averaged over images and over processes, and stored as ``val_total_loss`` and ``val_<loss>``
    (so they reach ``metrics.json``).

    Batch-norm running statistics, and the plain-number state a training forward updates (RetinaNet's EMA
    loss normalizer), are restored afterwards, so validation images never leak into the model; the forward
    pass's own event-storage scalars (sampling statistics) are discarded. Each model reports its own losses:
    Faster R-CNN ``loss_cls``, ``loss_box_reg``, ``loss_rpn_*``; RetinaNet ``loss_cls``, ``loss_box_reg``
    (focal and box losses over its EMA of foreground anchors); Cascade R-CNN ``loss_cls_stage{k}``,
    ``loss_box_reg_stage{k}`` and the RPN's.
    """

    def __init__(self, period: int, data_loader_fn: Callable[[], Iterable[list[dict[str, Any]]]],
                 amp: bool = False):
        """
        Args:
            period: iterations between passes (<= 0: only after the last iteration).
            data_loader_fn: builds the validation loader (annotated, not augmented; sharded per process).
            amp: run under CUDA autocast, as the AMP trainer does.
        """
        super().__init__(period, self.compute)
        self._loader_fn = data_loader_fn
        self._loader: Iterable | None = None
        self._amp = amp

    def compute(self) -> dict[str, float]:
        """One pass over the validation set; returns the averaged ``val_*`` scalars (empty if no images)."""
        if self._loader is None:
            self._loader = self._loader_fn()
        model = _unwrap(self.trainer.model)
        was_training = model.training
        bn_state = {name: {k: v.clone() for k, v in m.state_dict().items()}
                    for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        numbers = _number_attributes(model)
        sums: dict[str, float] = defaultdict(float)
        n = 0
        start = time.perf_counter()
        model.train()
        autocast = torch.autocast("cuda") if self._amp else nullcontext()
        try:
            with torch.no_grad(), autocast, EventStorage(self.trainer.iter):
                for batch in self._loader:
                    losses = model(batch)
                    for k, v in losses.items():
                        sums[k] += float(v) * len(batch)
                    n += len(batch)
        finally:
            modules = dict(model.named_modules())
            for name, state in bn_state.items():
                modules[name].load_state_dict(state)
            _restore_number_attributes(model, numbers)
            model.train(was_training)
        gathered = comm.all_gather((dict(sums), n))
        total_n = sum(g[1] for g in gathered)
        if total_n == 0:
            logger.warning("validation loss: the validation set is empty")
            return {}
        totals: dict[str, float] = defaultdict(float)
        for s, _ in gathered:
            for k, v in s.items():
                totals[k] += v
        out = {f"val_{k}": v / total_n for k, v in sorted(totals.items())}
        out["val_total_loss"] = sum(v / total_n for v in totals.values())
        logger.info("validation loss over %d images at iteration %d: %.4f (%.1f s)", total_n,
                    self.trainer.iter, out["val_total_loss"], time.perf_counter() - start)
        return out


class PersistentBestCheckpointer(BestCheckpointer):
    """detectron2's ``BestCheckpointer`` (``model_best.pth`` on the best value of a metric) that also
    records the best value in ``model_best.json``, so a resumed run only replaces a better model.

    Saving ``model_best.pth`` leaves ``last_checkpoint`` where the periodic checkpointer put it: detectron2's would
    point it at ``model_best.pth``, which after the final evaluation carries the iteration ``MAX_ITER`` (one past
    the last trained one), so a ``--resume`` would skip an iteration.
    """

    def __init__(self, eval_period: int, checkpointer, val_metric: str, mode: str = "max",
                 file_prefix: str = "model_best"):
        super().__init__(eval_period, checkpointer, val_metric, mode=mode, file_prefix=file_prefix)
        self._record = Path(checkpointer.save_dir) / f"{file_prefix}.json"

    def before_train(self) -> None:
        if self.trainer.start_iter > 0 and self._record.is_file():
            try:
                rec = json.loads(self._record.read_text())
            except (OSError, json.JSONDecodeError) as e:
                logger.warning("ignoring unreadable %s: %s", self._record, e)
                return
            if rec.get("metric") == self._val_metric and rec.get("value") is not None:
                self.best_metric, self.best_iter = float(rec["value"]), int(rec["iteration"])
                logger.info("resuming with best %s = %.5f @ %d", self._val_metric, self.best_metric,
                            self.best_iter)

    def _best_checking(self) -> None:
        before = (self.best_metric, self.best_iter)
        ckpt = self._checkpointer
        tagged = Path(ckpt.get_checkpoint_file()).name if ckpt.has_checkpoint() else None
        super()._best_checking()
        if tagged is not None and comm.is_main_process() and Path(ckpt.get_checkpoint_file()).name != tagged:
            ckpt.tag_last_checkpoint(tagged)
        changed = (self.best_metric, self.best_iter) != before and self.best_metric is not None
        if changed and comm.is_main_process():
            write_json(self._record, {"metric": self._val_metric, "value": self.best_metric,
                                          "iteration": self.best_iter})


class TrainingCurves(HookBase):
    """After training, plot ``metrics.json`` into ``curves.png`` (train vs validation loss, and mAP)."""

    def __init__(self, output_dir: str, metric_keys: tuple[str, ...] = ("vinbigdata/mAP40",)):
        self._dir = Path(output_dir)
        self._keys = metric_keys

    def after_train(self) -> None:
        if not comm.is_main_process():
            return
        metrics = self._dir / "metrics.json"
        if not metrics.is_file():
            return
        try:
            plot_training_curves(metrics, self._dir / "curves.png", metric_keys=self._keys)
        except (OSError, ValueError) as e:  # a plot must never fail a finished training
            logger.warning("could not plot %s: %s", metrics, e)


def finite_or_none(obj: Any) -> Any:
    """A nested result dict with NaN/inf replaced by None (JSON-safe)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
