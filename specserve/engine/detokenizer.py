"""Incremental detokenisation and stop-string matching for streamed output.

Decoding a growing id list token by token breaks multi-byte characters and merges (a BPE piece can
change how the previous one renders), so text is emitted as the difference between decodes of a
short window of recent tokens, held back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IncrementalDetokenizer:
    """Turns a growing list of output ids into text deltas, honouring stop strings.

    With stop strings, the last `len(longest stop) - 1` characters are held back until they can no
    longer begin a stop string (or `flush` is called at the end), so no emitted text is ever retracted.
    """

    tokenizer: object
    stop: tuple[str, ...] = ()
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""
    emitted: int = 0

    def push(self, ids: list[int]) -> tuple[str, bool]:
        """Account for the full output `ids`; return (text to emit now, stop string hit)."""
        prefix = self._decode(ids[self.prefix_offset: self.read_offset])
        full = self._decode(ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        if not self.stop:
            return self._emit(len(self.text)), False
        longest = max(len(s) for s in self.stop)
        search_from = max(0, self.emitted - longest + 1)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._emit(len(self.text)), True
        return self._emit(len(self.text) - longest + 1), False

    def flush(self) -> str:
        """Emit whatever was held back (call once the request has finished for another reason)."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted: upto], upto
        return piece

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
