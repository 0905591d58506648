"""`FakeDetokenizer`: one letter per token, so that stop strings can be tested without
a tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as SequenceABC

from corral.sampling_params import SamplingParams

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


class FakeDetokenizer:
    """Token ``t`` decodes to ``ALPHABET[t % 26]``; special tokens decode to ``"<t>"``,
    or to "" when ``skip_special_tokens``. Implements `corral.core.interface.Detokenizer`.
    """

    def __init__(self, special_token_ids: Iterable[int] = ()) -> None:
        self.special_token_ids = frozenset(special_token_ids)

    def text(self, token_id: int, skip_special_tokens: bool = True) -> str:
        """What ``token_id`` decodes to."""
        if token_id in self.special_token_ids:
            return "" if skip_special_tokens else f"<{token_id}>"
        return ALPHABET[token_id % len(ALPHABET)]

    def new_state(self, prompt_token_ids: SequenceABC[int], params: SamplingParams) -> object:
        return params.skip_special_tokens

    def fork_state(self, state: object) -> object:
        return state

    def decode_next(self, state: object, token_id: int) -> str:
        return self.text(token_id, bool(state))

    def flush(self, state: object) -> str:
        # Every token decodes to whole characters at once: nothing is ever held back.
        return ""
