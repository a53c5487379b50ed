"""Benchmark: a Llama-architecture model checked with --fsdp on N CPU ranks vs. one process.

    # one process (the baseline):
    python benchmarks/distributed_fsdp.py [--preset 1b|300m|150m]
    # 2 ranks, FSDP2 (gloo on the CPU; on GPUs NCCL with LOCAL_RANK):
    torchrun --nproc-per-node 2 benchmarks/distributed_fsdp.py --fsdp [--preset ...]

Each process prints one line: rank, world size, strategy, parameters, the passes' wall time, and memory:
`rss_model` (resident set after the model is built and, with --fsdp, sharded), `peak_passes` (peak
resident set during the passes: /proc/self/clear_refs resets the high-water mark after the build, so the
full model that every rank builds before sharding is not counted; Linux only). Expect each FSDP rank to
hold about 1/N of the parameters and gradients.

The run goes through gradcheck's own path (distributed.start / prepare_model / RankBatches / Driver and
pipeline.check_loaded), the same as `torchrun -m gradcheck_cli check MODEL --fsdp`.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

PRESETS = {   # hidden, intermediate, layers, heads, kv heads, vocab
    "1b": (2048, 5632, 22, 32, 4, 32000),     # TinyLlama-1.1B's shape: 1.10e9 parameters
    "300m": (1024, 2816, 20, 16, 4, 32000),   # ~0.30e9
    "150m": (1024, 2816, 8, 16, 4, 32000),    # ~0.16e9
}


def status(field: str) -> float:
    """VmRSS / VmHWM of this process, GiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class PhaseSampler:
    """--phases: a thread reading VmRSS every `interval` s, keeping the highest value seen in each of
    gradcheck's phases (deadline.phase(): batch, forward, loss, backward, analysis...)."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        from gradcheck_cli import deadline

        self.peaks: dict[str, float] = {}
        self.order: list[str] = []
        self.stop = threading.Event()
        self.deadline = deadline
        self.interval = interval
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            ph = self.deadline.phase()
            rss = status("VmRSS")
            if ph not in self.peaks:
                self.order.append(ph)
            self.peaks[ph] = max(self.peaks.get(ph, 0.0), rss)
            self.stop.wait(self.interval)

    def __enter__(self) -> "PhaseSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def line(self) -> str:
        return ", ".join(f"{ph} {self.peaks[ph]:.2f}" for ph in self.order)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--batch", type=int, default=2, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: NCCL under torchrun (LOCAL_RANK's GPU); memory then from torch.cuda")
    ap.add_argument("--phases", action="store_true",
                    help="also print the peak resident set in each phase of the passes (a sampling thread)")
    ap.add_argument("--units", choices=["blocks-leaves-root", "blocks-root"], default="blocks-leaves-root",
                    help="FSDP2 units: gradcheck's --fsdp (blocks, large untied leaves, root), or the blocks and "
                         "the root only (for comparison)")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gradcheck_cli import distributed, losses
    from gradcheck_cli.batches import SyntheticBatches
    from gradcheck_cli.config import Settings
    from gradcheck_cli.distributed import strategy
    from gradcheck_cli.distributed.driver import Driver
    from gradcheck_cli.distributed.rank_batches import RankBatches
    from gradcheck_cli.pipeline import check_loaded

    hidden, inter, layers, heads, kv, vocab = PRESETS[args.preset]
    ctx = distributed.start(args.fsdp, args.device, None) if distributed.requested(args.fsdp) else None
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                      max_position_embeddings=args.seq, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    source = SyntheticBatches(shape=(args.batch, args.seq), seed=0, float_dtype=torch.float32, vocab=vocab)
    device = (ctx.device if ctx is not None and ctx.device is not None else torch.device(args.device))
    if device.type == "cuda":
        model.to(device)
    driver = None
    if ctx is not None and args.units == "blocks-root":
        def blocks_and_root(model, ctx):
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cuda" if ctx.backend == "nccl" else "cpu", (ctx.world_size,))
            for block in model.model.layers:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            ctx.strategy = "fsdp"
            return model
        strategy.shard = blocks_and_root   # what prepare_model calls for --fsdp
    if ctx is not None:
        model = strategy.prepare_model(model, ctx, device)
        source = RankBatches(source, ctx)
        driver = Driver(ctx, source)
    gc.collect()
    rss_model = status("VmRSS")
    reset_peak()
    if device.type == "cuda":
        torch.cuda.synchronize()
        rss_model = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    s = Settings(model=f"llama-{args.preset}", steps=args.steps, device=device.type)
    sampler = PhaseSampler() if args.phases and device.type == "cpu" else None
    if sampler is not None:
        with sampler:
            report = check_loaded(model, source, losses.resolve(None), s, device, t0, dist=driver)
    else:
        report = check_loaded(model, source, losses.resolve(None), s, device, t0, dist=driver)
    peak = status("VmHWM") if device.type == "cpu" else torch.cuda.max_memory_allocated() / 2**30
    rank = ctx.rank if ctx else 0
    world = ctx.world_size if ctx else 1
    print(f"rank {rank}/{world} {ctx.strategy if ctx else 'single'} {args.units if ctx and ctx.fsdp else ''} preset {args.preset} params {n_params / 1e9:.3f}e9 "
          f"batch {args.batch}x{args.seq} steps {args.steps}: passes {report.timings['passes_s']:.1f} s, "
          f"rss_model {rss_model:.2f} GiB, peak_passes {peak:.2f} GiB, "
          f"findings {[f.code for f in report.findings]}, total_grad_norm {report.run['total_grad_norm']:.6g}",
          flush=True)
    if sampler is not None:
        print(f"rank {rank}: peak RSS by phase (GiB): {sampler.line()}", flush=True)
    distributed.finish(ctx)


if __name__ == "__main__":
    main()
