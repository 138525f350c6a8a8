"""Draft-model training: losses (DSpark/DFlash, Eagle3 TTT), the trainer loop, checkpoints and the CLI.

See algorithms.md section 5. `specserve train --config FILE [--set key=value ...]` is the entry point
(`specserve.training.cli`); `Trainer` runs one process of a (possibly torchrun-launched) training job.
"""
