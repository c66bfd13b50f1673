"""Publisher app: plain aiohttp client, no SDK. It publishes orders through its own sidecar.

``POST http://127.0.0.1:$DAPR_HTTP_PORT/v1.0/publish/pubsub/orders`` with a JSON body; the
sidecar wraps it in a CloudEvent and answers 204 once the broker has it (§1.2).

Usage: ``tidings run --app-id checkout -- python examples/publisher.py --count 100``
"""

import argparse
import asyncio
import os

import aiohttp


async def main(count: int, pubsub: str, topic: str) -> None:
    url = f"http://127.0.0.1:{os.environ['DAPR_HTTP_PORT']}/v1.0/publish/{pubsub}/{topic}"
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            order = {"orderId": i, "amount": 10 * i}
            async with session.post(url, json=order) as response:
                if response.status != 204:
                    raise SystemExit(f"publish failed: {response.status} {await response.text()}")
    print(f"published {count} orders to {pubsub}/{topic}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--pubsub", default="pubsub")
    parser.add_argument("--topic", default="orders")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.pubsub, args.topic))
