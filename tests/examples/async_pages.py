"""Fetch and index pages with asyncio: an asyncio example to profile.

    python -m pyproperf run -o cpu.pb.gz tests/examples/async_pages.py
    python -m pyproperf run --clock wall -o wall.pb.gz tests/examples/async_pages.py

Many tasks each ``fetch`` a page (simulated: it waits, as network I/O
would), ``parse_page`` it (JSON decoding and walking the document) and
``index_words`` it (tokenising and counting, the most CPU).  A CPU profile
shows where the tasks compute; a wall-clock profile adds the time the event
loop's thread sits waiting for I/O (``selectors.EpollSelector.select``):
a task that awaits is not on any thread's stack, so its wait shows there,
not under ``fetch``.  About two seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
from collections import Counter

WORD = re.compile(r"[a-z]{3,}")


def make_page(i: int) -> str:
    """A JSON document like an API would return."""
    rng = random.Random(i)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(3, 8))) for _ in range(60)]
    items = [
        {
            "id": j,
            "title": " ".join(rng.choices(words, k=6)),
            "body": " ".join(rng.choices(words, k=80)),
            "tags": rng.sample(words, 4),
            "score": rng.random(),
        }
        for j in range(40)
    ]
    return json.dumps({"page": i, "items": items})


async def fetch(i: int, latency: float) -> str:
    """Wait as a network request would, then return the page."""
    await asyncio.sleep(latency)
    return make_page(i)


def parse_page(text: str) -> list[str]:
    """Decode the JSON and collect the text fields."""
    doc = json.loads(text)
    out = []
    for item in doc["items"]:
        out.append(item["title"])
        out.append(item["body"])
        out.extend(item["tags"])
    return out


def index_words(texts: list[str]) -> Counter[str]:
    """Count words: tokenise, normalise, count."""
    counts: Counter[str] = Counter()
    for text in texts:
        for word in WORD.findall(text.lower()):
            counts[word.rstrip("s")] += 1
    return counts


async def crawl(i: int, latency: float, index: Counter[str]) -> None:
    page = await fetch(i, latency)
    for _ in range(3):  # re-indexing, as after an analyzer change
        index.update(index_words(parse_page(page)))
    await asyncio.sleep(0)


async def main_async(pages: int, concurrency: int, latency: float) -> Counter[str]:
    index: Counter[str] = Counter()
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limit:
            await crawl(i, latency, index)

    await asyncio.gather(*(one(i) for i in range(pages)))
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300, help="pages to fetch (default 300)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per fetch")
    args = parser.parse_args(argv)
    index = asyncio.run(main_async(args.pages, args.concurrency, args.latency))
    for word, count in index.most_common(5):
        print(f"{word:<10} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
