"""Per-worker runtime state shared by the request handlers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy import Engine

from llm_gateway.auth import KeyCache
from llm_gateway.config import DEFAULT_TIMEOUT_S, Deployment, GatewayConfig, RouterSettings
from llm_gateway.loggable import DepthCheck
from llm_gateway.writer import ExchangeWriter


class Router:
    """Which deployments a call tries, in order (per worker, like LiteLLM's Router).

    Deployments sharing a model_name take turns (round robin). A call gets
    ``num_retries`` further attempts on the model's deployments, then the same on each
    fallback model_name (its own, else the generic "*" ones and default_fallbacks). A
    deployment that failed more than ``allowed_fails`` times in a row leaves the rotation
    for ``cooldown_time`` seconds (unless all of them are out).
    """

    def __init__(self, deployments: dict[str, list[Deployment]], settings: RouterSettings):
        self.deployments = deployments
        self.settings = settings
        self.model_names = sorted(deployments)
        self._turn = dict.fromkeys(deployments, 0)
        self._fails: dict[int, int] = {}
        self._cooling_until: dict[int, float] = {}

    def has(self, model: str) -> bool:
        return model in self.deployments

    def _in_rotation(self, model: str) -> list[Deployment]:
        entries = self.deployments[model]
        if self._cooling_until:
            now = time.monotonic()
            entries = [d for d in entries if self._cooling_until.get(id(d), 0.0) <= now] or entries
        # Turns are taken among the deployments in the rotation, so those left share the
        # load of one cooling down evenly (rotating over all of them, then skipping the
        # cooling one, gave its turns to the next in the list: twice the load on it).
        start = self._turn[model] % len(entries)
        self._turn[model] += 1
        return entries[start:] + entries[:start]

    def plan(self, model: str, special: str | None = None) -> list[Deployment]:
        """The deployments to try for ``model`` and its fallbacks, first to last; with
        ``special`` (context_window_fallbacks, content_policy_fallbacks), only that
        table's fallbacks."""
        # Room for the most retries any kind of failure may get; call_with_retries stops
        # a model's turn early when its failure's kind allows fewer.
        attempts = self.settings.retry_policy.most(self.settings.num_retries) + 1
        models = [model] if special is None else []
        models += self.settings.fallbacks_for(model, special or "fallbacks")
        plan: list[Deployment] = []
        for name in models:
            if name in self.deployments:
                ordered = self._in_rotation(name)
                plan += [ordered[i % len(ordered)] for i in range(attempts)]
        return plan

    def succeeded(self, deployment: Deployment) -> None:
        if self._fails:
            self._fails.pop(id(deployment), None)

    def failed(self, deployment: Deployment) -> None:
        if self.settings.disable_cooldowns:
            return
        key = id(deployment)
        self._fails[key] = self._fails.get(key, 0) + 1
        if self._fails[key] > self.settings.allowed_fails:
            self._cooling_until[key] = time.monotonic() + self.settings.cooldown_time
            self._fails[key] = 0


@dataclass
class Gateway:
    config: GatewayConfig
    writer: ExchangeWriter
    session: aiohttp.ClientSession
    engine: Engine | None
    router: Router = field(init=False)
    keys: KeyCache = field(init=False)
    depth_check: DepthCheck = field(init=False)
    # aiohttp timeouts per (deployment, streamed), built once instead of per request.
    timeouts: dict[tuple[int, bool], aiohttp.ClientTimeout] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.router = Router(self.config.deployments, self.config.router)
        self.keys = KeyCache(self.config.key_aliases)
        self.depth_check = DepthCheck(self.config.service.max_request_json_depth)

    def timeout_for(self, deployment: Deployment, stream: bool = False) -> aiohttp.ClientTimeout:
        key = (id(deployment), stream)
        timeout = self.timeouts.get(key)
        if timeout is None:
            router = self.config.router
            seconds = deployment.timeout_s or router.timeout or DEFAULT_TIMEOUT_S
            if stream:
                # LiteLLM's order: the deployment's stream_timeout, the router's, else
                # the timeout.
                seconds = deployment.stream_timeout_s or router.stream_timeout or seconds
            # sock_read bounds each wait for bytes, so long streams are fine while
            # a stalled upstream still times out.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, seconds), sock_read=seconds
            )
            self.timeouts[key] = timeout
        return timeout
