"""detx's detectron2 trainer: the albumentations mapper, the challenge-metric evaluator, validation loss,
best checkpoint, curves; and the checks that stop a misconfigured run before it starts."""

from __future__ import annotations

import json
import logging
import re
import sys
import weakref
from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.engine import hooks as d2hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detx.core.errors import InputError
from detx.core.prepared import PreparedDatasetError, has_image_labels
from detx.engine.checkpoint import CheckpointError, check_weights_file, classifier_init_state
from detx.engine.config import is_classifier, num_classes, num_classes_key
from detx.engine.datasets import setup_datasets
from detx.engine.feature_cache import load_or_build_features
from detx.engine.hooks import PersistentBestCheckpointer, TrainingCurves, ValidationLoss
from detx.engine.mapper import DetxDatasetMapper
from detx.evaluation.cls_evaluator import ClassificationEvaluator
from detx.evaluation.evaluator import VinBigDataEvaluator

logger = logging.getLogger(__name__)


class TrainingSetupError(InputError):
    """A configuration that cannot train (the message names the key or file and the fix)."""


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with detx's data mapper, evaluator and hooks.

    Hooks, in order: detectron2's timer, LR scheduler, (PreciseBN), periodic checkpointer, ``EvalHook``
    (``TEST.EVAL_PERIOD``: ``vinbigdata/*`` and ``bbox/*``; ``0``: no evaluation at all, not even the final one),
    then :class:`ValidationLoss`
    (``DETX.VAL_PERIOD``), :class:`PersistentBestCheckpointer` (``DETX.BEST_METRIC`` ->
    ``model_best.pth``), the writers (``metrics.json``, TensorBoard, console) and
    :class:`TrainingCurves` (``curves.png``).
    """

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__, except that DDP on the CPU (gloo) must not be given device ids.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs: dict = {"broadcast_buffers": False}
        if not str(cfg.MODEL.DEVICE).startswith("cuda"):
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def run_step(self) -> None:
        """One training step, unless ``DETX.CPU_BUDGET_S`` is spent (the rest of the iterations are then skipped)."""
        budget = float(self.cfg.DETX.CPU_BUDGET_S)
        if budget > 0:
            import time

            now = time.process_time()
            if getattr(self, "_cpu_start", None) is None:
                self._cpu_start = now
            elif now - self._cpu_start >= budget:
                if not getattr(self, "_budget_logged", False):
                    logger.info("DETX.CPU_BUDGET_S %.0f s spent after %d iterations: the remaining ones are skipped",
                                budget, self.iter)
                    self.storage.put_scalar("cpu_budget_iters", float(self.iter), smoothing_hint=False)
                    self._budget_logged = True
                return
        super().run_step()

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """detectron2's train loader (``DATALOADER.SAMPLER_TRAIN``: ``TrainingSampler`` or
        ``RepeatFactorTrainingSampler``) with :class:`DetxDatasetMapper`; without augmentation when the classifier
        trains on cached frozen features (they are those of the unaugmented image)."""
        augment = not uses_feature_cache(cfg)
        return build_detection_train_loader(cfg, mapper=DetxDatasetMapper(cfg, is_train=True, augment=augment))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=DetxDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_val_loss_loader(cls, cfg: CfgNode):
        """The validation-loss loader: ``DATASETS.TEST`` with annotations, test-size resize, no augmentation,
        sharded over processes."""
        dicts = get_detection_dataset_dicts(list(cfg.DATASETS.TEST), filter_empty=False)
        batch = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        return build_detection_test_loader(dicts, mapper=DetxDatasetMapper(cfg, is_train=True, augment=False),
                                           batch_size=batch, num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
                        ) -> DatasetEvaluator:
        """Detectors: the challenge metric (``vinbigdata/mAP40``, per-class AP40) and COCO ``bbox/*`` (with real masks,
        ``MODEL.MASK_ON`` without ``DETX.BOX_MASKS``: detectron2's COCO ``segm/*`` too); the image
        classifier: ``cls/*`` (AUC, F1, sensitivity, specificity, per-class AUC, bootstrap intervals)."""
        out = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
        if is_classifier(cfg):
            return ClassificationEvaluator(dataset_name, int(cfg.MODEL.CLASSIFIER.NUM_CLASSES), output_dir=out,
                                           n_boot=int(cfg.DETX.EVAL.BOOTSTRAP),
                                           label_names=list(cfg.MODEL.CLASSIFIER.IMAGE_LABELS),
                                           body_parts=list(cfg.MODEL.CLASSIFIER.BODY_PARTS)
                                           if cfg.MODEL.CLASSIFIER.BODY_PART_HEAD else None)
        evaluator = VinBigDataEvaluator(dataset_name, iou_thr=cfg.DETX.EVAL.IOU_THR, output_dir=out)
        if cfg.MODEL.MASK_ON and not cfg.DETX.BOX_MASKS:  # real masks (e.g. the lung segmenter): COCO segm/* too
            from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

            return DatasetEvaluators([evaluator, COCOEvaluator(dataset_name, tasks=("segm",), distributed=True,
                                                               output_dir=out)])
        return evaluator

    def build_hooks(self) -> list:
        ret = super().build_hooks()
        cfg = self.cfg
        # after EvalHook (the metric exists) and before PeriodicWriter (the scalars get written)
        at = next(i for i, h in enumerate(ret) if isinstance(h, d2hooks.EvalHook)) + 1
        evaluates = cfg.TEST.EVAL_PERIOD > 0
        if not evaluates:  # TEST.EVAL_PERIOD 0: no evaluation at all, not even detectron2's one after the last step
            del ret[at - 1]
            at -= 1
            # through detectron2's logger, so that it reaches the console and OUTPUT_DIR/log.txt with the run's own lines
            logging.getLogger("detectron2.detx").info("TEST.EVAL_PERIOD %d: no evaluation during or after training (no %s, no model_best.pth)",
                        cfg.TEST.EVAL_PERIOD, cfg.DETX.BEST_METRIC or "metric")
        extra = []
        if cfg.DATASETS.TEST and cfg.DETX.VAL_PERIOD >= 0:
            extra.append(ValidationLoss(cfg.DETX.VAL_PERIOD, lambda: self.build_val_loss_loader(cfg),
                                        amp=cfg.SOLVER.AMP.ENABLED))
        if comm.is_main_process() and cfg.DATASETS.TEST and cfg.DETX.BEST_METRIC and evaluates:
            extra.append(PersistentBestCheckpointer(cfg.TEST.EVAL_PERIOD, self.checkpointer,
                                                    cfg.DETX.BEST_METRIC, mode="max"))
        ret[at:at] = extra
        if comm.is_main_process() and cfg.DETX.CURVES:
            ret.append(TrainingCurves(cfg.OUTPUT_DIR, metric_keys=(cfg.DETX.BEST_METRIC,)))
        return ret

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's resume (``last_checkpoint``: iteration, optimizer, LR schedule) or load of
        ``MODEL.WEIGHTS``, with an unreadable file reported as :class:`TrainingSetupError`.

        The image classifier loads a local ``.pth`` through :func:`detx.engine.checkpoint.classifier_init_state`: a
        classifier's checkpoint (the contrastive stage 1) or a detector's (its backbone), every backbone tensor or a
        clear error. With a frozen backbone and ``MODEL.CLASSIFIER.FEATURE_CACHE``, the features are then computed
        or reused (:mod:`detx.engine.feature_cache`), before any training step.
        """
        cfg = self.cfg
        resuming = resume and self.checkpointer.has_checkpoint()
        weights = str(cfg.MODEL.WEIGHTS)
        model = self._trainer.model
        model = getattr(model, "module", model)
        if is_classifier(cfg) and not resuming and weights.endswith(".pth") and "://" not in weights:
            try:
                to_load, _ = classifier_init_state(model, weights, str(cfg.MODEL.BACKBONE.NAME))
            except CheckpointError as e:
                raise TrainingSetupError(f"MODEL.WEIGHTS: {e}") from e
            model.load_state_dict(to_load, strict=False)
            self.start_iter = 0
        else:
            try:
                super().resume_or_load(resume=resume)
            except (OSError, RuntimeError, ValueError, KeyError, EOFError) as e:
                what = "the last checkpoint" if resuming else f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}"
                raise TrainingSetupError(f"cannot load {what}: {type(e).__name__}: {e}") from e
        if uses_feature_cache(cfg):
            dicts = get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST),
                                                filter_empty=False)
            mapper = DetxDatasetMapper(cfg, is_train=False)
            model.feature_cache, _ = load_or_build_features(cfg.MODEL.CLASSIFIER.FEATURE_CACHE, model, dicts, mapper,
                                                            cfg)


def uses_feature_cache(cfg: CfgNode) -> bool:
    """Whether the classifier trains its head on cached frozen features (``FREEZE_BACKBONE`` + ``FEATURE_CACHE``)."""
    return is_classifier(cfg) and bool(cfg.MODEL.CLASSIFIER.FREEZE_BACKBONE) and bool(cfg.MODEL.CLASSIFIER.FEATURE_CACHE)


def check_weights(cfg: CfgNode, resume: bool = False) -> None:
    """``MODEL.WEIGHTS`` must be empty (random init), a URL (detectron2 downloads and caches it) or a
    readable checkpoint file (:func:`detx.engine.checkpoint.check_weights_file`), unless ``resume`` finds a
    ``last_checkpoint`` in ``OUTPUT_DIR``."""
    if resume and (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file():
        return
    weights = str(cfg.MODEL.WEIGHTS)
    if not weights or "://" in weights:
        return
    if not Path(weights).is_file():
        raise TrainingSetupError(
            f"MODEL.WEIGHTS {weights} does not exist (a local .pth/.pkl file, a detectron2:// or https:// URL, "
            "or \"\" for random initialization)")
    try:
        check_weights_file(weights, "MODEL.WEIGHTS")
    except CheckpointError as e:
        raise TrainingSetupError(str(e)) from e


def check_datasets(cfg: CfgNode, train: bool = True) -> None:
    """The datasets of ``cfg`` exist, the training set has images, class counts agree with the model.

    Raises:
        TrainingSetupError: with the dataset name, the numbers and the key to change.
    """
    names = (list(cfg.DATASETS.TRAIN) if train else []) + list(cfg.DATASETS.TEST)
    if not train and not cfg.DATASETS.TEST:
        raise TrainingSetupError("nothing to evaluate: DATASETS.TEST is empty (DETX.FOLD -1 has no validation "
                                 "fold; choose a fold or set DATASETS.TEST)")
    for name in names:
        if name not in DatasetCatalog.list():
            raise TrainingSetupError(f"dataset {name!r} is not registered (set DETX.DATA_ROOT to a prepared "
                                     "dataset, or register it)")
    if train:
        n = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
        if n == 0:
            raise TrainingSetupError(f"the training set {list(cfg.DATASETS.TRAIN)} has no images")
        if cfg.MODEL.MASK_ON and not cfg.DETX.BOX_MASKS:
            has_masks = any(a.get("segmentation") for name in cfg.DATASETS.TRAIN
                            for d in DatasetCatalog.get(name) for a in d.get("annotations", []))
            if not has_masks:
                raise TrainingSetupError(
                    "MODEL.MASK_ON is set but the training annotations have no segmentation: set "
                    "DETX.BOX_MASKS True (box-shaped masks) or prepare the dataset with box masks")
    if is_classifier(cfg):
        _check_classifier_datasets(cfg, names)
        if not cfg.MODEL.CLASSIFIER.NUM_CLASSES:
            return  # normal/abnormal only: any class vocabulary will do
        if cfg.MODEL.CLASSIFIER.IMAGE_LABELS:
            return  # image-level labels, checked by _check_classifier_datasets
    elif cfg.MODEL.META_ARCHITECTURE not in ("GeneralizedRCNN", "RetinaNet"):
        return
    want, key = num_classes(cfg), num_classes_key(cfg)
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None:
            continue
        if len(classes) != want:
            raise TrainingSetupError(
                f"{key} is {want} but dataset {name} has {len(classes)} classes ({', '.join(classes)}); "
                f"set {key} {len(classes)}")


#: what a training run leaves in OUTPUT_DIR that a new run would overwrite or append to
RUN_FILES: tuple[str, ...] = ("last_checkpoint", "metrics.json", "model_final.pth", "model_best.pth", "model_best.json")


def existing_run_files(output_dir: str | Path) -> list[Path]:
    """The files of an earlier training run in ``output_dir`` (checkpoints, metrics, curves, TensorBoard events)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [out / n for n in RUN_FILES if (out / n).exists()]
    found += sorted(out.glob("model_[0-9]*.pth")) + sorted(out.glob("events.out.tfevents.*"))
    found += [p for p in (out / "curves.png", out / "inference") if p.exists()]
    return found


def check_output_dir(cfg: CfgNode, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a new run in an ``OUTPUT_DIR`` that holds one: it would overwrite ``model_final.pth`` and
    ``model_best.pth`` and append to ``metrics.json``.

    Raises:
        TrainingSetupError: naming the folder, what it holds, and the choices (``--resume``, ``--overwrite``).
    """
    if resume and overwrite:
        raise TrainingSetupError("give --resume (continue the run in OUTPUT_DIR) or --overwrite (start it again), "
                                 "not both")
    found = [p for p in existing_run_files(cfg.OUTPUT_DIR) if p.name in RUN_FILES]
    if found and not resume and not overwrite:
        raise TrainingSetupError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} already holds a training run ({', '.join(p.name for p in found)}): pass "
            "--resume to continue it from last_checkpoint, --overwrite to start again (its checkpoints, metrics.json, "
            "curves and events are deleted first), or choose another OUTPUT_DIR")


def clear_output_dir(output_dir: str | Path) -> list[Path]:
    """Delete an earlier run's files (:func:`existing_run_files`) so that ``--overwrite`` starts clean; the config,
    logs and anything else in the folder stay. Returns what was deleted."""
    import shutil

    removed = existing_run_files(output_dir)
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    if removed:
        logger.info("--overwrite: removed %d file(s) of the earlier run in %s", len(removed), output_dir)
    return removed


def training_summary(output_dir: str | Path) -> str:
    """One closing line: the best checkpoint and its metric (``model_best.json``), and the final model."""
    out = Path(output_dir)
    final = out / "model_final.pth"
    best = out / "model_best.json"
    parts = []
    if best.is_file():
        try:
            rec = json.loads(best.read_text())
            parts.append(f"best {rec['metric']} {rec['value']:.4f} at iteration {int(rec['iteration'])} (as in metrics.json) -> "
                         f"{out / 'model_best.pth'}")
        except (OSError, ValueError, KeyError, TypeError):
            parts.append(f"best checkpoint record {best} unreadable")
    else:
        parts.append("no best checkpoint (no validation set or no evaluation)")
    parts.append(f"final model -> {final}" if final.is_file() else f"no {final.name} (training did not finish)")
    return "training finished: " + "; ".join(parts)


class _PlainFormatter(logging.Formatter):
    """A file formatter that drops terminal colour codes (detectron2 highlights the config with pygments)."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def format(self, record: logging.LogRecord) -> str:
        return self._ANSI.sub("", super().format(record))


def plain_log_files(names: tuple[str, ...] = ("detectron2", "fvcore", "")) -> None:
    """Make the log files that detectron2's ``setup_logger`` opened (``OUTPUT_DIR/log.txt``) free of colour codes;
    the console keeps its colours."""
    for name in names:
        for h in logging.getLogger(name or None).handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and stream not in (sys.stdout, sys.stderr) and h.formatter:
                h.setFormatter(_PlainFormatter(h.formatter._fmt, h.formatter.datefmt))


def _check_classifier_datasets(cfg: CfgNode, names: list[str]) -> None:
    """The image classifier learns image-level labels: every image of its datasets must carry one."""
    wanted = list(cfg.MODEL.CLASSIFIER.IMAGE_LABELS)
    if wanted and len(wanted) != int(cfg.MODEL.CLASSIFIER.NUM_CLASSES):
        raise TrainingSetupError(f"MODEL.CLASSIFIER.IMAGE_LABELS names {len(wanted)} labels but "
                                 f"MODEL.CLASSIFIER.NUM_CLASSES is {cfg.MODEL.CLASSIFIER.NUM_CLASSES}")
    for name in names:
        dicts = DatasetCatalog.get(name)
        if wanted:
            missing = [d.get("image_uid", d["image_id"]) for d in dicts if d.get("image_labels") is None]
            if missing:
                raise TrainingSetupError(
                    f"MODEL.CLASSIFIER.IMAGE_LABELS needs per-image labels, but {len(missing)} images of {name} have "
                    f"none (e.g. {missing[:3]}): prepare PhysioNet VinDr-CXR with its image_labels_*.csv")
            known = set().union(*(d["image_labels"] for d in dicts))
            unknown = [w for w in wanted if w not in known]
            if unknown:
                logger.warning("no image of %s records the label(s) %s: their targets are all 0", name, unknown)
        unlabelled = [d.get("image_uid", d["image_id"]) for d in dicts if not has_image_labels(d)]
        if unlabelled:
            raise TrainingSetupError(
                f"the image classifier needs image-level labels, but {len(unlabelled)} of the {len(dicts)} images of "
                f"dataset {name} have none (e.g. {unlabelled[:3]}): a split prepared without --csv (test.json) "
                "cannot train or validate a classifier")


def prepare_training(cfg: CfgNode, resume: bool = False, eval_only: bool = False) -> CfgNode:
    """Register the data, fill the dataset names and run every check; raises before any training work.

    Raises:
        PreparedDatasetError, TrainingSetupError: with a message that names the problem and its fix.
    """
    setup_datasets(cfg)
    check_datasets(cfg, train=not eval_only)
    check_weights(cfg, resume=resume)
    return cfg


__all__ = ["Trainer", "TrainingSetupError", "PreparedDatasetError", "check_datasets", "check_output_dir",
           "check_weights", "uses_feature_cache", "clear_output_dir", "plain_log_files", "prepare_training", "training_summary"]
