"""What the Hugging Face Trainer callback costs: a small GPT-2 trained with and without it, alternated.

    python benchmarks/watch_overhead.py            # 600 steps per run (12 measured), 3 rounds, alternated
    python benchmarks/watch_overhead.py --quick    # 60 steps, every=20, 2 rounds (a smoke test)

Prints, per round, the wall time of trainer.train() without and with GradcheckCallback(every=50), and the
median ratio (target <= 1.02); and the time of the measured steps against the median unmeasured step of
the same run (target <= 1.10). Step times come from a callback timing on_step_begin -> on_step_end; step 0
(warm-up) is left out. Both variants run once before the rounds (imports, allocator); what gradcheck
costs the first time in a process (its imports) is printed on its own, and so is the time spent in each
of the callback's events (absolute CPU ms, less sensitive to a loaded machine than the ratios) and the
extra time of a hooked forward+backward (measured step minus median unmeasured step). Runs on the GPU when there is one (wall clock, synchronised), else on one CPU
thread, where it also reports CPU time (time.process_time): on a shared machine the wall clock of one
process moves by more than the effect measured, its CPU time much less.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.every, a.rounds = 60, 20, 2

    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    t_first = time.perf_counter()
    from gradcheck_cli.integrations.transformers import GradcheckCallback

    GradcheckCallback(every=a.every)
    import gradcheck_cli.pipeline  # noqa: F401  (the rules, imported by the first measured step)
    first_use = time.perf_counter() - t_first

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    if cuda:
        config, batch, seq = GPT2Config(vocab_size=8192, n_positions=128, n_embd=256, n_layer=4, n_head=4), 16, 128
    else:   # one thread: on a shared CPU, thread contention is noise larger than the effect measured
        torch.set_num_threads(1)
        config, batch, seq = GPT2Config(vocab_size=1024, n_positions=32, n_embd=128, n_layer=2, n_head=2), 8, 32

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.x = torch.randint(0, config.vocab_size, (n, seq), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.x[i], "labels": self.x[i]}

    clock = time.perf_counter if cuda else time.process_time

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t = clock()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(clock() - self.t)

    data = Tokens(a.steps * batch)

    events = ("on_train_begin", "on_step_begin", "on_pre_optimizer_step", "on_step_end", "on_train_end")
    spent: dict[str, list[float]] = {e: [] for e in events}   # CPU s per call, over the measured runs

    def timed(cb):
        for name in events:
            fn = getattr(cb, name)

            def wrapper(*args, _fn=fn, _name=name, **kw):
                t = time.process_time()
                try:
                    return _fn(*args, **kw)
                finally:
                    spent[_name].append(time.process_time() - t)
            setattr(cb, name, wrapper)
        return cb

    def run(with_callback: bool) -> tuple[float, float, list[float]]:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
        timer = StepTimer()
        callbacks = [timer]
        if with_callback:
            callbacks.insert(0, timed(GradcheckCallback(every=a.every)))
        with tempfile.TemporaryDirectory() as d:
            args = TrainingArguments(output_dir=d, max_steps=a.steps, per_device_train_batch_size=batch,
                                     learning_rate=3e-4, logging_steps=10_000, report_to=[], save_strategy="no",
                                     disable_tqdm=True, use_cpu=not cuda, dataloader_num_workers=0)
            trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
            t, c = time.perf_counter(), time.process_time()
            trainer.train()
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t, time.process_time() - c, timer.times

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{'cuda ' + torch.cuda.get_device_name() if cuda else f'cpu, {torch.get_num_threads()} threads'}; "
          f"GPT-2 {config.n_layer} layers, d={config.n_embd}, vocab {config.vocab_size}, batch {batch}x{seq}, "
          f"{a.steps} steps per run, every={a.every}")
    print(f"first use in this process (gradcheck's imports, the callback built): {first_use * 1000:.0f} ms")
    run(False)   # warm-up (imports, allocator, kernels), both variants
    run(True)
    for v in spent.values():
        v.clear()
    ratios, cpu_ratios, step_ratios, extra = [], [], [], []
    unit = "wall s" if cuda else "CPU s"
    print(f"| round | without wall s | with wall s | wall with / without | without CPU s | with CPU s | "
          f"CPU with / without | measured step / median unmeasured step ({unit}) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(a.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        res = {flag: run(flag) for flag in order}
        (t0, c0, _), (t1, c1, steps) = res[False], res[True]
        measured = [i for i in range(a.every, a.steps, a.every)]
        unmeasured = [s for i, s in enumerate(steps) if i and i % a.every != 0]
        base = statistics.median(unmeasured)
        sr = [steps[i] / base for i in measured]
        extra += [steps[i] - base for i in measured]
        ratios.append(t1 / t0)
        cpu_ratios.append(c1 / c0)
        step_ratios += sr
        print(f"| {r + 1} | {t0:.2f} | {t1:.2f} | {t1 / t0:.3f} | {c0:.2f} | {c1:.2f} | {c1 / c0:.3f} | "
              f"{', '.join(f'{x:.2f}' for x in sr)} |")
    print(f"\nwall with/without: median {statistics.median(ratios):.3f} (target <= 1.02); "
          f"CPU time with/without: median {statistics.median(cpu_ratios):.3f}")
    print(f"measured step / unmeasured step: median {statistics.median(step_ratios):.2f}, "
          f"worst {max(step_ratios):.2f} (target <= 1.10)")
    n_runs = a.rounds
    print(f"\ngradcheck's own time ({unit.split()[0]} ms), per run of {a.steps} steps, from the callback's events:")
    for name in events:
        v = spent[name]
        if v:
            print(f"  {name:22s} {sum(v) / n_runs * 1000:8.2f} ms per run ({len(v) // n_runs} calls, "
                  f"median {statistics.median(v) * 1000:.3f} ms, max {max(v) * 1000:.2f} ms)")
    print(f"  a measured step beyond the median unmeasured one (hooks in forward/backward and the events): "
          f"median {statistics.median(extra) * 1000:.2f} ms, unmeasured step median "
          f"{statistics.median(unmeasured) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
