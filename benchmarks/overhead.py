"""Overhead of gradcheck's instrumentation over plain forward/backward passes, measured in one run.

    python benchmarks/overhead.py                 # CPU, the four models, scale figures
    python benchmarks/overhead.py --device cuda   # on a GPU (peak memory from the CUDA allocator)
    python benchmarks/overhead.py --quick         # fewer rounds (a smoke run)
    python benchmarks/overhead.py --processes-only [--threads 1]   # only the whole-process table
    python benchmarks/overhead.py --help-only     # only `gradcheck --help`'s start-up time

For each model it times K passes (forward, loss, torch.autograd.grad over every trainable parameter)
three ways, interleaved round by round in the same process:
  plain         the passes alone, exactly as gradcheck runs them but with no instrumentation;
  gradcheck     measure.run_passes: the passes instrumented exactly as `gradcheck check` does;
  anomaly       the plain passes under torch.autograd.detect_anomaly(), the usual reference.
Each round gives a ratio (gradcheck/plain, anomaly/plain); the table shows the median over rounds.
Peak memory: the memory the K passes need above what the setup (model, batches) holds: on CUDA from
torch.cuda.max_memory_allocated, on CPU from the heap bytes in use (glibc mallinfo2; the resident set
elsewhere) sampled every half millisecond; each variant runs in a fresh subprocess that builds only
its model.
Whole processes: `gradcheck check benchmarks/process_models.py:NAME --steps 20` against
`python benchmarks/process_models.py NAME --steps 20` (import torch, build, the same 20 passes), each
run a fresh process, the two alternated round by round; wall time and peak resident set (the child's
rusage) per run; the table gives the median ratio and its range over rounds, and `gradcheck --help`'s
start-up time. A third variant runs the plain script started the way the gradcheck command starts (the
cyclic GC paused while torch is imported, then those objects frozen: gradcheck_cli/startup.py), so the
table also shows what the measuring itself costs once that start-up saving is taken out.
Ratios, not absolute times, are the result: machines differ and this one is noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from gradcheck_cli import batches, losses, measure  # noqa: E402

K = 3   # passes per timing sample (gradcheck's default --steps)


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------

def deep_mlp(depth: int = 64, width: int = 512) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def resnet() -> nn.Module:
    from healthy_resnet import ResNet

    return ResNet()


def transformer() -> tuple[nn.Module, str]:
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        from healthy_transformer import TransformerLM

        return TransformerLM(vocab=8000, d=384, heads=6, layers=6, ctx=128), "pre-LN transformer, 6 layers, d=384"
    cfg = GPT2Config(n_layer=6, n_embd=384, n_head=6, vocab_size=8000, n_positions=128,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg), "GPT-2 (transformers), 6 layers, d=384"


def lstm() -> nn.Module:
    from healthy_lstm import LSTMClassifier

    return LSTMClassifier(vocab=10000, emb=128, hidden=256)


def models() -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    """(name, factory, input shape); factories so that a memory subprocess builds only its model."""
    try:
        import transformers  # noqa: F401
        tr_name = "GPT-2 (transformers), 6 layers, d=384"
    except ImportError:
        tr_name = "pre-LN transformer, 6 layers, d=384"
    return [
        ("MLP, 64 Linear+ReLU layers, width 512", deep_mlp, (128, 512)),
        ("ResNet-20 with BatchNorm, 32x32", resnet, (64, 3, 32, 32)),
        (tr_name, lambda: transformer()[0], (8, 128)),
        ("LSTM classifier, 128 time steps", lstm, (32, 128)),
    ]


# ----------------------------------------------------------------------------------------------------------
# The three ways to run K passes
# ----------------------------------------------------------------------------------------------------------

def make(model: nn.Module, shape: tuple[int, ...], device: torch.device):
    model.to(device)
    src = batches.make_batch_source(None, shape, model, seed=0)
    loss_fn = losses.resolve(None)
    params = [p for p in model.parameters() if p.requires_grad]

    def plain() -> None:
        model.train()
        for step in range(K):
            torch.manual_seed(step)
            b = src.get(step, device)
            out = model(*b.args, **b.kwargs)
            loss, _, _ = losses.compute(loss_fn, out, b, step, 0)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            del grads, out, loss
        sync(device)

    def instrumented() -> None:
        measure.run_passes(model, src, loss_fn, steps=K, seed=0, device=device)
        sync(device)

    def anomaly() -> None:
        with torch.autograd.detect_anomaly(check_nan=True):
            plain()

    return {"plain": plain, "gradcheck": instrumented, "anomaly": anomaly}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def overhead(name: str, model: nn.Module, shape: tuple[int, ...], device: torch.device, rounds: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore", message=".*[Aa]nomaly.*")
    runs = make(model, shape, device)
    for fn in runs.values():   # warm-up
        fn()
    ratios_gc, ratios_an, plain_t = [], [], []
    for r in range(rounds):
        order = ["plain", "gradcheck", "anomaly"] if r % 2 == 0 else ["anomaly", "gradcheck", "plain"]
        t = {k: time_it(runs[k]) for k in order}
        ratios_gc.append(t["gradcheck"] / t["plain"])
        ratios_an.append(t["anomaly"] / t["plain"])
        plain_t.append(t["plain"])
    n_layers = len(measure.Inventory(model).layers)
    return {"model": name, "layers": n_layers, "plain_ms_per_pass": 1000 * statistics.median(plain_t) / K,
            "gradcheck_ratio": statistics.median(ratios_gc), "anomaly_ratio": statistics.median(ratios_an),
            "gradcheck_ratio_p90": sorted(ratios_gc)[int(0.9 * (len(ratios_gc) - 1))]}


# ----------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------

def _heap_in_use():
    """Bytes the process has allocated and not freed: glibc's mallinfo2 (in-use chunks plus mmapped
    blocks), which counts what the passes hold, unlike the resident set, which also keeps freed pages
    and fragmentation. Falls back to the resident set where mallinfo2 is not available."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2

        def in_use() -> int:
            m = libc.mallinfo2()
            return m.uordblks + m.hblkhd
        in_use()
        return in_use, "heap bytes in use (glibc mallinfo2)"
    except (OSError, AttributeError):
        return _rss, "resident set"


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def extra_memory(run: Callable[[], None], device: torch.device) -> int:
    """Bytes `run()` needs above what is in use before it: the CUDA allocator's peak, or on the CPU the heap
    bytes in use sampled every half millisecond while it runs. Prints nothing; for memory subprocesses."""
    import gc
    import threading

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - base
    measure, _ = _heap_in_use()
    base = measure()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], measure())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    run()
    done.set()
    t.join()
    return max(peak[0], measure()) - base


def peak_memory_child(index: int, variant: str, device_name: str) -> None:
    """Run in a subprocess: setup, then K passes of one variant; print the memory they needed (bytes)."""
    device = torch.device(device_name)
    name, factory, shape = models()[index]
    runs = make(factory(), shape, device)
    print(json.dumps({"extra": extra_memory(runs[variant], device)}))


def peak_memory(index: int, device: torch.device) -> float | None:
    out = {}
    for variant in ("plain", "gradcheck"):
        res = subprocess.run([sys.executable, __file__, "--child", str(index), variant, "--device", str(device)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
        if res.returncode != 0 or not lines:
            print(f"  (memory subprocess failed, exit {res.returncode}: {res.stderr.strip()[-300:]})", file=sys.stderr)
            return None
        out[variant] = json.loads(lines[-1])["extra"]
    return out["gradcheck"] / out["plain"] if out["plain"] > 0 else None


# ----------------------------------------------------------------------------------------------------------
# Scale: time per layer with depth
# ----------------------------------------------------------------------------------------------------------

def scale(device: torch.device, depths=(100, 300, 1000), width: int = 256, batch: int = 64) -> list[dict]:
    rows = []
    for depth in depths:
        model = deep_mlp(depth=depth, width=width)
        runs = make(model, (batch, width), device)
        runs["plain"]()
        runs["gradcheck"]()
        tp = statistics.median(time_it(runs["plain"]) for _ in range(3))
        tg = statistics.median(time_it(runs["gradcheck"]) for _ in range(3))
        rows.append({"depth": depth, "plain_ms_per_layer": 1000 * tp / K / depth,
                     "gradcheck_ms_per_layer": 1000 * tg / K / depth, "ratio": tg / tp})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Whole processes: import, build, 20 steps; `gradcheck check` vs a plain script doing the same passes
# ----------------------------------------------------------------------------------------------------------

PROCESS_MODELS = [("resnet", "small ResNet (3 stages, BatchNorm), 32x3x32x32"),
                  ("mlp100", "MLP, 100 Linear+ReLU layers, width 256, batch 64"),
                  ("lstm2", "2-layer LSTM, 32x64 tokens")]
PROCESS_STEPS = 20
STARTUP_LIKE_GRADCHECK = ("import gc; gc.disable(); import torch; gc.freeze(); gc.enable(); import runpy, sys; "
                          "sys.argv = ['process_models.py', '{name}', '--steps', '{steps}']; "
                          "runpy.run_path('benchmarks/process_models.py', run_name='__main__')")


def _run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak resident set (bytes), from the child's own
    rusage. CPU time is the steadier figure on a shared machine (waiting for a core is not counted)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.strip()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def processes(rounds: int, threads: int | None) -> Iterator[dict]:
    """One row per model, as soon as it is measured."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from process_models import SHAPES

    # Bytecode caching on (as on a user's installed package; a sandbox's PYTHONDONTWRITEBYTECODE would make
    # every gradcheck process recompile its ~60 modules, about 0.15-0.25 s of CPU the plain script never pays).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"PYTHONWARNINGS": "ignore", "COLUMNS": "100"})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    for name, desc in PROCESS_MODELS:
        shape = ",".join(str(d) for d in SHAPES[name])
        cmds = {
            "plain": [sys.executable, "benchmarks/process_models.py", name, "--steps", str(PROCESS_STEPS)],
            # The same script started the way the gradcheck command starts (gradcheck_cli/startup.py: the
            # cyclic GC paused while torch is imported, then those objects frozen): what is left of the
            # ratio against it is the measuring itself.
            "plain_startup": [sys.executable, "-c", STARTUP_LIKE_GRADCHECK.format(name=name, steps=PROCESS_STEPS)],
            "gradcheck": [sys.executable, "-m", "gradcheck_cli", "check", f"benchmarks/process_models.py:{name}",
                          "--steps", str(PROCESS_STEPS), "--input-shape", shape, "--device", "cpu"],
        }
        for cmd in cmds.values():   # warm the file cache
            _run_child(cmd, env)
        t: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        mem: dict[str, list[int]] = {k: [] for k in cmds}
        for r in range(rounds):
            for k in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
                wall, cpu_s, rss = _run_child(cmds[k], env)
                print(f"  ({name} {k}: {wall:.2f} s wall, {cpu_s:.2f} s CPU, {rss / 2**20:.0f} MiB)", file=sys.stderr,
                      flush=True)
                t[k].append(wall)
                cpu[k].append(cpu_s)
                mem[k].append(rss)
        ratios = [g / p for g, p in zip(t["gradcheck"], t["plain"])]
        cpu_ratios = [g / p for g, p in zip(cpu["gradcheck"], cpu["plain"])]
        same = [g / p for g, p in zip(t["gradcheck"], t["plain_startup"])]
        same_cpu = [g / p for g, p in zip(cpu["gradcheck"], cpu["plain_startup"])]
        yield ({"model": desc, "plain_s": statistics.median(t["plain"]),
                     "gradcheck_s": statistics.median(t["gradcheck"]), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "plain_cpu_s": statistics.median(cpu["plain"]), "cpu_ratio": statistics.median(cpu_ratios),
                     "cpu_ratio_min": min(cpu_ratios), "cpu_ratio_max": max(cpu_ratios),
                     "memory_ratio": statistics.median(mem["gradcheck"]) / statistics.median(mem["plain"]),
                     "same_ratio": statistics.median(same), "same_ratio_min": min(same), "same_ratio_max": max(same),
                     "same_cpu_ratio": statistics.median(same_cpu)})


def help_time(runs: int = 9) -> tuple[float, float, bool]:
    """Median seconds of `gradcheck --help` and of `python -c pass` (the interpreter's own start), alternated,
    and whether `--help` imported torch (python -X importtime).

    Runs the console script a user runs (`python -m gradcheck_cli` where it is not installed). Bytecode caching
    is left on (PYTHONDONTWRITEBYTECODE removed, one warm-up run), as on a user's installed package: without
    it every run recompiles gradcheck's modules from source (~25 ms).
    """
    script = Path(sys.executable).with_name("gradcheck")
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "gradcheck_cli", "--help"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "100"
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)   # warm-up: writes the .pyc files
    times: dict[str, list[float]] = {"help": [], "python": []}
    for _ in range(runs):
        for what, c in (("help", cmd), ("python", [sys.executable, "-c", "pass"])):
            t = time.perf_counter()
            subprocess.run(c, cwd=ROOT, env=env, capture_output=True, check=True)
            times[what].append(time.perf_counter() - t)
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradcheck_cli", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    torch_imported = any(line.rstrip().endswith("| torch") for line in res.stderr.splitlines())
    return statistics.median(times["help"]), statistics.median(times["python"]), torch_imported


def print_help_time() -> None:
    h, start, imported = help_time()
    print(f"`gradcheck --help`: median {h:.3f} s over 9 runs (target < 0.3 s; the interpreter alone, "
          f"`python -c pass`: {start:.3f} s); imports torch: {imported}")


def print_processes(rounds: int, threads: int | None) -> list[dict]:
    print(f"\nWhole processes (import, build, {PROCESS_STEPS} steps): `gradcheck check` vs a plain script doing "
          f"the same passes; {rounds} rounds, runs alternated; OMP_NUM_THREADS={threads or 'unset'}")
    print("| model | plain wall s | wall gradcheck / plain (range) | plain CPU s | CPU gradcheck / plain (range) "
          "| peak RSS gradcheck / plain | wall gradcheck / plain with gradcheck's start-up (range) | CPU, same |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for r in processes(rounds, threads):
        rows.append(r)
        print(f"| {r['model']} | {r['plain_s']:.2f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{r['plain_cpu_s']:.2f} | {r['cpu_ratio']:.2f} ({r['cpu_ratio_min']:.2f}-{r['cpu_ratio_max']:.2f}) | "
              f"{r['memory_ratio']:.2f} | {r['same_ratio']:.2f} ({r['same_ratio_min']:.2f}-{r['same_ratio_max']:.2f}) | "
              f"{r['same_cpu_ratio']:.2f} |", flush=True)
    for what, key in (("wall", "ratio"), ("CPU", "cpu_ratio")):
        ratios = [r[key] for r in rows]
        print(f"{what} time gradcheck/plain: median over models {statistics.median(ratios):.2f} (target <= 1.10), "
              f"worst {max(ratios):.2f} (target <= 1.25)")
    for what, key in (("wall", "same_ratio"), ("CPU", "same_cpu_ratio")):
        ratios = [r[key] for r in rows]
        print(f"{what} time gradcheck / plain started like gradcheck (the measuring alone): median over models "
              f"{statistics.median(ratios):.2f}, worst {max(ratios):.2f}")
    print(f"peak RSS gradcheck/plain: worst {max(r['memory_ratio'] for r in rows):.2f} (target <= 1.2)")
    print_help_time()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="5 rounds, no memory subprocesses, depths 100/300")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--processes-only", action="store_true", help="only the whole-process table")
    ap.add_argument("--help-only", action="store_true", help="only `gradcheck --help`'s start-up time")
    ap.add_argument("--process-rounds", type=int, default=5, help="rounds of the whole-process table")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the whole-process runs (both variants; default: unset)")
    args = ap.parse_args()
    if args.child:
        peak_memory_child(int(args.child[0]), args.child[1], args.device)
        return 0
    if args.help_only:
        print_help_time()
        return 0
    if args.processes_only:
        print_processes(3 if args.quick else args.process_rounds, args.threads)
        return 0
    device = torch.device(args.device)
    rounds = 5 if args.quick else args.rounds
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, K={K} passes per "
          f"sample, {rounds} interleaved rounds; ratios are medians over rounds\n")
    print("| model | layers measured | plain ms/pass | gradcheck / plain | detect_anomaly / plain | peak memory gradcheck / plain |")
    print("|---|---|---|---|---|---|")
    results = []
    for i, (name, factory, shape) in enumerate(models()):
        row = overhead(name, factory(), shape, device, rounds)
        row["memory_ratio"] = None if args.quick else peak_memory(i, device)
        results.append(row)
        mem = f"{row['memory_ratio']:.2f}" if row["memory_ratio"] is not None else "-"
        print(f"| {name} | {row['layers']} | {row['plain_ms_per_pass']:.1f} | {row['gradcheck_ratio']:.2f} | "
              f"{row['anomaly_ratio']:.2f} | {mem} |", flush=True)
    gc = [r["gradcheck_ratio"] for r in results]
    print(f"\ngradcheck/plain: median over models {statistics.median(gc):.2f} (target <= 1.10), "
          f"worst {max(gc):.2f} (target <= 1.25)")
    mems = [r["memory_ratio"] for r in results if r["memory_ratio"] is not None]
    if mems:
        print(f"peak memory gradcheck/plain: worst {max(mems):.2f} (target <= 1.2)")
    print("\nScale: deep MLPs (width 256, batch 64), time per layer per pass")
    print("| layers | plain ms/layer | gradcheck ms/layer | gradcheck / plain |")
    print("|---|---|---|---|")
    for r in scale(device, depths=(100, 300) if args.quick else (100, 300, 1000)):
        print(f"| {r['depth']} | {r['plain_ms_per_layer']:.3f} | {r['gradcheck_ms_per_layer']:.3f} | {r['ratio']:.2f} |",
              flush=True)
    if device.type == "cpu":
        print_processes(3 if args.quick else args.process_rounds, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
