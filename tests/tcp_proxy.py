"""A loopback TCP proxy that a test can cut and restore, to stage a database outage."""

from __future__ import annotations

import asyncio
import socket


class CuttableProxy:
    """A proxy from 127.0.0.1:port to an upstream address.

    cut() stops listening, so new connections are refused, and closes every open connection at
    once, as a server that crashed would. restore() listens again on the same port.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._server: asyncio.Server | None = None
        # While True, open connections stay open but nothing passes in either direction.
        self.silent = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        await self.cut()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        for source, target in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._copy(source, target))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


    async def _copy(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if self.silent:
                    continue
                target.write(data)
                await target.drain()
        except OSError:
            pass
        finally:
            target.transport.abort()
