"""config.yaml in LiteLLM proxy format, validated once at startup.

Providers that speak the OpenAI API are served, under LiteLLM's prefixes
(``model: openai/<upstream-name>``, ``groq/...``, ``azure/<deployment>`` ...; PROVIDERS).
Anything we cannot serve is a startup error naming the entry and the reason, so a bad
deploy fails at once instead of on the first request.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from llm_gateway.loggable import MAX_LOGGABLE_DEPTH
from llm_gateway.settings import EnvSettings

ENV_REF_PREFIX = "os.environ/"


@dataclass(frozen=True)
class Provider:
    """A LiteLLM provider prefix whose API is OpenAI's."""

    api_base: str | None  # LiteLLM's default; None: the entry must give api_base
    needs_key: bool = True  # local servers (vLLM, LM Studio) often run without one


PROVIDERS = {
    "openai": Provider("https://api.openai.com/v1"),
    "azure": Provider(None),  # api_base + api_version; deployment in the path, api-key
    "hosted_vllm": Provider(None, needs_key=False),
    "lm_studio": Provider("http://localhost:1234/v1", needs_key=False),
    "groq": Provider("https://api.groq.com/openai/v1"),
    "together_ai": Provider("https://api.together.xyz/v1"),
    "fireworks_ai": Provider("https://api.fireworks.ai/inference/v1"),
    "deepseek": Provider("https://api.deepseek.com/v1"),
    "mistral": Provider("https://api.mistral.ai/v1"),
    "openrouter": Provider("https://openrouter.ai/api/v1"),
    "xai": Provider("https://api.x.ai/v1"),
    "perplexity": Provider("https://api.perplexity.ai"),
}


class ConfigError(Exception):
    """Configuration cannot be served; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid gateway configuration:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Deployment:
    """One model_list entry: where requests for ``model_name`` go."""

    model_name: str
    upstream_model: str
    api_base: str
    api_key: SecretStr | None
    timeout_s: float | None  # None: router_settings.timeout, else DEFAULT_TIMEOUT_S
    input_cost_per_token: float
    output_cost_per_token: float
    provider: str = "openai"
    api_version: str | None = None  # Azure
    # Names the deployment in the log: model_info.id, else provider/model@host.
    label: str = ""
    # Streams: this, else router_settings.stream_timeout, else the timeout above.
    stream_timeout_s: float | None = None

    def url(self, path: str) -> str:
        """The upstream URL of an endpoint (``path`` like "/chat/completions")."""
        base = self.api_base.rstrip("/")
        if self.provider != "azure":
            return base + path
        # Azure OpenAI: the deployment is in the path (the Responses API takes it as
        # "model" in the body), the API version in the query.
        route = path if path == "/responses" else f"/deployments/{self.upstream_model}{path}"
        return f"{base}/openai{route}?api-version={self.api_version}"

    def auth_headers(self) -> dict[str, str]:
        if self.api_key is None:
            return {}
        if self.provider == "azure":
            return {"api-key": self.api_key.get_secret_value()}
        return {"Authorization": "Bearer " + self.api_key.get_secret_value()}


class DatabaseSettings(BaseModel):
    """SQLAlchemy pool and libpq settings, flat in general_settings (LiteLLM's
    database_connection_* names work too)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool_size: int = Field(default=5, ge=1, le=100)
    max_overflow: int = Field(default=5, ge=0, le=100)
    pool_recycle: int = Field(default=1800, ge=-1, le=86_400)
    pool_pre_ping: bool = True
    pool_timeout: float = Field(default=10.0, gt=0, le=300)
    connect_timeout: int = Field(default=5, ge=1, le=300)


class WriterSettings(BaseModel):
    """general_settings.writer: the exchange writer's queue and batches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    flush_interval_ms: float = Field(default=20.0, ge=0, le=10_000)
    retry_interval_s: float = Field(default=1.0, gt=0, le=300)


class ServiceSettings(BaseModel):
    """The rest of general_settings that the gateway reads (LiteLLM's other keys are
    reported as ignored)."""

    log_mode: Literal["async", "sync"] = "async"
    health_requires_auth: bool = False
    metrics_requires_auth: bool = False
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    # Deepest nesting of a request body (containers, the body itself counting as one).
    # Far above what clients send (a chat body nests 3-5 levels, tool schemas a few more)
    # and within what the log can store.
    max_request_json_depth: int = Field(default=128, ge=1, le=MAX_LOGGABLE_DEPTH)
    # Largest unstreamed upstream answer read (a 502 beyond): an upstream must not make a
    # worker read without end. Room for the largest real answers (2,048 embeddings of
    # 3,072 floats as JSON are ~126 MB); the log cannot hold more than 255 MB anyway.
    max_response_body_bytes: int = Field(default=192 * 1024 * 1024, ge=1024, le=1024**3)


DEFAULT_TIMEOUT_S = 600.0  # LiteLLM's default request timeout


class RetryPolicy(BaseModel):
    """``router_settings.retry_policy``: retries by kind of failure, in place of
    ``num_retries`` (LiteLLM's names). Failures no retry can cure (400, 401, 403, a
    content policy) are never retried here, whatever their count says."""

    model_config = ConfigDict(extra="forbid")

    TimeoutErrorRetries: int | None = Field(default=None, ge=0, le=10)
    RateLimitErrorRetries: int | None = Field(default=None, ge=0, le=10)
    InternalServerErrorRetries: int | None = Field(default=None, ge=0, le=10)
    BadRequestErrorRetries: int | None = Field(default=None, ge=0, le=10)
    AuthenticationErrorRetries: int | None = Field(default=None, ge=0, le=10)
    ContentPolicyViolationErrorRetries: int | None = Field(default=None, ge=0, le=10)

    def retries_for(self, kind: str | None, default: int) -> int:
        value = getattr(self, kind, None) if kind else None
        return default if value is None else value

    # Kinds no retry can cure; a count above 0 for them is reported as ignored.
    NEVER_RETRIED: ClassVar[tuple[str, ...]] = (
        "BadRequestErrorRetries",
        "AuthenticationErrorRetries",
        "ContentPolicyViolationErrorRetries",
    )

    def most(self, default: int) -> int:
        """The most retries any retryable kind may get."""
        kinds = ("TimeoutErrorRetries", "RateLimitErrorRetries", "InternalServerErrorRetries")
        return max(self.retries_for(kind, default) for kind in kinds)


class RouterSettings(BaseModel):
    """``router_settings`` as LiteLLM's Router reads them (its names and defaults)."""

    model_config = ConfigDict(extra="allow")  # extras are reported as ignored

    # Further attempts after the first. LiteLLM's Router defaults to the openai SDK's
    # DEFAULT_MAX_RETRIES (2) when neither router_settings nor litellm_settings set it.
    num_retries: int = Field(default=2, ge=0, le=10)
    timeout: float | None = Field(default=None, gt=0, le=3600)  # default per-call timeout
    stream_timeout: float | None = Field(default=None, gt=0, le=3600)
    allowed_fails: int = Field(default=3, ge=0, le=10_000)  # before a cooldown
    cooldown_time: float = Field(default=5.0, ge=0, le=3600)  # seconds out of rotation
    disable_cooldowns: bool = False  # a failing deployment stays in the rotation
    retry_policy: RetryPolicy = RetryPolicy()
    retry_after: float = Field(default=0.0, ge=0, le=60)  # least wait before a retry
    # [{model_name: [fallback model_names]}]; the key "*" is every model without its own
    # entry, as in LiteLLM.
    fallbacks: list[dict[str, list[str]]] = []
    context_window_fallbacks: list[dict[str, list[str]]] = []
    content_policy_fallbacks: list[dict[str, list[str]]] = []
    default_fallbacks: list[str] = []  # LiteLLM adds them to fallbacks as {"*": [...]}

    def fallbacks_for(self, model: str, table: str = "fallbacks") -> list[str]:
        """The model_names to try, in order, after ``model`` failed (``table``: fallbacks,
        context_window_fallbacks or content_policy_fallbacks)."""
        entries = getattr(self, table)
        own = [name for entry in entries for name in entry.get(model, [])]
        if own:
            return own
        generic = [name for entry in entries for name in entry.get("*", [])]
        if table == "fallbacks":
            generic += self.default_fallbacks
        return [name for name in dict.fromkeys(generic) if name != model]


class LitellmRouterDefaults(BaseModel):
    """The ``litellm_settings`` keys LiteLLM's Router falls back to when ``router_settings``
    leaves them out (``Router.__init__``: ``num_retries`` else ``litellm.num_retries``,
    ``timeout or litellm.request_timeout``, ``fallbacks or litellm.fallbacks``, ...). LiteLLM's
    own docs put retries and fallbacks there, so a file written that way must get them:
    dropping them would leave a deployment's failures unretried without a word."""

    model_config = ConfigDict(extra="ignore")  # the rest is reported as ignored

    num_retries: int | None = Field(default=None, ge=0, le=10)
    request_timeout: float | None = Field(default=None, gt=0, le=3600)
    allowed_fails: int | None = Field(default=None, ge=0, le=10_000)
    fallbacks: list[dict[str, list[str]]] | None = None
    context_window_fallbacks: list[dict[str, list[str]]] | None = None
    content_policy_fallbacks: list[dict[str, list[str]]] | None = None
    default_fallbacks: list[str] | None = None


# litellm_settings key -> the router_settings key it stands in for.
_LITELLM_ROUTER_KEYS = {
    "num_retries": "num_retries",
    "request_timeout": "timeout",
    "allowed_fails": "allowed_fails",
    "fallbacks": "fallbacks",
    "context_window_fallbacks": "context_window_fallbacks",
    "content_policy_fallbacks": "content_policy_fallbacks",
    "default_fallbacks": "default_fallbacks",
}
FALLBACK_TABLES = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


def _router_settings(
    raw: Any, litellm: dict, deployments: dict, problems: list[str]
) -> RouterSettings:
    defaults = _validated(LitellmRouterDefaults, litellm, "litellm_settings", problems)
    raw = dict(raw) if isinstance(raw, dict) else raw or {}
    origin = {}  # where each table came from, to name it in problems
    if isinstance(raw, dict):
        for key, router_key in _LITELLM_ROUTER_KEYS.items():
            value = getattr(defaults, key)
            if value is not None and raw.get(router_key) in (None, []):
                raw[router_key] = value
                origin[router_key] = f"litellm_settings.{key}"
    settings = _validated(RouterSettings, raw, "router_settings", problems)
    for key in (*FALLBACK_TABLES, "default_fallbacks"):
        where = origin.get(key, f"router_settings.{key}")
        # From the input, so an unknown name is reported even when another setting is
        # invalid (then the defaults stand in and the tables would be empty).
        table = raw.get(key) if isinstance(raw, dict) else None
        if key == "default_fallbacks":
            table = [{"*": table}]
        for name in _fallback_names(table):
            if name not in deployments and name != "*":
                problems.append(f"{where}: no model_name {name!r}")
    return settings


def _fallback_names(table: Any) -> list[str]:
    """Every model name in a ``[{model: [fallbacks]}]`` table (a malformed one is the
    model's problem to report)."""
    names = []
    for entry in table if isinstance(table, list) else []:
        for model, fallbacks in entry.items() if isinstance(entry, dict) else []:
            names.append(model)
            if isinstance(fallbacks, list):
                names += [name for name in fallbacks if isinstance(name, str)]
    return names


@dataclass(frozen=True)
class GatewayConfig:
    deployments: dict[str, list[Deployment]]
    # sha256(key) -> alias; hashing keeps raw keys out of the lookup table and log paths.
    key_aliases: dict[str, str]
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    # LiteLLM keys this gateway does not implement, by path: reported at startup and by
    # check-config, never silently dropped.
    ignored_keys: tuple[str, ...] = ()
    router: RouterSettings = field(default_factory=RouterSettings)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _resolve_secret(value: Any, where: str, problems: list[str]) -> str | None:
    """Return the literal or the environment value of an ``os.environ/NAME`` reference."""
    if value is None or value == "":
        problems.append(f"{where}: missing")
        return None
    text = str(value)
    if text.startswith(ENV_REF_PREFIX):
        name = text[len(ENV_REF_PREFIX) :]
        resolved = os.environ.get(name)
        if not resolved:
            problems.append(f"{where}: environment variable {name} is not set")
            return None
        return resolved
    return text


def _number(raw: dict, key: str, default: float, where: str, problems: list[str]) -> float:
    value = raw.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{where}.{key}: not a number ({value!r})")
        return default
    if not math.isfinite(number) or number < 0:
        problems.append(f"{where}.{key}: must be a finite number, not negative ({value!r})")
        return default
    return number


class DeploymentTimeouts(BaseModel):
    """``litellm_params.timeout`` and ``stream_timeout``, bounded like the router's (a NaN
    would time every call out at once). 0 or null means unset, as LiteLLM reads them."""

    timeout: float | None = Field(default=None, ge=0, le=3600, allow_inf_nan=False)
    stream_timeout: float | None = Field(default=None, ge=0, le=3600, allow_inf_nan=False)


def _parse_deployment(index: int, entry: Any, problems: list[str]) -> Deployment | None:
    if not isinstance(entry, dict):
        problems.append(f"model_list[{index}]: must be a mapping")
        return None
    model_name = entry.get("model_name")
    label = f"model_list[{index}] ({model_name!r})"
    if not model_name or not isinstance(model_name, str):
        problems.append(f"{label}: model_name missing")
        return None
    params = entry.get("litellm_params") or {}
    info = entry.get("model_info") or {}
    if not isinstance(params, dict) or not isinstance(info, dict):
        problems.append(f"{label}: litellm_params and model_info must be mappings")
        return None
    model = str(params.get("model") or "")
    provider, sep, upstream_model = model.partition("/")
    if not sep or not upstream_model:
        problems.append(f"{label}: litellm_params.model must look like 'openai/<name>' ({model!r})")
        return None
    if provider not in PROVIDERS:
        problems.append(
            f"{label}: provider {provider!r} is not OpenAI-compatible "
            f"(supported: {', '.join(p + '/' for p in PROVIDERS)})"
        )
        return None
    kind = PROVIDERS[provider]
    api_key = None
    if kind.needs_key or params.get("api_key"):
        where = f"{label}: litellm_params.api_key"
        api_key = _resolve_secret(params.get("api_key"), where, problems)
    api_base = _resolve_secret(
        params.get("api_base", kind.api_base), f"{label}: litellm_params.api_base", problems
    )
    api_version = None
    if provider == "azure":
        where = f"{label}: litellm_params.api_version"
        api_version = _resolve_secret(params.get("api_version"), where, problems)
    if api_base and not api_base.startswith(("http://", "https://")):
        problems.append(f"{label}: litellm_params.api_base must be an http(s) URL")
    given = {key: params[key] for key in DeploymentTimeouts.model_fields if key in params}
    timeouts = _validated(DeploymentTimeouts, given, f"{label}: litellm_params", problems)
    if (kind.needs_key and api_key is None) or api_base is None:
        return None
    if provider == "azure" and api_version is None:
        return None
    return Deployment(
        model_name=model_name,
        upstream_model=upstream_model,
        api_base=api_base,
        api_key=SecretStr(api_key) if api_key is not None else None,
        provider=provider,
        api_version=api_version,
        timeout_s=timeouts.timeout or None,
        stream_timeout_s=timeouts.stream_timeout or None,
        label=str(info.get("id") or f"{provider}/{upstream_model}@{urlsplit(api_base).netloc}"),
        input_cost_per_token=_number(info, "input_cost_per_token", 0.0, label, problems),
        output_cost_per_token=_number(info, "output_cost_per_token", 0.0, label, problems),
    )


def _parse_keys(general: dict, env: EnvSettings, problems: list[str]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    if env.master_key is not None and env.master_key.get_secret_value():
        master = env.master_key.get_secret_value()
    else:
        master = _resolve_secret(general.get("master_key"), "general_settings.master_key", problems)
    if master:
        aliases[hash_key(master)] = "master"
    for index, item in enumerate(general.get("api_keys") or []):
        where = f"general_settings.api_keys[{index}]"
        if not isinstance(item, dict) or not item.get("alias"):
            problems.append(f"{where}: needs 'alias' and 'key'")
            continue
        key = _resolve_secret(item.get("key"), f"{where} ({item['alias']!r}).key", problems)
        if key:
            aliases[hash_key(key)] = str(item["alias"])
    return aliases


def _with_environment_values(raw: dict, fields: Any, where: str, problems: list[str]) -> dict:
    """``raw`` with each ``os.environ/NAME`` value of a known field replaced by the
    variable's value; an unset one is a problem and left out (its default stands in)."""
    resolved = {}
    for key, value in raw.items():
        if key in fields and isinstance(value, str) and value.startswith(ENV_REF_PREFIX):
            value = _resolve_secret(value, f"{where}.{key}", problems)
            if value is None:
                continue
        resolved[key] = value
    return resolved


def _validated(model: type[BaseModel], raw: Any, where: str, problems: list[str]):
    """``model`` from ``raw``; each problem, named by its path, goes to ``problems`` (then
    the defaults stand in for the invalid keys, so the other checks still run on the
    valid ones). ``os.environ/NAME`` values are read from the environment first, as
    LiteLLM reads them anywhere in its file."""
    if isinstance(raw, dict):
        raw = _with_environment_values(raw, model.model_fields, where, problems)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            path = ".".join(str(part) for part in (where, *error["loc"]))
            problems.append(f"{path}: {error['msg']}")
        if not isinstance(raw, dict):
            return model()
        invalid = {error["loc"][0] for error in exc.errors() if error["loc"]}
        try:
            return model.model_validate({k: v for k, v in raw.items() if k not in invalid})
        except ValidationError:
            return model()


# LiteLLM's own general_settings names for the same knobs, so its files work unchanged.
_LITELLM_DB_ALIASES = {
    "database_connection_pool_limit": "pool_size",
    "database_connection_timeout": "pool_timeout",
}


# What this gateway reads; any other key of a LiteLLM file is reported as ignored.
_TOP_LEVEL_KEYS = {"model_list", "general_settings", "router_settings", "litellm_settings"}
_GENERAL_KEYS = {
    "master_key", "api_keys", "writer",
    *DatabaseSettings.model_fields, *ServiceSettings.model_fields, *_LITELLM_DB_ALIASES,
}  # fmt: skip
_PARAMS_KEYS = {"model", "api_base", "api_key", "api_version", *DeploymentTimeouts.model_fields}
_MODEL_INFO_KEYS = {"id", "input_cost_per_token", "output_cost_per_token"}
_ENTRY_KEYS = {"model_name", "litellm_params", "model_info"}


def _unknown(section: Any, known: Any, where: str) -> list[str]:
    """The keys of ``section`` not in ``known``, as paths; one that looks like a misspelled
    known key says which (``router_settings.num_retires (num_retries?)``): its default is
    in effect instead of the value the file meant."""
    if not isinstance(section, dict):
        return []
    names = []
    for key in section:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.8)
        names.append(f"{where}{key}" + (f" ({close[0]}?)" if close else ""))
    return names


def _unimplemented_keys(raw: dict, general: dict, model_list: list) -> tuple[str, ...]:
    ignored = _unknown(raw, _TOP_LEVEL_KEYS, "")
    ignored += _unknown(raw.get("litellm_settings"), _LITELLM_ROUTER_KEYS, "litellm_settings.")
    ignored += _unknown(general, _GENERAL_KEYS, "general_settings.")
    api_keys = general.get("api_keys")
    for index, item in enumerate(api_keys if isinstance(api_keys, list) else []):
        # e.g. a per-key model list or budget: not enforced
        ignored += _unknown(item, ("alias", "key"), f"general_settings.api_keys[{index}].")
    router = raw.get("router_settings")
    ignored += _unknown(router, RouterSettings.model_fields, "router_settings.")
    policy = router.get("retry_policy") if isinstance(router, dict) else None
    if isinstance(policy, dict):
        ignored += [
            f"router_settings.retry_policy.{kind} (never retried)"
            for kind in RetryPolicy.NEVER_RETRIED
            if policy.get(kind) not in (None, 0, "0")
        ]
    for index, entry in enumerate(model_list):
        if not isinstance(entry, dict):
            continue
        # LiteLLM's docs also put tpm/rpm on the entry itself.
        ignored += _unknown(entry, _ENTRY_KEYS, f"model_list[{index}].")
        for section, known in (("litellm_params", _PARAMS_KEYS), ("model_info", _MODEL_INFO_KEYS)):
            ignored += _unknown(entry.get(section), known, f"model_list[{index}].{section}.")
    return tuple(ignored)


def _check_unique_ids(model_list: list, problems: list[str]) -> None:
    """A model_info.id names its deployment in the log: twice, the log could not tell the
    two apart (and LiteLLM keys its deployments by it)."""
    first: dict[str, int] = {}  # id -> the entry that has it
    for index, entry in enumerate(model_list):
        info = entry.get("model_info") if isinstance(entry, dict) else None
        given = info.get("id") if isinstance(info, dict) else None
        if given is None:
            continue
        if str(given) in first:
            problems.append(
                f"model_list[{index}]: model_info.id {str(given)!r} is already "
                f"model_list[{first[str(given)]}]'s"
            )
        first.setdefault(str(given), index)


def build_config(raw: Any, env: EnvSettings) -> GatewayConfig:
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["top level must be a mapping with model_list and general_settings"])
    model_list = raw.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        problems.append("model_list: must be a non-empty list")
        model_list = []
    general = raw.get("general_settings") or {}
    if not isinstance(general, dict):
        problems.append("general_settings: must be a mapping")
        general = {}

    deployments: dict[str, list[Deployment]] = {}
    for index, entry in enumerate(model_list):
        deployment = _parse_deployment(index, entry, problems)
        if deployment is not None:
            deployments.setdefault(deployment.model_name, []).append(deployment)
    _check_unique_ids(model_list, problems)

    key_aliases = _parse_keys(general, env, problems)
    litellm = raw.get("litellm_settings") or {}
    if not isinstance(litellm, dict):
        problems.append("litellm_settings: must be a mapping")
        litellm = {}
    router = _router_settings(raw.get("router_settings"), litellm, deployments, problems)
    database_raw = {
        _LITELLM_DB_ALIASES.get(key, key): value
        for key, value in general.items()
        if key in DatabaseSettings.model_fields or key in _LITELLM_DB_ALIASES
    }
    database = _validated(DatabaseSettings, database_raw, "general_settings", problems)
    writer = _validated(
        WriterSettings, general.get("writer") or {}, "general_settings.writer", problems
    )
    service_raw = {k: v for k, v in general.items() if k in ServiceSettings.model_fields}
    service = _validated(ServiceSettings, service_raw, "general_settings", problems)
    if problems:
        raise ConfigError(problems)
    ignored = _unimplemented_keys(raw, general, model_list)
    return GatewayConfig(
        deployments=deployments,
        key_aliases=key_aliases,
        database=database,
        writer=writer,
        router=router,
        service=service,
        ignored_keys=ignored,
    )


def load_config(env: EnvSettings | None = None, path: Path | None = None) -> GatewayConfig:
    env = env or EnvSettings()
    path = path or env.config_path
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: file not found"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML ({exc})"]) from exc
    return build_config(raw, env)
