"""Regression tests, over HTTP on 127.0.0.1, of the attacks that broke a real node.

* One push of a schema-valid model whose values are all 1e30 (finite in float32) turned the
  victim's model into NaN for good, and with it every checkpoint after. It is now refused by
  the outlier screen; with the screens off, the merge is rolled back.
* 40 pushes claiming age 2**53-1 ratcheted the capped age up (each cap was twice the local
  age: 4,832 -> 2e15). Merges may now add at most the age guard's credit.
* A node started with ``attack="sign-flip"`` gossips ``-w`` while it learns honestly.

The victims gossip once an hour with a peer that is down: nothing but a push changes their
model. Each test waits on the node's own counters (bounded polls), never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from netutil import NodeFactory, lone_node_config

from gossip.codec import MAX_AGE, MessageMeta, decode, encode
from peers.checkpoint import CheckpointStore
from peers.node import Node
from peers.node_config import NodeConfig

HUGE = 1e30
TIMEOUT = aiohttp.ClientTimeout(total=10)  # a stuck server fails in seconds


NODE_DEFAULTS: dict[str, Any] = {"lr": 0.5, "read_timeout": 2.0}


def _config(tmp_path: Path, **kw: Any) -> NodeConfig:
    return lone_node_config(tmp_path, **{**NODE_DEFAULTS, **kw})


def _message(node: Node, flat: torch.Tensor, *, sender: str, age: int) -> bytes:
    meta = MessageMeta(sender, age, f"n{time.monotonic_ns()}", time.time(), node.schema.hash)
    return encode(flat, node.schema, meta)


def _neighbour(node: Node, seed: int) -> torch.Tensor:
    """An honest neighbour's model: close to the node's own."""
    own = node.peer.published().flat
    return own + 1e-3 * torch.randn(own.shape, generator=torch.Generator().manual_seed(seed))


async def _post(node: Node, body: bytes) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{node.config.port}/v1/gossip"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, data=body) as resp,
    ):
        return resp.status, await resp.json()


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def _merged(node: Node, flat: torch.Tensor, *, sender: str, age: int) -> None:
    """Push an honest model and wait until the node has merged it and trained."""
    updates = len(node.peer.merge_latencies)
    assert await _post(node, _message(node, flat, sender=sender, age=age)) == (
        202,
        {"accepted": True},
    )
    await _until(lambda: len(node.peer.merge_latencies) == updates + 1)


def _finite(node: Node) -> bool:
    return bool(torch.isfinite(node.learner.state.flat).all()) and bool(
        torch.isfinite(node.peer.published().flat).all()
    )


def _fingerprint(node: Node) -> tuple[str, int]:
    return node.learner.state.param_hash(), node.learner.state.age


# ------------------------------------------------------------------ 1e30 values


@pytest.mark.parametrize("age", [1, MAX_AGE])
async def test_a_push_of_huge_values_is_refused_and_the_node_keeps_learning(
    start_node: NodeFactory, tmp_path: Path, age: int
) -> None:
    ckpt_dir = tmp_path / "ckpt"
    node = await start_node(model="mlp", checkpoint_dir=str(ckpt_dir), checkpoint_every=0.1)
    await _merged(node, _neighbour(node, 1), sender="alice", age=100)
    before = _fingerprint(node)
    huge = torch.full_like(node.learner.state.flat, HUGE)
    status, answer = await _post(node, _message(node, huge, sender="mallory", age=age))
    assert (status, answer) == (422, {"accepted": False, "reason": "outlier"})
    c = node.peer.counters
    assert c.rejected["outlier"] == 1 and c.received == c.accepted + 1 == 2
    assert _fingerprint(node) == before and _finite(node)
    # Honest pushes are still merged, and checkpoints of the model still written.
    written = max((p.name for p in CheckpointStore(ckpt_dir).list()), default="")
    await _merged(node, _neighbour(node, 2), sender="alice", age=node.learner.state.age + 10)
    await _merged(node, _neighbour(node, 3), sender="bob", age=node.learner.state.age + 10)
    assert c.merges == 3 and c.rollbacks == 0 and _finite(node)
    assert _fingerprint(node)[0] != before[0]
    store = CheckpointStore(ckpt_dir)

    def checkpointed_now() -> bool:
        ckpt = store.load_latest(node.schema.hash)
        return (
            ckpt is not None
            and max(p.name for p in store.list()) > written
            and ckpt.age == node.learner.state.age
            and torch.equal(ckpt.flat, node.learner.state.flat)
        )

    await _until(checkpointed_now)
    assert not node.task_errors


@pytest.mark.parametrize("age", [1, MAX_AGE])
async def test_without_screens_a_merge_of_huge_values_is_rolled_back(
    start_node: NodeFactory, age: int
) -> None:
    node = await start_node(model="mlp", screen=0, screen_distance=0, train_on="receive")
    await _merged(node, _neighbour(node, 1), sender="alice", age=100)
    before = _fingerprint(node)
    huge = torch.full_like(node.learner.state.flat, HUGE)
    await _merged(node, huge, sender="mallory", age=age)  # no screen: accepted, merged...
    c = node.peer.counters
    assert c.merges == 2 and c.rollbacks == 1  # ... and its non-finite result rolled back
    assert _fingerprint(node) == before and _finite(node)
    await _merged(node, _neighbour(node, 2), sender="bob", age=node.learner.state.age + 10)
    assert c.merges == 3 and c.rollbacks == 1 and _finite(node)
    assert _fingerprint(node)[0] != before[0]


# ------------------------------------------------------------------ age inflation


@pytest.mark.parametrize("policy", ["cap", "refuse"])
async def test_forty_lies_about_the_age_grow_it_at_most_by_the_guard_bound(
    start_node: NodeFactory, policy: str
) -> None:
    node = await start_node(age_guard=policy)
    peer, state = node.peer, node.learner.state
    await _merged(node, _neighbour(node, 1), sender="alice", age=100)
    loop = asyncio.get_running_loop()
    started, age0, trained0 = loop.time(), state.age, peer.counters.samples_trained
    for i in range(40):
        body = _message(node, _neighbour(node, 10 + i), sender="mallory", age=MAX_AGE)
        if policy == "cap":
            updates = len(peer.merge_latencies)
            assert await _post(node, body) == (202, {"accepted": True})
            await _until(lambda n=updates + 1: len(peer.merge_latencies) == n)
        else:
            assert await _post(node, body) == (422, {"accepted": False, "reason": "age_inflation"})
    grown = state.age - age0
    assert grown < 10**6, f"the lies ratcheted the age up by {grown}"  # was 2e15
    trained = peer.counters.samples_trained - trained0
    allowance = peer.allowance
    assert grown <= allowance.burst + allowance.rate * (loop.time() - started) + trained
    c = peer.counters
    if policy == "cap":
        assert (c.merges, c.age_capped) == (41, 40)
    else:
        assert (c.merges, c.rejected["age_inflation"], grown) == (1, 40, 0)
    # An honest sender is still heard.
    before = _fingerprint(node)
    await _merged(node, _neighbour(node, 99), sender="bob", age=state.age + 10)
    assert c.merges == (42 if policy == "cap" else 2) and _fingerprint(node)[0] != before[0]
    assert _finite(node)


# ------------------------------------------------------------------ an attacker node


async def _pulled(node: Node) -> torch.Tensor:
    url = f"http://127.0.0.1:{node.config.port}/v1/model"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as resp:
        assert resp.status == 200
        return decode(await resp.read(), node.schema).flat


async def test_a_sign_flip_node_publishes_minus_w_and_keeps_its_own_model_honest(
    start_node: NodeFactory,
) -> None:
    attacker = await start_node(attack="sign-flip")
    twin = await start_node()  # the same node, honest: same seed, data and initial model
    assert torch.equal(attacker.learner.state.flat, twin.learner.state.flat)
    for sender, seed, age in (("alice", 1, 100), ("bob", 2, 200)):
        flat = _neighbour(twin, seed)
        for node in (attacker, twin):  # the same honest pushes to both
            await _merged(node, flat, sender=sender, age=age)
    own = attacker.learner.state.flat
    assert attacker.peer.counters.merges == 2 and attacker.peer.counters.rollbacks == 0
    assert torch.equal(own, twin.learner.state.flat), "the attacker's own model is not honest"
    assert attacker.learner.state.age == twin.learner.state.age
    assert torch.equal(await _pulled(attacker), -own)  # what it gossips: -w
    assert torch.equal(await _pulled(twin), twin.learner.state.flat)
    assert attacker.peer.published().age == attacker.learner.state.age
