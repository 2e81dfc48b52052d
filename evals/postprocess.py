"""What happens to a generated answer before it is scored, as in lmms-eval 0.7.3's pipeline.

    text = cut_at_stop("B\\n\\nBecause ...", ["\\n\\n"])          # -> "B"
    text = strip_reasoning("<think>hmm</think> B", REASONING_TAGS)  # -> "B"

1. Generation stops at the task's stop strings (`until`; lmms-eval's default is the few-shot
   delimiter "\\n\\n", used only by tasks whose yaml sets no `until`; TextVQA sets "ASSISTANT:"
   alone): the text is cut at the first one.
2. The `lmms-eval` command line removes reasoning blocks (`--reasoning_tags`, default
   <think>...</think> and <analysis>...</analysis>) after the task's filters, before scoring.
3. Each task's scoring strips surrounding whitespace (done by the task modules).
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_STOP = ("\n\n",)  # lmms-eval's TaskConfig.fewshot_delimiter, the default `until`
REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))  # lmms-eval CLI default


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text up to the first occurrence of any stop string."""
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def strip_reasoning(text: str, tags: Sequence[Sequence[str]] = REASONING_TAGS) -> str:
    """Remove reasoning blocks (lmms-eval `api/reasoning.py::strip_reasoning_tags`), then whitespace.

    Each opening tag is paired with the first closing tag after it; an unclosed opening tag stays.
    A closing tag with no opening tag left (a template that pre-fills "<think>") keeps only what
    follows its last occurrence. Tags are case-sensitive.
    """
    for start_tag, end_tag in tags:
        while start_tag in text and end_tag in text:
            start = text.find(start_tag)
            end = text.find(end_tag, start)
            if end == -1:
                break
            text = text[:start] + text[end + len(end_tag):]
        if end_tag in text and start_tag not in text:
            text = text.rsplit(end_tag, 1)[-1]
    return text.strip()
