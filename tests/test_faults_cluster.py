"""A lost node of a multi-node cluster (ray.cluster_utils.Cluster: real raylets on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssagan_dist import checkpointing, storage, train
from tests.faults import ray_train_workers, wait_until
from tests.test_faults import FAST, assert_same_weights, data_args, events, train_in_thread

# Multi-node clusters and 120-step runs: with the slow tests (make test-slow, CI).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the session's shared local Ray (conftest.ray_cluster), if up: this module has its own
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def shared_tmp_path(tmp_path, monkeypatch):
    """tmp_path declared shared storage: the cluster's nodes all run on this machine, so they all
    see it (a local run.storage_path is refused on a cluster of several nodes otherwise)."""
    monkeypatch.setenv(storage.SHARED_STORAGE_ENV, str(tmp_path))
    return tmp_path


def hosting_workers(nodes) -> dict:
    """node -> its RayTrainWorker processes, for the nodes that host any."""
    return {n: w for n in nodes if (w := ray_train_workers(n.all_processes["raylet"][0].process.pid))}


def test_an_elastic_group_finishes_on_fewer_workers_after_losing_a_node(cluster, sky, shared_tmp_path):
    """scaling.min_ranks=1, scaling.ranks=2 on two 1-CPU nodes: a node is removed mid-run and the
    run finishes on the one left, with the global batch kept and every clip of each epoch seen once
    (the loader's position is a prefix of the epoch order, so it carries over any group size).

    First in this module: an elastic group starts with as many workers as Ray's autoscaling
    coordinator sees room for, and the coordinator refreshes its node list only every 20 s, so on a
    cluster whose nodes just changed it would start smaller (and grow a minute later)."""
    c, _ = cluster
    args = ["--config", "tiny_cpu", *FAST, *data_args(sky), f"run.storage_path={shared_tmp_path}", "run.name=elastic",
            "scaling.ranks=2", "scaling.min_ranks=1", "loop.batch_size=2", "loop.max_steps=120",
            "loop.val_every=20", "loop.log_every=20"]
    thread, out = train_in_thread(args)
    wait_until((shared_tmp_path / "elastic" / "checkpoint_000000020" / "model.pt").exists, "the first checkpoint",
               alive=thread.is_alive, why=lambda: f"(train.main returned {out})")
    worker_nodes = c.list_all_nodes()[1:]
    hosting = hosting_workers(worker_nodes)
    assert sorted(len(w) for w in hosting.values()) == [1, 1], "the elastic group did not start with 2 workers"
    c.remove_node(next(iter(hosting)))
    thread.join(timeout=400)
    assert out.get("rc") == 0
    final = shared_tmp_path / "elastic" / "checkpoint_000000120"
    assert checkpointing.read_model(final)["step"] == 120
    assert not (final / "worker-1.pt").exists(), "the run did not finish on fewer workers"
    loader = checkpointing.read_worker(final, 0)["loader"]
    assert loader["world_size"] * loader["batch_size"] == 4  # the global batch was kept
    # 120 steps x 2 batches (one D, one G update) of 4 clips over epochs of 24 clips (6 batches):
    # 40 epochs exactly, none cut short or repeated across the resize
    assert (loader["epoch"], loader["consumed"]) in ((40, 0), (39, 6))


def test_a_removed_node_is_survived_with_the_same_final_weights(cluster, sky, shared_tmp_path):
    c, _ = cluster
    c.add_node(num_cpus=1)  # the elastic test removed one; back to two worker nodes
    c.wait_for_nodes()
    nodes = c.list_all_nodes()[1:]
    args = ["--config", "tiny_cpu", *FAST, *data_args(sky), f"run.storage_path={shared_tmp_path}",
            "loop.max_steps=120", "loop.val_every=20", "loop.log_every=20"]
    assert train.main([*args, "run.name=straight"]) == 0
    thread, out = train_in_thread([*args, "run.name=lost"])
    wait_until((shared_tmp_path / "lost" / "checkpoint_000000020" / "model.pt").exists, "the first checkpoint",
               alive=thread.is_alive, why=lambda: f"(train.main returned {out})")
    hosting = list(hosting_workers(nodes))
    assert len(hosting) == 1
    c.remove_node(hosting[0])  # the node and its worker are gone; the other node has room
    thread.join(timeout=300)
    assert out.get("rc") == 0
    # the group restarted from a checkpoint (a save cut short by the fault is skipped, if any)
    assert "resumed" in [e["event"] for e in events(shared_tmp_path / "lost")]
    assert checkpointing.read_model(Path(shared_tmp_path / "lost" / "checkpoint_000000120"))["step"] == 120
    assert_same_weights(shared_tmp_path / "straight", shared_tmp_path / "lost")
