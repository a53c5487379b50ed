"""Cost of the training rehearsal (--train-steps) over a plain training loop of the same steps.

    python benchmarks/training_overhead.py            # CPU: time ratio (median of alternated rounds) and memory
    python benchmarks/training_overhead.py --quick    # fewer rounds and steps (a smoke run)
    python benchmarks/training_overhead.py --device cuda
    python benchmarks/training_overhead.py --threads 1 --cpu-time   # steadier on a shared machine

Both variants start from the same user model, in the same process, alternated round by round:
  plain       copy.deepcopy(model), Adam (lr 1e-3), then N steps of: zero_grad, forward, cross-entropy on
              the same fixed (input, target) pairs the rehearsal uses, backward, optimizer.step();
  rehearsal   measure.training.rehearse: the same N steps on its own deep copy, watched (Monitor hooks,
              per-step record, update ratios, ReLU masks).
The table gives the median over rounds of rehearsal / plain (the issue's bound: <= 1.15x).
Peak memory: each variant runs in a fresh subprocess that builds only its model (and runs one warm-up
step of that variant, so one-off imports do not count); the memory the run needs above that (CUDA allocator peak, or heap bytes in use on the CPU, see overhead.py)
is compared with the plain loop's plus one copy of the model and its Adam state (the issue's bound).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gradcheck_cli import batches, losses  # noqa: E402
from gradcheck_cli.measure.training import SYNTHETIC_POOL, TrainSettings, rehearse  # noqa: E402


def models():
    from train_models import BNCNN

    def mlp():
        dims = [512, 1024, 1024, 1024, 10]
        layers = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    return [("MLP 512-1024x3-10, batch 64", mlp, (64, 512)),
            ("BatchNorm CNN (width 32), batch 32x3x32x32", lambda: BNCNN(32), (32, 3, 32, 32))]


def make(model: nn.Module, shape, device: torch.device, steps: int):
    source = batches.make_batch_source(None, shape, model, 0)
    loss_fn = losses.resolve("cross-entropy")
    pairs = []
    with torch.no_grad():   # the same (input, target) pairs the rehearsal draws
        for k in range(SYNTHETIC_POOL):
            b = source.get(k, device)
            out = model.to(device)(*b.args)
            gen = torch.Generator().manual_seed(0 * 104_729 + k + 17)
            pairs.append((b.args[0], losses.synth_target("cross-entropy", out, gen)))

    def plain():
        net = copy.deepcopy(model).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for step in range(steps):
            x, y = pairs[step % SYNTHETIC_POOL]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        loss.item()

    def rehearsal():
        rehearse(model, source, loss_fn, train=TrainSettings(steps=steps, optimizer="adam", lr=1e-3), seed=0,
                 device=device)

    return {"plain": plain, "rehearsal": rehearsal}


CLOCK = time.perf_counter


def time_it(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return CLOCK() - t


def memory_child(index: int, variant: str, device_name: str, steps: int) -> None:
    from overhead import extra_memory

    device = torch.device(device_name)
    name, factory, shape = models()[index]
    torch.manual_seed(0)
    model = factory().to(device)
    runs = make(model, shape, device, steps)
    make(model, shape, device, 1)[variant]()   # warm-up: one-off imports and caches are not the run's memory
    print(json.dumps({"extra": extra_memory(runs[variant], device)}))


def memory(index: int, device: torch.device, steps: int) -> dict | None:
    out = {}
    for variant in ("plain", "rehearsal"):
        res = subprocess.run([sys.executable, __file__, "--child", str(index), variant, "--device", str(device),
                              "--steps", str(steps)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
        if res.returncode != 0 or not lines:
            print(f"  (memory subprocess failed: {res.stderr.strip()[-300:]})", file=sys.stderr)
            return None
        out[variant] = json.loads(lines[-1])["extra"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time instead of the wall clock (steadier on a shared machine)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    global CLOCK
    if a.cpu_time:
        CLOCK = time.process_time
    if a.threads:
        torch.set_num_threads(a.threads)
    steps = a.steps or (10 if a.quick else 30)
    if a.child:
        memory_child(int(a.child[0]), a.child[1], a.device, steps)
        return 0
    device = torch.device(a.device)
    rounds = a.rounds or (3 if a.quick else 7)
    print(f"device {device}, {steps} steps per run, {rounds} alternated rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, clock: {'process CPU time' if a.cpu_time else 'wall'}")
    print("| model | plain s (median) | rehearsal s (median) | ratio (median of rounds) | extra memory: plain | "
          "rehearsal | allowance (model + Adam state) |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for i, (name, factory, shape) in enumerate(models()):
        torch.manual_seed(0)
        model = factory().to(device)
        runs = make(model, shape, device, steps)
        runs["plain"]()
        runs["rehearsal"]()    # warm-up both
        tp, tr, ratios = [], [], []
        for r in range(rounds):
            order = ("plain", "rehearsal") if r % 2 == 0 else ("rehearsal", "plain")
            t = {v: time_it(runs[v], device) for v in order}
            tp.append(t["plain"])
            tr.append(t["rehearsal"])
            ratios.append(t["rehearsal"] / t["plain"])
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        mem = memory(i, device, steps)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        allowance = 3 * size   # one copy of the weights + Adam's two moments
        mtxt = (f"{mem['plain'] / 2**20:.1f} MiB | {mem['rehearsal'] / 2**20:.1f} MiB | "
                f"{allowance / 2**20:.1f} MiB ({'within' if mem['rehearsal'] <= mem['plain'] + allowance else 'ABOVE'})"
                if mem else "n/a | n/a | n/a")
        print(f"| {name} | {statistics.median(tp):.3f} | {statistics.median(tr):.3f} | {ratio:.3f} | {mtxt} |")
    print(f"worst median ratio {worst:.3f} (bound 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
