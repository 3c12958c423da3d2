"""How the relay cuts an upstream's event stream into lines (proxy._sse_lines), read
from aiohttp's own StreamReader as the upstream's bytes arrive, one read at a time."""

import asyncio
import socket

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from llm_gateway import proxy


async def lines_of(*reads: bytes) -> list[bytes]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()  # a connected protocol, as a response has
    transport, protocol = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
    reader = aiohttp.StreamReader(protocol, 2**16, loop=loop)

    async def arrive():
        for data in reads:
            reader.feed_data(data)
            for _ in range(3):  # let the relay take this read before the next arrives
                await asyncio.sleep(0)
        reader.feed_eof()

    arriving = asyncio.create_task(arrive())
    try:
        return [line async for line in proxy._sse_lines(reader)]
    finally:
        await arriving
        transport.close()
        theirs.close()


def read(*reads: bytes) -> list[bytes]:
    return asyncio.run(lines_of(*reads))


def test_lf_crlf_and_lone_cr_all_end_lines():
    assert read(b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d") == [
        b"data: a\n", b"\n", b"data: b\r\n", b"\r\n", b"data: c\r", b"\r", b"data: d"]  # fmt: skip


def test_a_crlf_cut_between_two_reads_ends_one_line():
    assert read(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [
        b"data: a\r", b"\r", b"data: b\r\n", b"\r\n"]  # fmt: skip


def test_a_line_cut_anywhere_is_joined_whole():
    event = 'data: {"t": "grüße 東京 🚀"}\r\n\r\n'.encode()
    assert read(*(event[i : i + 3] for i in range(0, len(event), 3))) == [event[:-2], b"\r\n"]


def test_a_line_over_the_bound_fails_the_stream(monkeypatch):
    monkeypatch.setattr(proxy, "MAX_STREAM_EVENT_BYTES", 10)
    with pytest.raises(proxy.UpstreamStreamError):
        read(b"data: 1234", b"5678", b"90\n")
