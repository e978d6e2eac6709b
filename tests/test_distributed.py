"""Several processes (torchrun, gloo on the CPU) and DataParallel's contract, on tiny runs.

The end-to-end runs launch ``python -m torch.distributed.run`` (torchrun) in a subprocess.
"""
import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from data.sampler import GlobalBatchSampler
from helpers import images, tiny
from loss import build_loss
import utility
from model.checkpoint import read_checkpoint
from model.parallel import GlobalBatchNorm2d, ProcessGroup, on_rank_zero, wrap
from model.training import JOINT, Phase, make_optimizer, set_trainable, training_step

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize("world", [1, 2, 4])
def test_process_shares_concatenate_to_the_one_process_batches(world):
    whole = list(GlobalBatchSampler(22, 4, seed=3))
    shares = [list(GlobalBatchSampler(22, 4, seed=3, rank=r, world_size=world)) for r in range(world)]
    assert len(whole) == 5 and all(len(s) == 5 for s in shares)        # 22 // 4, the rest dropped
    for k, batch in enumerate(whole):
        assert sum((s[k] for s in shares), []) == batch
    assert list(GlobalBatchSampler(22, 4, seed=3, start=2)) == whole[2:]
    assert sorted(sum(whole, [])) != sum(whole, []) and len(set(sum(whole, []))) == 20
    assert whole != list(GlobalBatchSampler(22, 4, seed=4))


def test_batch_must_split_over_the_processes():
    with pytest.raises(ValueError, match="divisible by the number of processes 3"):
        GlobalBatchSampler(20, 4, seed=0, rank=0, world_size=3)


class HalvesParallel(nn.DataParallel):
    """DataParallel's scatter/gather on the CPU: the batch split in two, the halves run through
    the module one after the other, dict outputs concatenated in batch order."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module, device_ids=[])

    def forward(self, *inputs, **kwargs):
        halves = [self.module(*(x.chunk(2)[i] for x in inputs), **kwargs) for i in range(2)]
        if isinstance(halves[0], torch.Tensor):
            return torch.cat(halves)
        return {key: torch.cat([h[key] for h in halves]) for key in halves[0]}


def test_data_parallel_steps_enqueue_every_key_of_the_batch_in_order():
    phase = Phase(JOINT, 1, 1, 1e-4, 1, 1.0, 0)
    lr, hr = images(4, 2, 3, 12, 12, seed=1), images(4, 3, 24, 24, seed=2)
    net = tiny("cdsr")                                      # queue 16, batch 4
    set_trainable(net, phase)
    optimizer = make_optimizer(net, 1e-4)
    before = net.encoder.queue.clone()
    steps = [training_step(HalvesParallel(net), lr, hr, phase, build_loss("1*L1", 1.0), optimizer)
             for _ in range(2)]
    keys = torch.cat([step.outputs["keys"] for step in steps])           # (8, dim), batch order
    assert keys.shape[0] == 8 and int(net.encoder.queue_ptr) == 8
    assert torch.equal(net.encoder.queue[:, :8], keys.T)               # both halves, in order
    assert torch.equal(net.encoder.queue[:, 8:], before[:, 8:])
    assert all(step.applied for step in steps)


def threaded_parallel_apply(modules, inputs, kwargs_tup, devices=None):
    """torch 2.14.1's ``parallel_apply`` on the CPU (torch's own needs an accelerator): each
    replica runs in a thread of its own, which re-enters autocast with ``enabled`` alone, as
    torch's ``_worker`` does with ``torch.amp.autocast(device_type, enabled=...)``."""
    enabled, results = torch.is_autocast_enabled("cpu"), {}

    def worker(i):
        with torch.autocast("cpu", enabled=enabled):
            results[i] = modules[i](*inputs[i], **kwargs_tup[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(modules))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[i] for i in range(len(modules))]


class DtypeProbe(nn.Module):
    """A convolution that records the dtype it computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen = []

    def forward(self, x):
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_data_parallel_replicas_compute_in_the_callers_autocast_dtype(dtype, monkeypatch):
    # Autocast's dtype is per thread: a replica's thread falls back to the device's default
    # (float16 on CUDA, bfloat16 on the CPU) unless the wrapper passes the caller's on.
    monkeypatch.setattr(sys.modules["torch.nn.parallel.data_parallel"], "parallel_apply",
                        threaded_parallel_apply)
    replicas = [DtypeProbe(), DtypeProbe()]
    net = wrap(replicas[0], ProcessGroup(), torch.device("cpu"), data_parallel=[0, 1])
    assert isinstance(net, nn.DataParallel)
    x = images(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=dtype):
        outputs = net.parallel_apply(replicas, [(x[:1],), (x[1:],)], [{}, {}])
    assert [r.seen for r in replicas] == [[dtype], [dtype]]
    assert all(out.dtype == dtype for out in outputs)
    with torch.autocast("cpu", enabled=False):                   # no autocast: float32 stays
        net.parallel_apply(replicas, [(x[:1],), (x[1:],)], [{}, {}])
    assert [r.seen[-1] for r in replicas] == [torch.float32, torch.float32]


def _batchnorm_worker(rank: int, init_file: str, x: torch.Tensor, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)
    torch.manual_seed(0)
    bn = GlobalBatchNorm2d(3)
    part = x.chunk(2)[rank].clone().requires_grad_(True)
    out = bn(part)
    (out * torch.arange(out.numel()).view_as(out)).sum().backward()
    results[rank] = (out.detach(), part.grad, bn.running_mean.clone(), bn.running_var.clone(),
                     bn.weight.grad.clone())
    torch.distributed.destroy_process_group()


def test_global_batchnorm_over_two_processes_equals_batchnorm_of_the_whole_batch(tmp_path):
    x = images(4, 3, 5, 6, seed=3) / 50 + 10           # a large mean, as DASR's 0..255 input
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_batchnorm_worker, args=(str(tmp_path / "init"), x, results), nprocs=2)
        results = dict(results)
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    whole = x.clone().requires_grad_(True)
    out = bn(whole)
    (out * torch.cat([torch.arange(out.numel() // 2).view_as(out[:2])] * 2)).sum().backward()
    torch.testing.assert_close(torch.cat([results[r][0] for r in (0, 1)]), out.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([results[r][1] for r in (0, 1)]), whole.grad, atol=1e-4, rtol=1e-4)
    for r in (0, 1):
        torch.testing.assert_close(results[r][2], bn.running_mean)
        torch.testing.assert_close(results[r][3], bn.running_var)
    torch.testing.assert_close(results[0][4] + results[1][4], bn.weight.grad, rtol=1e-4, atol=1e-4)


def _low_precision_batchnorm_worker(rank: int, init_file: str, inputs: dict, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)
    for name, x in inputs.items():
        bn = GlobalBatchNorm2d(x.shape[1])
        with torch.autocast("cpu", dtype=x.dtype):
            try:
                out = bn(x.chunk(2)[rank]).detach()
            except Exception as error:             # e.g. a dtype gloo cannot all-gather
                out = error
        results[(name, rank)] = (out, bn.running_mean.clone(), bn.running_var.clone())
    torch.distributed.destroy_process_group()


def test_global_batchnorm_keeps_float32_statistics_under_low_precision(tmp_path):
    # 16x48x48 values per channel and process, variance 4 (mean/std 10): in float16 their
    # squared deviations sum to 1.5e5, beyond float16's 65504; bfloat16 rounds the mean to 0.125.
    x = torch.randn(32, 2, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 + 20
    inputs = {"fp16": x.half(), "bf16": x.bfloat16()}
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_low_precision_batchnorm_worker, args=(str(tmp_path / "init"), inputs, results),
                 nprocs=2)
        results = dict(results)
    for name, low in inputs.items():
        whole = low.double()                                 # the same values, exactly
        mean, var = whole.mean((0, 2, 3)), whole.var((0, 2, 3), unbiased=False)
        expected = (whole - mean[None, :, None, None]) / (var[None, :, None, None] + 1e-5).sqrt()
        outs = [results[(name, rank)][0] for rank in (0, 1)]
        assert all(isinstance(out, torch.Tensor) for out in outs), outs
        out = torch.cat(outs)
        assert out.dtype == low.dtype                           # the input's dtype ...
        torch.testing.assert_close(out.double(), expected.to(low.dtype).double(),  # ... rounded once
                                   atol=2 * torch.finfo(low.dtype).eps * 4, rtol=0)
        unbiased = whole.var((0, 2, 3))
        for rank in (0, 1):
            running_mean, running_var = results[(name, rank)][1:]
            torch.testing.assert_close(running_mean.double(), 0.1 * mean, atol=1e-5, rtol=0)
            torch.testing.assert_close(running_var.double(), 0.9 + 0.1 * unbiased, atol=1e-5, rtol=0)


def _rank_zero_worker(rank: int, init_file: str, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)

    def read():
        if rank != 0:
            raise AssertionError("only rank 0 does the work")
        return {"read by": rank}

    def fail():
        raise FileNotFoundError("experiment/run/checkpoint/last.pt does not exist")

    results[(rank, "read")] = on_rank_zero(read)
    try:
        on_rank_zero(fail)
    except (FileNotFoundError, utility.FailedOnRankZero) as error:
        results[(rank, "fail")] = type(error).__name__
    torch.distributed.destroy_process_group()


def test_rank_zero_reads_for_everyone_and_its_failure_reaches_every_process(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_zero_worker, args=(str(tmp_path / "init"), results), nprocs=2)
        results = dict(results)
    assert results[(0, "read")] == results[(1, "read")] == {"read by": 0}
    # rank 0 raises (and prints) the error; the other ends quietly instead of waiting.
    assert (results[(0, "fail")], results[(1, "fail")]) == ("FileNotFoundError", "FailedOnRankZero")


# ----------------------------------------------------------------------------- end to end
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_argv(data_root: Path, save: str, *extra: str) -> list:
    return ["main.py", "--model", "DASR", "--dir_data", str(data_root), "--scale", "2",
            "--patch_size", "12", "--batch_size", "4", "--queue_size", "16", "--epochs_encoder", "0",
            "--epochs_sr", "1", "--freeze_epoch", "9", "--test_every", "5", "--n_threads", "0",
            "--data_test", "Set5", "--save", save, "--cpu", *extra]


def launch(argv: list, cwd: Path, processes: int = 0, torchrun: tuple = ()) -> subprocess.CompletedProcess:
    """main.py in one plain process (processes=0) or under torchrun (``torchrun`` options)."""
    argv = [str(ROOT / argv[0]), *argv[1:]]
    if processes:
        argv = ["-m", "torch.distributed.run", *torchrun, "--nproc_per_node", str(processes), *argv]
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)


def losses(run_dir: Path) -> list:
    with open(run_dir / "losses.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k in ("total", "L1", "contrastive",
                                                               "contrastive_accuracy")}
                for row in csv.DictReader(f)]


def test_two_processes_reproduce_one_process_at_the_same_global_batch(data_root, tmp_path):
    one = launch(train_argv(data_root, "one", "--sync_bn", "--ema_decay", "0.5"), tmp_path)
    assert one.returncode == 0, one.stderr
    two = launch(train_argv(data_root, "two", "--sync_bn", "--ema_decay", "0.5"), tmp_path,
                 processes=2, torchrun=("--standalone",))
    assert two.returncode == 0, two.stderr
    runs = sorted(p.name for p in (tmp_path / "experiment").iterdir())
    assert runs == ["one", "two"]                                   # one folder per run
    assert sorted(p.name for p in (tmp_path / "experiment/two/checkpoint").iterdir()) == ["best.pt", "last.pt"]
    expected, got = losses(tmp_path / "experiment/one"), losses(tmp_path / "experiment/two")
    assert len(expected) == len(got) == 5
    for a, b in zip(expected[:3], got[:3]):
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]), (key, a, b)
    q1 = read_checkpoint(tmp_path / "experiment/one/checkpoint/last.pt")["model"]
    q2 = read_checkpoint(tmp_path / "experiment/two/checkpoint/last.pt")["model"]
    assert int(q1["encoder.queue_ptr"]) == int(q2["encoder.queue_ptr"]) == 5 * 4 % 16
    torch.testing.assert_close(q2["encoder.queue"], q1["encoder.queue"], atol=1e-5, rtol=0)
    # The moving average (the same on both processes, or saving would have failed) and the
    # contrastive accuracy of the global batch (one collective with the losses) agree too.
    e1 = read_checkpoint(tmp_path / "experiment/one/checkpoint/last.pt")["model_ema"]
    e2 = read_checkpoint(tmp_path / "experiment/two/checkpoint/last.pt")["model_ema"]
    torch.testing.assert_close(e2["generator.tail_conv.weight"], e1["generator.tail_conv.weight"],
                               atol=1e-5, rtol=0)
    assert [a["contrastive_accuracy"] for a in expected] == [b["contrastive_accuracy"] for b in got]


def kdsr_argv(data_root: Path, save: str) -> list:
    """A KDSR-S-M run (paper size): 1 teacher, 1 distillation-encoder, 1 distillation epoch."""
    return ["main.py", "--model", "KDSR-S-M", "--dir_data", str(data_root), "--scale", "2",
            "--patch_size", "8", "--batch_size", "4", "--epochs_teacher", "1", "--epochs_encoder", "1",
            "--epochs_sr", "1", "--test_every", "2", "--n_threads", "0", "--data_test", "Set5",
            "--save", save, "--cpu"]


def test_kdsr_trains_teacher_then_student_under_torchrun_as_in_one_process(data_root, tmp_path):
    """No MoCo state: DDP's gradient averaging and the loss sum are the step's collectives, so
    two processes on halves of each global batch follow the one-process run."""
    one = launch(kdsr_argv(data_root, "kd1"), tmp_path)
    assert one.returncode == 0, one.stderr
    two = launch(kdsr_argv(data_root, "kd2"), tmp_path, processes=2, torchrun=("--standalone",))
    assert two.returncode == 0, two.stderr
    rows = {}
    for run in ("kd1", "kd2"):
        with open(tmp_path / "experiment" / run / "losses.csv", newline="") as f:
            rows[run] = list(csv.DictReader(f))
    assert [r["phase"] for r in rows["kd2"]] == ["teacher"] * 2 + ["kd_encoder"] * 2 + ["distill"] * 2
    for a, b in zip(rows["kd1"], rows["kd2"]):
        for key in ("total", "L1", "kd"):
            if a[key]:
                assert abs(float(a[key]) - float(b[key])) <= 1e-4 * abs(float(a[key])), (key, a, b)
    last = [read_checkpoint(tmp_path / "experiment" / run / "checkpoint/last.pt") for run in ("kd1", "kd2")]
    assert [c["model_name"] for c in last] == ["kdsr-s-m"] * 2 and "x 2 processes" in two.stderr
    # The weights: Adam moves a weight whose gradient is float32 noise by up to its lr (1e-3
    # here) either way, so a few may differ by that much; all but 0.1% agree to 1e-5.
    for field in (lambda c: c["model"], lambda c: c["teacher"]["model"]):
        a, b = field(last[0]), field(last[1])
        d = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert d.max() <= 2e-3 and (d > 1e-5).float().mean() <= 1e-3, (d.max(), (d > 1e-5).float().mean())


def test_a_two_process_run_resumes_in_its_one_folder(data_root, tmp_path):
    first = launch(train_argv(data_root, "ddp"), tmp_path, processes=2, torchrun=("--standalone",))
    assert first.returncode == 0, first.stderr
    more = launch(train_argv(data_root, "ddp", "--resume", "--epochs_sr", "2"), tmp_path,
                  processes=2, torchrun=("--standalone",))
    assert more.returncode == 0, more.stderr
    assert [p.name for p in (tmp_path / "experiment").iterdir()] == ["ddp"]
    state = read_checkpoint(tmp_path / "experiment/ddp/checkpoint/last.pt")
    assert state["epoch"] == 2 and int(state["model"]["encoder.queue_ptr"]) == 10 * 4 % 16
    assert [row["epoch"] for row in csv.DictReader(open(tmp_path / "experiment/ddp/psnr.csv"))] == ["1", "2"]
    assert len(list((tmp_path / "experiment/ddp/tensorboard").iterdir())) == 2  # rank 0's, per launch


def two_nodes(argv: list, folders: list) -> list:
    """main.py on two single-process torchrun 'machines' on localhost, each in its own folder
    (no shared disk): [(returncode, stdout, stderr)] of nodes 0 and 1."""
    port = str(free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--master_addr", "127.0.0.1", "--master_port", port, "--nproc_per_node", "1",
         *[str(ROOT / "main.py") if a == "main.py" else a for a in argv]],
        cwd=folders[rank], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:                        # a node left waiting for the other one (as node 0 was)
        for node in nodes:
            if node.poll() is None:
                node.terminate()
                node.wait(timeout=60)
    return [(node.returncode, *output) for node, output in zip(nodes, outputs)]


def test_two_nodes_without_a_shared_folder_train_and_resume(data_root, tmp_path):
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for folder in folders:
        folder.mkdir()
    first = two_nodes(train_argv(data_root, "nodes"), folders)
    assert [node[0] for node in first] == [0, 0], first
    run_dir = folders[0] / "experiment/nodes"
    assert (run_dir / "checkpoint/last.pt").is_file() and "x 2 processes" in (run_dir / "log.txt").read_text()
    assert list(folders[1].iterdir()) == []                 # only rank 0 writes
    # Rank 0 reads last.pt and sends it: node 1 has no copy of the run folder.
    more = two_nodes(train_argv(data_root, "nodes", "--resume", "--epochs_sr", "2"), folders)
    assert [node[0] for node in more] == [0, 0], more
    assert read_checkpoint(run_dir / "checkpoint/last.pt")["epoch"] == 2
    assert list(folders[1].iterdir()) == []


def test_a_signal_to_one_process_stops_all_after_the_checkpoint_naming_it(data_root, tmp_path):
    argv = train_argv(data_root, "sig", "--test_every", "400", "--print_every", "1")
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", "2", str(ROOT / "main.py"), *argv[1:]],
                           cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    losses = tmp_path / "experiment/sig/losses.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not losses.exists() or len(losses.read_text().splitlines()) < 3):
        time.sleep(0.2)
    workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
               and _parent_and_rank(int(pid)) == (run.pid, "1")]
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGUSR1)                     # rank 1 only, as some schedulers do
    _, stderr = run.communicate(timeout=120)
    assert "stopped by SIGUSR1 in epoch 1 after iteration" in stderr, stderr
    done = read_checkpoint(tmp_path / "experiment/sig/checkpoint/last.pt")["progress"]["iteration"]
    assert done >= 2 and len(losses.read_text().splitlines()) == 1 + done


def _parent_and_rank(pid: int) -> tuple:
    """(parent pid, RANK in its environment) of a process; (None, None) once it is gone."""
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None, None
    rank = next((item[5:].decode() for item in environ if item.startswith(b"RANK=")), None)
    return parent, rank


def test_a_batch_that_does_not_split_is_one_error_line(data_root, tmp_path):
    bad = launch(train_argv(data_root, "bad", "--batch_size", "3", "--queue_size", "12"), tmp_path,
                 processes=2, torchrun=("--standalone",))
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: --batch_size 3 (the global batch) is not divisible by the 2 processes; "
                     "choose a multiple of 2 (see --help)"]
    assert not (tmp_path / "experiment" / "bad").exists()
