"""Several processes (torchrun, gloo on the CPU) and DataParallel's contract, on tiny runs.

The end-to-end runs launch ``python -m torch.distributed.run`` (torchrun) in a subprocess.
"""
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from data.sampler import GlobalBatchSampler
from helpers import images, tiny, write_data_root
from loss import build_loss
from model.checkpoint import read_checkpoint
from model.parallel import GlobalBatchNorm2d
from trainer import JOINT, Phase, make_optimizer, set_trainable, training_step

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


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data_root(tmp_path_factory.mktemp("data"), [(40, 44)] * 3, [(32, 32)], seed=1)


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
        return [{k: float(v) for k, v in row.items() if k in ("total", "L1", "contrastive")}
                for row in csv.DictReader(f)]


def test_two_processes_reproduce_one_process_at_the_same_global_batch(data_root, tmp_path):
    one = launch(train_argv(data_root, "one", "--sync_bn"), tmp_path)
    assert one.returncode == 0, one.stderr
    two = launch(train_argv(data_root, "two", "--sync_bn"), tmp_path, processes=2,
                 torchrun=("--standalone",))
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


def test_two_single_process_nodes_on_localhost(data_root, tmp_path):
    port = str(free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--master_addr", "127.0.0.1", "--master_port", port, "--nproc_per_node", "1",
         *[str(ROOT / "main.py") if a == "main.py" else a for a in train_argv(data_root, "nodes")]],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert (tmp_path / "experiment/nodes/checkpoint/last.pt").is_file()
    assert "x 2 processes" in (tmp_path / "experiment/nodes/log.txt").read_text()


def test_a_batch_that_does_not_split_is_one_error_line(data_root, tmp_path):
    bad = launch(train_argv(data_root, "bad", "--batch_size", "3", "--queue_size", "12"), tmp_path,
                 processes=2, torchrun=("--standalone",))
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: --batch_size 3 (the global batch) is not divisible by the 2 processes; "
                     "choose a multiple of 2"]
    assert not (tmp_path / "experiment" / "bad").exists()
