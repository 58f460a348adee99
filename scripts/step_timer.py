"""Run a transformers-based training module and time its optimizer steps, the same way for any trainer.

    python scripts/step_timer.py TIMES.json MODULE [ARGS ...]
    python scripts/step_timer.py times.json st_poetry train --data ... --max-steps 30

`experiments/train_vs_flagembedding.py` runs both st_poetry and FlagEmbedding through this file, each in its own
virtual environment, so both are measured by one instrument: the time between the ends of consecutive optimizer
steps (the first step, which warms up, is not timed; a step that follows an evaluation or a checkpoint
save is not either) and the real (non-padding) and padded tokens each step trained on, summed from the
batch's attention masks. After each step it also records the process's resident memory and its peak so far
(`bench_train_memory.py` plots how memory moves with the steps). On a GPU it also records torch's peak
allocated and reserved memory. Only `transformers.Trainer` is patched, so any trainer built on it can be timed.
"""

from __future__ import annotations

import json
import resource
import runpy
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import transformers
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.batch_size = 0
        self._last_end: float | None = None
        self._disturbed = False
        self._tokens = 0
        self._padded = 0
        self.memory: list[dict] = []

    def count_tokens(self, inputs: Mapping) -> None:
        for key, value in inputs.items():
            if isinstance(value, Mapping):  # FlagEmbedding nests a BatchEncoding per side
                self.count_tokens(value)
            elif key.endswith("attention_mask"):
                self._tokens += int(value.sum())
                self._padded += value.numel()

    def on_train_begin(self, args, state, control, **kwargs):
        self.batch_size = args.per_device_train_batch_size

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.memory.append({"step": state.global_step, "padded_tokens": self._padded, **_rss_mib()})
        if self._last_end is not None and not self._disturbed:
            self.steps.append({"step": state.global_step, "seconds": now - self._last_end, "tokens": self._tokens})
        self._last_end, self._disturbed, self._tokens, self._padded = now, False, 0, 0

    def on_evaluate(self, args, state, control, **kwargs):
        self._disturbed = True

    def on_save(self, args, state, control, **kwargs):
        self._disturbed = True

    def summary(self) -> dict:
        seconds = sum(step["seconds"] for step in self.steps)
        tokens = sum(step["tokens"] for step in self.steps)
        timed = len(self.steps)
        gpu = {}
        if torch.cuda.is_available():  # the whole run's peak, evaluation included
            gpu = {"cuda_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
            gpu["cuda_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        return {
            **gpu,
            "timed_steps": timed,
            "seconds": seconds,
            "samples_per_s": timed * self.batch_size / seconds if seconds else None,
            "tokens_per_s": tokens / seconds if seconds else None,
            "tokens_per_step": tokens / timed if timed else None,
            "steps": self.steps,
            "memory": self.memory,
        }


def _rss_mib() -> dict[str, float]:
    """Resident memory now (Linux /proc) and the peak so far (getrusage: KiB on Linux), in MiB."""
    peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        peak["rss_mib"] = round(pages * resource.getpagesize() / 2**20)
    return peak


def install(timer: StepTimer) -> None:
    """Add `timer` to every trainer that trains, and show it each batch before the step runs."""
    train, training_step = transformers.Trainer.train, transformers.Trainer.training_step

    def timed_train(self, *args, **kwargs):
        if timer not in self.callback_handler.callbacks:
            self.add_callback(timer)
        return train(self, *args, **kwargs)

    def counted_training_step(self, model, inputs, *args, **kwargs):
        timer.count_tokens(inputs)
        return training_step(self, model, inputs, *args, **kwargs)

    transformers.Trainer.train = timed_train
    transformers.Trainer.training_step = counted_training_step


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, module, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]
    timer = StepTimer()
    install(timer)
    sys.argv = [module, *arguments]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(timer.summary(), handle, indent=1)


if __name__ == "__main__":
    main()
