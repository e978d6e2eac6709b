"""Our CDSR/DASR against the authors' code on the CPU: same weights, same shapes, side by side.

    python scripts/bench_vs_authors.py --authors_cdsr CDSR_CHECKOUT --authors_dasr DASR_CHECKOUT
        [--models cdsr,dasr] [--eval_sizes 64,128] [--batch_size 4] [--patch_size 48]
        [--iterations 7] [--warmup 1] [--threads N] [--json OUT.json]

The authors' code is imported from your checkouts of github.com/ZhouYiiFeng/CDSR
(``model/CDSR.py``, ``utils/util_ma.py``, ``moco/``) and github.com/LongguangWang/DASR
(``model/blindsr.py``, ``utils/util.py``, ``moco/``); nothing of it ships here. Both
implementations get identical weights (theirs initialised, ours loaded from its state dict with
``model.checkpoint.load_weights``) and, per comparison, the same inputs. Measured (x4):

* ``eval NxN``: the evaluation forward on one NxN LR image; theirs ``BlindSR(x)`` in eval mode,
  ours ``model.inference.predict`` (what validation and test.py call);
* ``degradation``: one training batch (--batch_size images x 2 patches of LR --patch_size,
  the recipe of the model's preset), theirs ``SRMDPreprocessing`` as their trainer calls it,
  ours ``TrainingDegradation.apply`` (parameters drawn beforehand, as our loader workers do);
* ``train step``: the degradation plus one joint step; theirs as in their ``trainer.train``
  (``model(lr)``, L1 + cross-entropy, backward, Adam at lr 1e-4), ours ``model.training.training_step``.

Each comparison alternates the two (theirs, ours, ours, theirs, ...) after --warmup rounds, so
load drift hits both alike. Reported: the median wall time of each and the ratio ours/theirs of
the medians and of the fastest calls (on a shared virtual machine other guests can stall a call
for seconds; the fastest call is the least disturbed), median minor page faults, the peak
memory above the resting state (live tensor bytes from torch.profiler's memory events, see
``bench_train.py``) and, for the step, the bytes autograd saved for backward (distinct storages,
weights excluded). The eval outputs are compared as a check. ``--json`` adds every sample.

Shims (see ``AuthorsCode``; their files are never modified): ``.cuda()`` is a no-op, their CDSR
degradation gets ``device=cpu``, ``scipy.finfo`` (removed from SciPy) is numpy's, a stub
``yaml`` stands in when PyYAML is missing (imported by ``util_ma.py`` for helpers not used
here), and their trainer's EDSR ``Loss('1*L1')`` is ``nn.L1Loss`` (the same value).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import option  # noqa: E402
from data import build_training_degradation  # noqa: E402
from loss import build_loss  # noqa: E402
from model import build_model  # noqa: E402
from model.checkpoint import load_weights  # noqa: E402
from model.inference import predict  # noqa: E402
from model.precision import Precision  # noqa: E402
from scripts.authors_code import AuthorsCode, AuthorsError  # noqa: E402
from scripts.measure import (MiB, add_workload_flags, allocator_settings, host_load,  # noqa: E402
                             markdown_table, median, peak_bytes, timed)
from model.training import JOINT, build_phases, make_optimizer, set_trainable, training_step  # noqa: E402

CPU = torch.device("cpu")
def saved_for_backward_bytes(fn: Callable[[], object], exclude: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs, without
    those of ``exclude`` (the weights)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    saved: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def compare(label: str, theirs: Callable[[], object], ours: Callable[[], object],
            opts: argparse.Namespace, prepare: Optional[Callable[[], None]] = None,
            weights: Sequence[Sequence[torch.Tensor]] = ()) -> dict:
    """Alternate the two calls and measure them (see the module docstring)."""
    samples: Dict[str, list] = {"theirs": [], "ours": []}
    calls = {"theirs": theirs, "ours": ours}
    for r in range(opts.warmup + opts.iterations):
        for who in (("theirs", "ours") if r % 2 == 0 else ("ours", "theirs")):
            if prepare:
                prepare()
            sample = timed(calls[who], CPU)
            if r >= opts.warmup:
                samples[who].append(sample)
    row = {"comparison": label}
    for who in ("theirs", "ours"):
        row[f"{who}_ms"] = 1000 * median(samples[who], "wall")
        row[f"{who}_min_ms"] = 1000 * min(s["wall"] for s in samples[who])
        row[f"{who}_cpu_ms"] = 1000 * median(samples[who], "cpu")
        row[f"{who}_faults"] = median(samples[who], "faults")
        row[f"{who}_samples_ms"] = [round(1000 * s["wall"], 1) for s in samples[who]]
        if prepare:
            prepare()
        row[f"{who}_peak_mib"] = peak_bytes(calls[who], CPU) / MiB
    row["time_ratio"] = row["ours_ms"] / row["theirs_ms"]
    row["min_time_ratio"] = row["ours_min_ms"] / row["theirs_min_ms"]
    row["cpu_ratio"] = row["ours_cpu_ms"] / row["theirs_cpu_ms"]
    row["memory_ratio"] = row["ours_peak_mib"] / max(row["theirs_peak_mib"], 1e-9)
    if weights:
        for who, exclude in zip(("theirs", "ours"), weights):
            if prepare:
                prepare()
            row[f"{who}_saved_mib"] = saved_for_backward_bytes(calls[who], exclude) / MiB
    print(f"  {label}: ours/theirs time {row['time_ratio']:.2f} (fastest "
          f"{row['min_time_ratio']:.2f}), memory {row['memory_ratio']:.2f}", flush=True)
    return row


def paired_models(authors: AuthorsCode, scale: int) -> tuple:
    """(theirs, ours) with identical weights, MoCo key encoder and queue included."""
    torch.manual_seed(0)
    theirs = authors.build(scale)
    ours = build_model(authors.name, scale=scale)
    load_weights(ours, theirs.state_dict())
    return theirs, ours


def bench_model(authors: AuthorsCode, opts: argparse.Namespace) -> List[dict]:
    name = authors.name
    args = option.parse_args(["--preset", name, "--scale", str(opts.scale),
                              "--batch_size", str(opts.batch_size),
                              "--patch_size", str(opts.patch_size)])
    rows = []
    theirs, ours = paired_models(authors, args.scale)
    theirs.eval(), ours.eval()
    for size in opts.eval_sizes:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        x = (x * 255).round()
        with torch.no_grad():
            difference = (theirs(x) - predict(ours, x)).abs().max().item()
        row = compare(f"eval {size}x{size}", torch.no_grad()(lambda: theirs(x)),
                      torch.no_grad()(lambda: predict(ours, x)), opts)
        rows.append(dict(row, model=name, max_abs_diff=difference))

    side = args.patch_size * args.scale
    generator = torch.Generator().manual_seed(0)
    hr = (torch.rand(args.batch_size, 2, 3, side, side, generator=generator) * 255).round()
    their_degradation = authors.degradation(args)
    degradation = build_training_degradation(args)
    lr_shape = (args.batch_size, 2, 3, args.patch_size, args.patch_size)
    draw = {}

    def draw_parameters() -> None:                            # our loader workers' share
        draw["params"] = degradation.sample(args.batch_size, generator)
        draw["noise"] = degradation.noise_maps(draw["params"]["noise"], lr_shape, generator)

    def ours_degrade() -> torch.Tensor:
        return degradation.apply(hr, draw["params"], draw["noise"])
    rows.append(dict(compare("degradation", lambda: their_degradation(hr), ours_degrade, opts,
                             prepare=draw_parameters), model=name))

    theirs, ours = paired_models(authors, args.scale)
    theirs.train()
    their_optimizer = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad],
                                       lr=args.lr_sr, betas=(0.9, 0.999), eps=1e-8)
    their_l1, their_ce = nn.L1Loss(), nn.CrossEntropyLoss()    # SHIM: EDSR Loss('1*L1')
    phase = next(p for p in build_phases(args) if p.name == JOINT)
    set_trainable(ours, phase)
    our_optimizer = make_optimizer(ours, phase.base_lr)
    criterion = build_loss(args.loss, args.c_weight)
    precision = Precision("fp32", CPU)

    def their_step() -> None:                                   # their trainer.train body
        lr = their_degradation(hr)
        their_optimizer.zero_grad()
        sr, output, target = theirs(lr)
        loss_sr = their_l1(sr, hr[:, 0])
        loss_contrast = their_ce(output, target)
        loss = args.c_weight * loss_contrast + loss_sr
        loss_sr.item(), loss_contrast.item()
        loss.backward()
        their_optimizer.step()

    def our_step() -> None:                                     # our Trainer.train_epoch body
        lr = ours_degrade()
        training_step(ours, lr, hr[:, 0], phase, criterion, our_optimizer, precision=precision)

    def prepare() -> None:
        draw_parameters()
        their_optimizer.zero_grad(set_to_none=True)             # resting state: no gradients
        our_optimizer.zero_grad(set_to_none=True)
    row = compare("train step", their_step, our_step, opts, prepare=prepare,
                  weights=(resting_tensors(theirs, their_optimizer),
                           resting_tensors(ours, our_optimizer)))
    rows.append(dict(row, model=name))
    return rows


def resting_tensors(net: nn.Module, optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return [*net.parameters(), *net.buffers(), *state]


# ----------------------------------------------------------------------------- report
COLUMNS = (("model", "{}"), ("comparison", "{}"), ("theirs ms", "{:.0f}"), ("ours ms", "{:.0f}"),
           ("time ours/theirs", "{:.2f}"), ("fastest ours/theirs", "{:.2f}"),
           ("theirs faults", "{:.0f}"), ("ours faults", "{:.0f}"), ("theirs peak MiB", "{:.0f}"),
           ("ours peak MiB", "{:.0f}"), ("memory ours/theirs", "{:.2f}"),
           ("saved theirs/ours MiB", "{}"))
KEYS = ("model", "comparison", "theirs_ms", "ours_ms", "time_ratio", "min_time_ratio",
        "theirs_faults", "ours_faults", "theirs_peak_mib", "ours_peak_mib", "memory_ratio", "saved")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors_cdsr", default=None, help="checkout of github.com/ZhouYiiFeng/CDSR")
    p.add_argument("--authors_dasr", default=None, help="checkout of github.com/LongguangWang/DASR")
    p.add_argument("--models", default="cdsr,dasr", help="comma-separated: cdsr, dasr")
    p.add_argument("--eval_sizes", default="64,128",
                   help="comma-separated LR sides of the eval forward")
    add_workload_flags(p, iterations=7, iterations_help="timed rounds (each side once)")
    p.add_argument("--json", default=None, help="also write the measurements to this file")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    opts = build_parser().parse_args(argv)
    opts.eval_sizes = [int(s) for s in opts.eval_sizes.split(",") if s]
    if opts.threads:
        torch.set_num_threads(opts.threads)
    names = opts.models.split(",")
    try:
        unknown = [n for n in names if n not in ("cdsr", "dasr")]
        if unknown:
            raise AuthorsError(f"unknown model(s) {unknown}; choose from cdsr, dasr")
        code = [AuthorsCode(n, getattr(opts, f"authors_{n}")) for n in names]
    except AuthorsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load_before = host_load()
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; x{opts.scale}, "
          f"train batch {opts.batch_size}, LR patch {opts.patch_size}; {opts.iterations} timed "
          f"rounds after {opts.warmup} warm-up; host load {load_before}; malloc: "
          f"{allocator_settings()}", flush=True)
    rows = []
    for authors in code:
        rows += bench_model(authors, opts)
    for row in rows:
        row["saved"] = (f"{row['theirs_saved_mib']:.0f} / {row['ours_saved_mib']:.0f}"
                        if "ours_saved_mib" in row else "-")
    print(f"\nhost load before {load_before}, after {host_load()}")
    print(markdown_table(rows, COLUMNS, KEYS))
    checks = [f"{r['model'].upper()} {r['comparison']} {r['max_abs_diff']:.2g}"
              for r in rows if "max_abs_diff" in r]
    print("eval outputs, max |ours - theirs| (0..255 units): " + ", ".join(checks))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"host_load": [load_before, host_load()],
                                               "malloc": allocator_settings(), "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
