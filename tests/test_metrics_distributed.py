"""Two gloo processes on CPU: the pooled histograms are all-reduced, giving the single-process values."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from calibmonai.metrics import CalibrationMetrics


def _batches():
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(4):
        z = torch.randn(2, 3, 8, 8, generator=g) * 3
        y = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
        out.append((z.softmax(1), y))
    return out


def _worker(rank, world, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = CalibrationMetrics()
        for i, (p, y) in enumerate(_batches()):
            if i % world == rank:
                m(p, y)
        queue.put((rank, m.aggregate("pooled")))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def test_two_process_all_reduce_matches_single_process():
    single = CalibrationMetrics()
    for p, y in _batches():
        single(p, y)
    want = single.aggregate("pooled")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for pr in procs:
        pr.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for pr in procs:
        pr.join(timeout=60)
        assert pr.exitcode == 0
    for rank in (0, 1):
        for k, v in want.items():
            assert results[rank][k] == pytest.approx(v, abs=1e-9), (rank, k)
    # and a single rank alone does not see all the data
    alone = CalibrationMetrics()
    for p, y in _batches()[::2]:
        alone(p, y)
    assert alone.aggregate("pooled")["ece"] != pytest.approx(want["ece"], abs=1e-9)
