#!/usr/bin/env python
"""Train (or evaluate) a detx detector: detectron2's train_net with detx's data, evaluator and hooks.

    python tools/train_net.py --config-file configs/vindr_cxr/faster_rcnn_R_50_FPN.yaml \\
        DETX.DATA_ROOT data/vindr_cxr_1024 DETX.FOLD 0 OUTPUT_DIR output/r50_fold0
    python tools/train_net.py --config-file ... --resume          # continue from last_checkpoint
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/r50_fold0/model_best.pth
    python tools/train_net.py --config-file ... --num-gpus 4       # DDP (gloo on CPU, NCCL on CUDA)
"""

from __future__ import annotations

import sys

# isort: off
import detx.cli  # noqa: F401  (first: it hides library noise that importing detectron2 prints)
# isort: on
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.logger import setup_logger

from detx.cli import add_version, run
from detx.core.io import atomic_write_text, folder_lock, write_json
from detx.engine.config import get_detx_cfg
from detx.engine.hooks import finite_or_none
from detx.engine.trainer import (
    Trainer,
    check_output_dir,
    clear_output_dir,
    plain_log_files,
    prepare_training,
    training_summary,
)

#: detectron2's flags, also accepted after the KEY VALUE overrides (where its parser would take them for a key)
FLAGS = ("--resume", "--eval-only", "--overwrite")


def build_config(args) -> CfgNode:
    """The checked config: yaml + overrides, datasets registered and resolved, inputs verified."""
    cfg = get_detx_cfg(args.config_file, args.opts, freeze=False)
    prepare_training(cfg, resume=args.resume, eval_only=args.eval_only)
    cfg.freeze()
    return cfg


def setup(args) -> CfgNode:
    cfg = build_config(args)
    # the loggers default_setup is about to open (setup_logger is cached per call signature), with log.txt free of
    # the colour codes detectron2 puts into the config it logs
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank())
    plain_log_files()
    default_setup(cfg, args)  # logging, OUTPUT_DIR/config.yaml, seeds
    if comm.is_main_process():
        atomic_write_text(f"{cfg.OUTPUT_DIR}/environment.txt", collect_env_info() + "\n")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            write_json(f"{cfg.OUTPUT_DIR}/eval_results.json", finite_or_none(results), indent=2)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: list[str] | None = None):
    """detectron2's arguments plus ``--overwrite``; a flag given after the overrides still counts as a flag."""
    parser = add_version(default_argument_parser(epilog=__doc__))
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an OUTPUT_DIR that holds a run (its checkpoints and metrics are deleted)")
    args = parser.parse_args(argv)
    for flag in FLAGS:
        while flag in args.opts:
            args.opts.remove(flag)
            setattr(args, flag[2:].replace("-", "_"), True)
    return args


def cli(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a bad config, data root, weights file or OUTPUT_DIR (named before any process
    starts, and while another run holds OUTPUT_DIR)."""
    args = parse_args(argv)

    def train() -> int:
        cfg = build_config(args)  # fail here, once, before any process is launched
        if args.machine_rank > 0:  # the main machine checks and owns OUTPUT_DIR
            launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                   dist_url=args.dist_url, args=(args,))
            return 0
        with folder_lock(cfg.OUTPUT_DIR, "OUTPUT_DIR"):
            if not args.eval_only:
                check_output_dir(cfg, resume=args.resume, overwrite=args.overwrite)
                if args.overwrite:
                    clear_output_dir(cfg.OUTPUT_DIR)
            launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                   dist_url=args.dist_url, args=(args,))
        if not args.eval_only:
            print(training_summary(cfg.OUTPUT_DIR))
        return 0

    return run(train)


if __name__ == "__main__":
    sys.exit(cli())
