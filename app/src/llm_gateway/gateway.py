"""Per-worker runtime state shared by the request handlers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy import Engine

from llm_gateway.auth import KeyCache
from llm_gateway.config import Deployment, GatewayConfig
from llm_gateway.writer import ExchangeWriter


class Router:
    """Round-robin over the deployments that share a model_name (per worker)."""

    def __init__(self, deployments: dict[str, list[Deployment]]):
        self._cycles: dict[str, Iterator[Deployment]] = {
            name: itertools.cycle(entries) for name, entries in deployments.items()
        }
        self.model_names = sorted(deployments)

    def pick(self, model: str) -> Deployment | None:
        cycle = self._cycles.get(model)
        return next(cycle) if cycle is not None else None


@dataclass
class Gateway:
    config: GatewayConfig
    writer: ExchangeWriter
    session: aiohttp.ClientSession
    engine: Engine | None
    router: Router = field(init=False)
    keys: KeyCache = field(init=False)
    # aiohttp timeouts per deployment, built once instead of per request.
    timeouts: dict[int, aiohttp.ClientTimeout] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.router = Router(self.config.deployments)
        self.keys = KeyCache(self.config.key_aliases)

    def timeout_for(self, deployment: Deployment) -> aiohttp.ClientTimeout:
        key = id(deployment)
        timeout = self.timeouts.get(key)
        if timeout is None:
            # sock_read bounds each wait for bytes, so long streams are fine while
            # a stalled upstream still times out.
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=min(10.0, deployment.timeout_s),
                sock_read=deployment.timeout_s,
            )
            self.timeouts[key] = timeout
        return timeout
