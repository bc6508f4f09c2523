"""LaMP task specifications: names, input prefixes, profile fields and how a profile item reads as text."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TaskSpec:
    name: str                      # canonical "LaMP-4"
    description: str
    input_prefix: str              # LaMP's instruction in front of the query text
    profile_fields: tuple[str, ...]  # fields every profile item must carry (besides id)
    answer_cue: str                # last line of a prompt; the model continues with the answer on that line
    # (input, output) the author produced for a profile item, or None where items are bare texts (LaMP-7).
    profile_pair: Callable[[dict], tuple[str, str]] | None
    icl_item: Callable[[dict, int], str]  # LaMP-style sentence for one retrieved item (max words)
    retrieval_text: Callable[[dict], str]  # what BM25 indexes for an item
    icl_suffix: str = ""           # appended after the joined ICL items (LaMP-7's template)

    def query_text(self, input_text: str) -> str:
        """The query's own text with the task instruction removed (BM25 query, ICL templates)."""
        if input_text.startswith(self.input_prefix):
            return input_text[len(self.input_prefix):]
        return input_text


def truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


_LAMP4_PREFIX = "Generate a headline for the following article: "
_LAMP5_PREFIX = "Generate a title for the following abstract of a paper: "
_LAMP7_PREFIX = "Paraphrase the following tweet without any explanation before or after it: "

TASKS: dict[str, TaskSpec] = {
    "LaMP-4": TaskSpec(
        name="LaMP-4", description="personalized news headline generation",
        input_prefix=_LAMP4_PREFIX, profile_fields=("text", "title"), answer_cue="Headline:",
        profile_pair=lambda it: (_LAMP4_PREFIX + it["text"], it["title"]),
        icl_item=lambda it, n: f'"{it["title"]}" is the title for "{truncate_words(it["text"], n)}"',
        retrieval_text=lambda it: f'{it["title"]} {it["text"]}',
    ),
    "LaMP-5": TaskSpec(
        name="LaMP-5", description="personalized scholarly title generation",
        input_prefix=_LAMP5_PREFIX, profile_fields=("title", "abstract"), answer_cue="Title:",
        profile_pair=lambda it: (_LAMP5_PREFIX + it["abstract"], it["title"]),
        icl_item=lambda it, n: f'"{it["title"]}" is a title for "{truncate_words(it["abstract"], n)}"',
        retrieval_text=lambda it: f'{it["title"]} {it["abstract"]}',
    ),
    "LaMP-7": TaskSpec(
        name="LaMP-7", description="personalized tweet paraphrasing",
        input_prefix=_LAMP7_PREFIX, profile_fields=("text",), answer_cue="Paraphrase:",
        profile_pair=None,
        icl_item=lambda it, n: f'"{truncate_words(it["text"], n)}"',
        retrieval_text=lambda it: it["text"],
        icl_suffix=" are written by a person. Following the given patterns",
    ),
}


def canonical_task(name: str) -> str:
    """'LaMP_4', 'LaMP-4', 'lamp4' -> 'LaMP-4'; unknown names raise ValueError listing the known ones."""
    m = re.fullmatch(r"lamp[-_ ]?(\d+)", name.strip(), flags=re.IGNORECASE)
    canon = f"LaMP-{m.group(1)}" if m else name
    if canon not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return canon
