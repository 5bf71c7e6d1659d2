"""A leading ``<think>…</think>`` block split off as reasoning (LiteLLM's Ollama behaviour): the
streamed split must not depend on where the text was cut, and must join up to the unstreamed one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmrpc_server.providers._think_tags import ThinkTagSplitter, split_think_tags


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>Let me see.</think>\n\nParis.", ("Let me see.", "\n\nParis.")),
        ("\n  <think>a</think>b", ("a", "b")),
        ("<think>never closed", ("never closed", "")),
        ("<think></think>", ("", "")),
        ("Paris.", (None, "Paris.")),
        ("Wrap it in <think> tags.", (None, "Wrap it in <think> tags.")),
        ("<thinking>x</thinking>", (None, "<thinking>x</thinking>")),
        ("", (None, "")),
    ],
)
def test_split_whole_replies(text: str, expected: tuple[str | None, str]) -> None:
    assert split_think_tags(text) == expected


def feed_in_pieces(text: str, cuts: list[int]) -> tuple[list[str], list[str]]:
    splitter = ThinkTagSplitter()
    reasoning: list[str] = []
    content: list[str] = []
    start = 0
    for cut in [*sorted(cuts), len(text)]:
        r, c = splitter.feed(text[start:cut])
        reasoning.append(r)
        content.append(c)
        start = cut
    r, c = splitter.flush()
    return [*reasoning, r], [*content, c]


def test_tags_cut_inside_are_held_back() -> None:
    text = "<think>Let me see.</think>\n\nParis."
    reasoning, content = feed_in_pieces(text, [3, 12, 21, 30])
    # "<th" | "ink>Let m" | "e see.</t" | "hink>\n\nPa" | "ris."
    assert reasoning == ["", "Let m", "e see.", "", "", ""]
    assert content == ["", "", "", "\n\nPa", "ris.", ""]


def test_plain_text_streams_through_at_once() -> None:
    splitter = ThinkTagSplitter()
    assert splitter.feed("Hel") == ("", "Hel")
    assert splitter.feed("<think>lo") == ("", "<think>lo")
    assert splitter.flush() == ("", "")


SAMPLES = st.sampled_from([
    "<think>Let me see.</think>\n\nParis.",
    "  <think>a </thi nk> b</think>",
    "<think>unclosed </think",
    "<thin",
    "   ",
    "plain <think> mention",
])


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(SAMPLES, st.text(alphabet="<>/thinkab \n", max_size=40)), data=st.data())
def test_streamed_split_matches_the_whole_reply(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    reasoning, content = feed_in_pieces(text, cuts)
    whole_reasoning, whole_content = split_think_tags(text)
    assert "".join(reasoning) == (whole_reasoning or "")
    assert "".join(content) == whole_content
