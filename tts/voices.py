"""Named voices: a game master gives each character one. Each is a Piper voice (the default one, or
another model) with a speaker and a speed, loaded and leveled once at start-up, so that a typo in a
model path stops the server with a message instead of failing a narration later, and every voice
speaks at the loudness the default voice does.

Voices on the default model share its loaded network (only the synthesis settings differ); each other
model is loaded once, whatever number of voices use it.
"""

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from broadcaster.errors import BadInput

from .engine import TtsEngine
from .loudness import level


class VoiceSettings(Protocol):
    """One configured voice (broadcaster.config.VoiceConfig)."""

    name: str
    model: str  # empty: the default voice's
    speaker: int | None
    speed: float


class Voices:
    def __init__(
        self, default: TtsEngine, named: dict[str, TtsEngine] | None = None, models: list[TtsEngine] | None = None
    ):
        self.default = default
        self.named = named or {}
        self.models = models or []  # loaded for these voices besides the default one

    @property
    def names(self) -> list[str]:
        return sorted(self.named)

    def check(self, name: object) -> str | None:
        """A voice a request asks for: None (the default) or a configured name; anything else is refused."""
        if name is None or (isinstance(name, str) and name in self.named):
            return name
        known = f"one of {self.names}" if self.named else "none: no voices are configured ([tts.voices])"
        raise BadInput(f'expected "voice" to be {known}, got {name!r}'[:300])

    def engine(self, name: str | None) -> TtsEngine:
        """The engine of a voice (a voice configured no more, after a restart: the default)."""
        return self.default if name is None else self.named.get(name, self.default)

    async def close(self) -> None:
        for engine in self.models:
            await engine.close()


async def load_voices(
    default: TtsEngine,
    configs: Iterable[VoiceSettings],
    default_model: str,
    open_model: Callable[[str], TtsEngine],
    target_lufs: float,
) -> Voices:
    """Make every configured voice, leveled to `target_lufs` as the default voice is. `open_model` loads
    another model (in a thread: it takes a moment)."""
    base = getattr(default, "inner", default)  # the default voice as loaded, before its leveling
    models: dict[str, TtsEngine] = {default_model: base, "": base}
    named: dict[str, TtsEngine] = {}
    for voice in configs:
        if voice.model not in models:
            models[voice.model] = await asyncio.to_thread(open_model, voice.model)
        engine = await level(models[voice.model].variant(voice.speaker, voice.speed), target_lufs)
        await engine.idle()
        named[voice.name] = engine
    return Voices(default, named, [m for m in models.values() if m is not base])
