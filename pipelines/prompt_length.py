"""The prompt-length warning: tell the person when the text encoder will not read their whole prompt, counted against
the limit its architecture states (`Architecture.prompt_tokenizer`)."""

from __future__ import annotations

import copy
import threading
from typing import Any

from .request import MAX_PROMPT_CHARS, GenerationRequest

WARNING_PREFIX_CHARS = 1000  # the warning tokenises at most this much of a prompt (75 tokens need far less)


class PromptLength:
    """A private copy of the tokenizer, used outside the engine lock (a fast tokenizer must not be called from two
    threads at once), guarded by its own small lock; `limit`: the tokens the text encoder reads."""

    def __init__(self, tokenizer: Any, limit: int) -> None:
        self.tokenizer, self.limit = copy.deepcopy(tokenizer), limit
        self._lock = threading.Lock()

    def warnings(self, request: GenerationRequest) -> list[str]:
        """One sentence per prompt the encoder cuts; tokenises at most `WARNING_PREFIX_CHARS` characters of each
        (prompts are at most `MAX_PROMPT_CHARS` long)."""
        out = []
        settings = request.settings
        for label, text in (("prompt", settings.full_prompt), ("negative prompt", settings.negative_prompt)):
            prefix = text[:WARNING_PREFIX_CHARS]
            with self._lock:
                ids = self.tokenizer(prefix, add_special_tokens=False, truncation=False).input_ids
            if len(ids) > self.limit:
                cut = self.tokenizer.decode(ids[self.limit :]).strip()
                count = f"{len(ids)}" if len(prefix) == len(text) else f"over {len(ids)}"
                out.append(
                    f"The {label} is {count} tokens; the text encoder reads {self.limit}, so the end was ignored: "
                    f"'{cut[:80]}{'…' if len(cut) > 80 else ''}'"
                )
            elif len(prefix) < len(text):
                out.append(
                    f"The {label} is {len(text):,} characters long (at most {MAX_PROMPT_CHARS:,}); the text encoder "
                    f"reads {self.limit} tokens, so the end was probably ignored."
                )
        return out
