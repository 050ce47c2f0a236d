"""Payload encryption's cost: microseconds to encode and to decode one payload, by size, with
the encrypting converter against the plain pydantic converter measured in the same run;
prints one JSON document.

    python -m benchmarks.codec                # 7 rounds
    python -m benchmarks.codec --rounds 15

Each round times a batch of conversions of a plan-like value (a JSON object of the given
size) both ways, the plain and the encrypting converter interleaved, so a busy machine slows
both alike. Figures are medians over rounds, per payload; `ratio` is encrypting / plain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from workers.codec import PayloadKeys, encrypted_data_converter

SIZES = (256, 4 * 1024, 64 * 1024, 1024 * 1024)


def value_of_size(size: int) -> dict[str, Any]:
    """A JSON object whose serialized form is about `size` bytes, as a plan's fields are."""
    fields = max(1, size // 64)
    return {f"field-{i:06d}": "x" * 44 for i in range(fields)}


def batch_for(size: int) -> int:
    """Conversions per timed batch: enough for a few milliseconds at every size."""
    return max(4, (256 * 1024) // size)


async def time_batch(converter: DataConverter, value: Any, count: int) -> tuple[float, float]:
    """Seconds per payload to encode, then to decode, over `count` conversions."""
    began = time.perf_counter()
    encoded = [await converter.encode([value]) for _ in range(count)]
    encoding = time.perf_counter() - began
    began = time.perf_counter()
    for payloads in encoded:
        await converter.decode(payloads, [dict])
    decoding = time.perf_counter() - began
    return encoding / count, decoding / count


async def measure(rounds: int) -> dict[str, Any]:
    keys = PayloadKeys(current="bench", keys={"bench": os.urandom(32)}, source="benchmark")
    encrypting = encrypted_data_converter(keys)
    figures: dict[str, Any] = {}
    for size in SIZES:
        value = value_of_size(size)
        count = batch_for(size)
        times: dict[str, list[float]] = {
            name: [] for name in ("plain_encode", "plain_decode", "enc_encode", "enc_decode")
        }
        for _ in range(rounds):
            encode, decode = await time_batch(pydantic_data_converter, value, count)
            times["plain_encode"].append(encode)
            times["plain_decode"].append(decode)
            encode, decode = await time_batch(encrypting, value, count)
            times["enc_encode"].append(encode)
            times["enc_decode"].append(decode)
        median = {name: statistics.median(values) * 1e6 for name, values in times.items()}
        figures[f"{size}B"] = {
            "payload_bytes": len(json.dumps(value, separators=(",", ":"))),
            "encode_us": {
                "plain": round(median["plain_encode"], 1),
                "encrypted": round(median["enc_encode"], 1),
                "ratio": round(median["enc_encode"] / median["plain_encode"], 2),
            },
            "decode_us": {
                "plain": round(median["plain_decode"], 1),
                "encrypted": round(median["enc_decode"], 1),
                "ratio": round(median["enc_decode"] / median["plain_decode"], 2),
            },
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.rounds))
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "rounds": args.rounds,
                "sizes": figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
