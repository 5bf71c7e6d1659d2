"""Virtual keys' budgets: spend is each call's ``cost_usd`` (a stream's on its usage chunk; cache hits cost
0), counted after the call; past ``max_budget`` within the current ``budget_duration`` window a call is
RESOURCE_EXHAUSTED / BUDGET_EXCEEDED and the thin client raises ``BudgetExceededError`` with the spend and
the budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
from llmrpc_server.keys import SqliteLimitStore, VirtualKey, hash_key

from tests.keys_support import MESSAGES, client_for, keyed_gateway
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai

KEY = "sk-budget-0123456789"
CALL_COST = 5 * 0.15e-6 + 7 * 0.6e-6  # gpt-4o-mini, the fake upstream's 5 prompt + 7 completion tokens
T0 = 1_800_000_000.0


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


def budget_gateway(upstream: FakeUpstream, tmp_path: Path, **entry: Any) -> Any:
    return keyed_gateway([{"key": KEY, "key_alias": "team", **entry}], str(tmp_path / "state.sqlite"),
                         env={"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": upstream.url})


def test_budget_exceeded_after_spend_reaches_max_budget(upstream: FakeUpstream, tmp_path: Path) -> None:
    # 2.5 calls' worth: the third call is admitted (spend 2 x cost < budget) and overshoots, the fourth is not.
    with budget_gateway(upstream, tmp_path, max_budget=2.5 * CALL_COST) as gw, client_for(gw, KEY) as client:
        for _ in range(2):
            resp = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
            assert resp._hidden_params["response_cost"] == pytest.approx(CALL_COST)
        chunks = list(client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True))
        assert chunks
        with pytest.raises(llmrpc.BudgetExceededError) as info:
            client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(llmrpc.BudgetExceededError):
            list(client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True))
    err = info.value
    assert err.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "BUDGET_EXCEEDED"
    assert err.status_code == 422 and not isinstance(err, llmrpc.RateLimitError)  # as LiteLLM's
    assert err.current_cost == pytest.approx(3 * CALL_COST) and err.max_budget == pytest.approx(2.5 * CALL_COST)
    assert err.metadata["keyAlias"] == "team" and err.retry_after is None  # a lifetime budget never resets
    assert len(upstream.requests) == 3  # nothing sent upstream once over budget
    assert not llmrpc._should_retry(err.status_code)


def test_budget_window_resets_and_says_when(upstream: FakeUpstream, tmp_path: Path) -> None:
    with budget_gateway(upstream, tmp_path, max_budget=0.5 * CALL_COST, budget_duration="1d") as gw, \
            client_for(gw, KEY) as client:
        client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(llmrpc.BudgetExceededError) as info:
            client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert info.value.metadata["budgetDuration"] == "86400s"
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 86400


def test_window_logic_with_an_injected_clock(tmp_path: Path) -> None:
    store = SqliteLimitStore(str(tmp_path / "state.sqlite"))
    key = VirtualKey(digest=hash_key(KEY), alias="team", max_budget=1.0, budget_duration=30)
    try:
        assert store.admit_sync(key, T0, "a", T0 + 9).admitted
        store.record_sync(key, T0 + 1, "a", 10, 0.6)
        assert store.admit_sync(key, T0 + 2, "b", T0 + 9).admitted
        store.record_sync(key, T0 + 3, "b", 10, 0.6)
        refused = store.admit_sync(key, T0 + 10, "c", T0 + 19)
        assert (refused.admitted, refused.limit, refused.retry_after) == (False, "max_budget", 20.0)
        assert refused.current == pytest.approx(1.2) and refused.allowed == 1.0
        assert store.admit_sync(key, T0 + 30, "d", T0 + 39).admitted  # the next 30 s window
        rows = store.spend_rows()
        assert [(r.start, r.length, r.requests) for r in rows] == [(T0, 30, 2)]
        assert rows[0].spend == pytest.approx(1.2)
    finally:
        store.close()


def test_cache_hits_cost_nothing(upstream: FakeUpstream, tmp_path: Path) -> None:
    with keyed_gateway([{"key": KEY, "key_alias": "team", "max_budget": 1.5 * CALL_COST}],
                       str(tmp_path / "state.sqlite"), cache_path=str(tmp_path / "cache.sqlite"),
                       env={"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": upstream.url}) as gw, \
            client_for(gw, KEY) as client:
        client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, caching=True)
        for _ in range(3):  # hits: cost 0, so still under budget
            resp = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, caching=True)
            assert resp._hidden_params["cache_hit"] is True
        client.completion(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "new"}])
        with pytest.raises(llmrpc.BudgetExceededError) as info:
            client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, caching=True)
    assert info.value.current_cost == pytest.approx(2 * CALL_COST)
    assert len(upstream.requests) == 2
