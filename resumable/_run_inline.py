"""`sweep.run` in-process (executor=None): `fn` called here on each pending item in turn.

Results are group-committed (`RunRecorder.commit`) once a group has computed about as long as a
commit takes, so the fdatasync costs at most about half the time; before a preemption exit or
a Ctrl-C, and at the end, whatever is in hand is committed first. The pending iterator's own
safe point raises `Preempted` between items. This loop is the hot path of a sweep of quick
items (scripts/bench_scale.py measures it): add nothing to it per item.
"""

from __future__ import annotations

from ._run_record import RunRecorder
from ._worker import run_one
from .preempt import Preempted


class InlineRun(RunRecorder):
    """One `run` in this process, item by item."""

    def run_inline(self) -> None:
        # (key, item); its own safe point raises Preempted between items
        pending = self.sweep.pending_with_keys()
        fn, seed_of = self.fn, self.sweep.seed_of_key
        try:
            while True:
                if self.group and (self.preempting() or self.sigint or self.commit_due()):
                    self.commit()
                try:
                    key, item = next(pending)
                except StopIteration:
                    break
                except Preempted as exc:
                    self.preempted = True
                    self.commit()
                    self.exit(exc)
                seed = seed_of(key) if self.wants_seed else None
                self.outcome(key, item, run_one(fn, item, seed))
                if self.sigint:
                    self.commit()
                    self.safe_point()
                if self.stopping:
                    raise self.too_many_failures()  # the handler below commits what is done
            self.commit()
            if self.stopping:  # the last group held the failure too many (an unstorable result)
                raise self.too_many_failures()
        except BaseException:  # Ctrl-C, or Preempted raised inside fn: the results so far are
            self.commit()  # good, keep them (a failing commit has emptied the group first)
            raise
        self.preempted = self.preempting()  # a late signal: the work is complete anyway
