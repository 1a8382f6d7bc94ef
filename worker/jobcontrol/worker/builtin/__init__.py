"""Job types every worker has: importing this package registers them."""

from __future__ import annotations

from . import audio_transcode, demo_sleep, media_fetch

__all__ = ["audio_transcode", "demo_sleep", "media_fetch"]
