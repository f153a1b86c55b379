"""Step-wise judge interface: (problem, reference solution, response steps) in, first wrong step out."""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

from rlvr.batch import Example
from rlvr.options import check


log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Verdict:
    first_error: int | None  # index of the first wrong step; None: the judge found no error
    parsed: bool = True  # False: the judge's output could not be read (first_error is the fallback)


class Judge(ABC):
    """Batched, cached by (prompt, response) hash. Subclasses implement `_judge` on cache misses."""

    def __init__(self, cache_size: int = 100_000):
        self.cache_size = check("judge.cache_size", cache_size, integer=True, low=0)
        self._cache: OrderedDict[str, Verdict] = OrderedDict()
        self.unreadable_calls = 0  # calls whose fresh replies were all unparsable: the judge is guessing

    @abstractmethod
    def _judge(self, examples: list[Example], responses: list[list[str]]) -> list[Verdict]: ...

    @staticmethod
    def _key(example: Example, steps: list[str]) -> str:
        payload = "\x1e".join([example.prompt, example.solution, *steps])
        return hashlib.sha1(payload.encode()).hexdigest()

    def __call__(self, examples: list[Example], responses: list[list[str]]) -> list[Verdict]:
        keys = [self._key(e, s) for e, s in zip(examples, responses, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            fresh = self._judge([examples[i] for i in missing], [responses[i] for i in missing])
            if len(fresh) != len(missing):
                raise RuntimeError(f"{type(self).__name__} returned {len(fresh)} verdicts for {len(missing)} responses")
            for i, verdict in zip(missing, fresh):
                self._cache[keys[i]] = verdict
            self._watch_parsing(fresh)
        out = [self._cache[k] for k in keys]
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def _watch_parsing(self, fresh: list[Verdict]) -> None:
        """Warn (the first time, then every 50th time) when none of a call's replies could be read: every
        verdict is then the fallback, and SGPO's grades carry no information (judge/parse_failures counts them)."""
        if fresh and not any(v.parsed for v in fresh):
            self.unreadable_calls += 1
            if self.unreadable_calls % 50 == 1:
                log.warning("%s: none of %d replies could be read (%d such calls so far): its verdicts are all the fallback; "
                            "try a stronger judge.model", type(self).__name__, len(fresh), self.unreadable_calls)
