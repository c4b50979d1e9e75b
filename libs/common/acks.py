"""Acknowledgements sent together: one ``basic.ack`` with ``multiple`` for a run of
finished messages instead of one frame each.

A consumer's messages finish together (the group commit applies the ones that arrived
while the last transaction ran), and each ``basic.ack`` was a frame the client framed and
RabbitMQ settled on its own. ``python -m bench.consume`` (`bench/README.md`, "Consumer
costs"): from 0.41-0.44 to 0.31-0.38 ms of CPU a consumed event, RabbitMQ's share from
0.08-0.09 to 0.05-0.07 ms.

The rule that keeps this safe: ``multiple`` settles *every* unsettled delivery up to its
tag on the channel, so a frame only ever covers tags that are all finished here. A
channel numbers its deliveries 1, 2, 3, …; ``through`` is the highest tag below which
every delivery is settled; a finished tag is folded into ``through`` only when every tag
before it is finished too. One that finishes while an earlier message is still at work
(waiting out a dependency, pausing before a retry) is acknowledged on its own at once, as
before. A tag whose message never reaches the handler would stop ``through`` for the
channel's life: what follows it is then acknowledged one by one, never wrongly.

``await acks.ack(tag)`` returns once the frame that carries it is written, as
``message.ack()`` did; the tags acknowledged while frames are being written go together
in the next ones (``batching.GroupCommit``), so what finishes in one turn of the event
loop shares a frame.
Rejections and requeues are sent at once by the caller, which then reports them with
``settled`` so that ``through`` can pass them.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import aiormq.abc

from .batching import GroupCommit

# Tags acknowledged by one round of frames, at most (a channel's prefetch bounds them).
ACKS_AT_ONCE = 1024


class ChannelAcks:
    """The acknowledgements of one channel's deliveries (one per channel: a reconnected
    channel numbers its deliveries from 1 again)."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.through = 0
        # Settled beyond ``through`` (acknowledged alone, rejected or requeued).
        self._settled: set[int] = set()
        self._group = GroupCommit(self._send, max_batch=ACKS_AT_ONCE)
        self.frames_sent = 0

    async def ack(self, tag: int) -> None:
        # If the channel is gone, this raises: its unsettled messages go back to the queue
        # and come again on the next channel (the inbox makes a repeat harmless).
        await self._group(tag)

    def settled(self, tag: int) -> None:
        """``tag`` was rejected or requeued (its frame already written)."""
        if tag > self.through:
            self._settled.add(tag)

    def frames(self, tags: Sequence[int]) -> list[tuple[int, bool]]:
        """The ``(delivery_tag, multiple)`` frames that acknowledge ``tags``, and the
        bookkeeping as if they were sent."""
        pending = set(tags)
        through, last_acked = self.through, 0
        while True:
            following = through + 1
            if following in pending:
                pending.discard(following)
                last_acked = following
            elif following in self._settled:
                self._settled.discard(following)
            else:
                break
            through = following
        self.through = through
        frames: list[tuple[int, bool]] = []
        if last_acked:
            # The frame names the last tag acknowledged here, never one settled earlier:
            # RabbitMQ refuses a tag it no longer holds.
            frames.append((last_acked, True))
        for tag in sorted(pending):
            frames.append((tag, False))
            self._settled.add(tag)
        return frames

    async def _send(self, tags: Sequence[int]) -> list[None]:
        for tag, multiple in self.frames(tags):
            await self.channel.basic_ack(tag, multiple=multiple)
            self.frames_sent += 1
        return [None] * len(tags)


class Acks:
    """``ChannelAcks`` for whichever channel a message came on."""

    def __init__(self) -> None:
        self._channels: weakref.WeakKeyDictionary[aiormq.abc.AbstractChannel, ChannelAcks] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, channel: aiormq.abc.AbstractChannel) -> ChannelAcks:
        acks = self._channels.get(channel)
        if acks is None:
            acks = self._channels[channel] = ChannelAcks(channel)
        return acks
