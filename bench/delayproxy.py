"""A TCP proxy that holds every byte the server sends for a fixed delay: an SMTP
relay "10 ms away", simulated on loopback (this kernel has no netem).

    python bench/delayproxy.py LISTEN_PORT TARGET_PORT [--delay-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import socket


async def _client_to_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _server_to_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if data is None:
                writer.close()
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, None))
    await sender


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("listen", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    args = parser.parse_args()
    delay = args.delay_ms / 1000

    async def handle(client_reader, client_writer) -> None:
        sock = client_writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", args.target)
        server_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_client_to_server(client_reader, server_writer),
                             _server_to_client(server_reader, client_writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
