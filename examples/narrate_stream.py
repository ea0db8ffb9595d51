"""Narrate a reply while it is being written, from Python: the pattern for a game master played by a
language model. Here the 'model' is a text file read a word at a time; swap `model_reply` for your
model's streaming API.

    python examples/narrate_stream.py --channel lobby --token <producer token> examples/tavern.txt
"""

import argparse
import asyncio
import re
from collections.abc import AsyncIterator

from broadcaster.client import OpenNarration


async def model_reply(path: str, words_per_second: float) -> AsyncIterator[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for word in re.findall(r"\s*\S+", text):
        await asyncio.sleep(1 / words_per_second)
        yield word


async def narrate(server: str, channel: str, token: str, path: str, words_per_second: float) -> dict:
    async with OpenNarration(server, channel, token) as story:
        print(f"request {story.request_id} is open; listen at {server}/c/{channel}")
        async for words in model_reply(path, words_per_second):
            await story.write(words)  # each sentence goes on the air as soon as it is complete
    print(f"closed: {story.answer['sentences']} sentences")
    return story.answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--server", default="http://127.0.0.1:8765")
    parser.add_argument("--channel", default="lobby")
    parser.add_argument("--token", required=True, help="the channel's producer token")
    parser.add_argument("--words-per-second", type=float, default=8)
    args = parser.parse_args()
    asyncio.run(narrate(args.server, args.channel, args.token, args.file, args.words_per_second))


if __name__ == "__main__":
    main()
