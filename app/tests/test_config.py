"""config.yaml (LiteLLM format) validation and the check-config command."""

import subprocess
import sys

import pytest
import yaml

from llm_gateway.config import ConfigError, build_config
from llm_gateway.settings import EnvSettings

LITELLM_FILE = """
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: https://api.openai.com/v1
      api_key: os.environ/OPENAI_API_KEY
      timeout: 60
    model_info: {input_cost_per_token: 0.00000015, output_cost_per_token: 0.0000006}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://10.0.0.5:8000/v1",
                     api_key: sk-local}
litellm_settings: {drop_params: true}
router_settings: {routing_strategy: simple-shuffle}
general_settings:
  master_key: os.environ/GATEWAY_MASTER_KEY
  database_connection_pool_limit: 7
  api_keys: [{alias: team-a, key: sk-team}]
"""


@pytest.fixture
def env(monkeypatch) -> EnvSettings:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-provider")
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-master")
    return EnvSettings()


def test_litellm_file_is_accepted_unchanged(env):
    config = build_config(yaml.safe_load(LITELLM_FILE), env)
    entries = config.deployments["gpt-4o-mini"]
    assert [e.api_base for e in entries] == ["https://api.openai.com/v1", "http://10.0.0.5:8000/v1"]
    assert entries[0].api_key.get_secret_value() == "sk-provider"
    assert "sk-provider" not in repr(entries[0])
    assert entries[0].timeout_s == 60
    assert config.database.pool_size == 7
    assert sorted(config.key_aliases.values()) == ["master", "team-a"]
    assert config.service.log_mode == "async"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (
            {
                "model_name": "claude",
                "litellm_params": {"model": "anthropic/claude-3", "api_key": "k"},
            },
            "model_list[0] ('claude'): provider 'anthropic' is not OpenAI-compatible",
        ),
        (
            {
                "model_name": "x",
                "litellm_params": {"model": "openai/x", "api_key": "os.environ/NOT_SET_ANYWHERE"},
            },
            "model_list[0] ('x'): litellm_params.api_key: environment variable NOT_SET_ANYWHERE",
        ),
        (
            {"model_name": "x", "litellm_params": {"model": "openai/x"}},
            "model_list[0] ('x'): litellm_params.api_key: missing",
        ),
        (
            {"model_name": "x", "litellm_params": {"model": "gpt-4"}},
            "model_list[0] ('x'): litellm_params.model must look like 'openai/<name>'",
        ),
        ({"litellm_params": {"model": "openai/x"}}, "model_list[0] (None): model_name missing"),
    ],
)
def test_unservable_entry_names_entry_and_reason(env, entry, reason):
    with pytest.raises(ConfigError) as raised:
        build_config({"model_list": [entry], "general_settings": {}}, env)
    assert any(problem.startswith(reason) for problem in raised.value.problems), raised.value


def test_every_problem_is_reported_at_once(env):
    raw = {
        "model_list": [
            {"model_name": "a", "litellm_params": {"model": "bedrock/a"}},
            {"model_name": "b", "litellm_params": {"model": "openai/b"}},
        ],
        "general_settings": {"log_mode": "maybe"},
    }
    with pytest.raises(ConfigError) as raised:
        build_config(raw, env)
    text = str(raised.value)
    assert "model_list[0] ('a')" in text
    assert "model_list[1] ('b')" in text
    assert "log_mode" in text


def run_check_config(path, **env_vars):
    return subprocess.run(
        [sys.executable, "-m", "llm_gateway.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env_vars},
    )


def test_check_config_command(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(LITELLM_FILE)
    ok = run_check_config(path, OPENAI_API_KEY="sk-provider-secret", GATEWAY_MASTER_KEY="m")
    assert ok.returncode == 0, ok.stderr
    assert "model gpt-4o-mini: 2 deployment(s)" in ok.stdout
    assert "sk-provider-secret" not in ok.stdout + ok.stderr

    bad = run_check_config(path, GATEWAY_MASTER_KEY="m")
    assert bad.returncode == 1
    assert "model_list[0] ('gpt-4o-mini')" in bad.stderr
    assert "OPENAI_API_KEY is not set" in bad.stderr


def test_service_refuses_to_start_with_an_unservable_config(tmp_path):
    path = tmp_path / "config.yaml"
    entry = {"model_name": "c", "litellm_params": {"model": "anthropic/c", "api_key": "k"}}
    path.write_text(yaml.safe_dump({"model_list": [entry]}))
    result = subprocess.run(
        [sys.executable, "-c", "from llm_gateway.main import create_app; create_app()"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_CONFIG": str(path)},
    )
    assert result.returncode != 0
    assert "model_list[0] ('c'): provider 'anthropic' is not OpenAI-compatible" in result.stderr


PROVIDER_FILE = """
model_list:
  - model_name: fast
    litellm_params: {model: groq/llama-3.1-8b-instant, api_key: sk-groq}
  - model_name: local
    litellm_params: {model: hosted_vllm/qwen, api_base: "http://10.0.0.7:8000/v1"}
  - model_name: az
    litellm_params: {model: azure/gpt4o-prod, api_base: "https://res.openai.azure.com",
                     api_version: "2024-10-21", api_key: sk-azure}
general_settings: {master_key: mk}
"""


def test_litellm_provider_prefixes_with_their_default_bases_and_azure(env):
    config = build_config(yaml.safe_load(PROVIDER_FILE), env)
    (fast,), (local,), (azure,) = (config.deployments[n] for n in ("fast", "local", "az"))
    assert fast.url("/chat/completions") == "https://api.groq.com/openai/v1/chat/completions"
    assert fast.auth_headers() == {"Authorization": "Bearer sk-groq"}
    assert local.url("/embeddings") == "http://10.0.0.7:8000/v1/embeddings"
    assert local.auth_headers() == {}  # a local vLLM without a key
    assert azure.url("/chat/completions") == (
        "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert azure.url("/responses") == (
        "https://res.openai.azure.com/openai/responses?api-version=2024-10-21"
    )
    assert azure.auth_headers() == {"api-key": "sk-azure"}


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"model": "hosted_vllm/q"}, "litellm_params.api_base: missing"),
        ({"model": "azure/d", "api_base": "https://r", "api_key": "k"},
         "litellm_params.api_version: missing"),
    ],
)  # fmt: skip
def test_providers_without_a_default_base_need_one(env, params, reason):
    with pytest.raises(ConfigError, match=reason):
        build_config({"model_list": [{"model_name": "m", "litellm_params": params}]}, env)


def test_litellm_keys_not_implemented_are_named_not_dropped(env, tmp_path):
    config = build_config(yaml.safe_load(LITELLM_FILE), env)
    assert config.ignored_keys == (
        "litellm_settings.drop_params",
        "router_settings.routing_strategy",
    )
    path = tmp_path / "config.yaml"
    path.write_text(LITELLM_FILE)
    ok = run_check_config(path, OPENAI_API_KEY="sk-provider-secret", GATEWAY_MASTER_KEY="m")
    assert (
        "ignored (not implemented): litellm_settings.drop_params, router_settings.routing_strategy"
        in ok.stdout
    )


def test_a_misspelled_key_is_named_with_the_key_it_resembles(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["router_settings"]["num_retires"] = 3
    raw["litellm_settings"]["fallback"] = [{"gpt-4o-mini": ["gpt-4o-mini"]}]
    raw["model_list"][0]["litellm_params"]["stream_timout"] = 5
    ignored = build_config(raw, env).ignored_keys
    assert "router_settings.num_retires (num_retries?)" in ignored
    assert "litellm_settings.fallback (fallbacks?)" in ignored
    assert "model_list[0].litellm_params.stream_timout (stream_timeout?)" in ignored
    assert "router_settings.routing_strategy" in ignored  # resembles nothing


def test_retry_policy_counts_for_failures_never_retried_are_named(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["router_settings"]["retry_policy"] = {
        "BadRequestErrorRetries": 2,
        "AuthenticationErrorRetries": 0,  # what the gateway does anyway: nothing to say
        "RateLimitErrorRetries": 3,
    }
    config = build_config(raw, env)
    assert config.router.retry_policy.RateLimitErrorRetries == 3
    policy = [key for key in config.ignored_keys if "retry_policy" in key]
    assert policy == ["router_settings.retry_policy.BadRequestErrorRetries (never retried)"]


def test_keys_of_a_model_list_entry_itself_are_named(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["model_list"][1].update(tpm=100_000, rpm=1_000)  # where LiteLLM's router docs put them
    assert build_config(raw, env).ignored_keys[-2:] == ("model_list[1].tpm", "model_list[1].rpm")


def test_keys_of_an_api_key_the_gateway_does_not_enforce_are_named(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["general_settings"]["api_keys"][0]["models"] = ["gpt-4o-mini"]
    assert "general_settings.api_keys[0].models" in build_config(raw, env).ignored_keys


def test_litellm_settings_retries_timeout_and_fallbacks_reach_the_router(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["model_list"][1]["model_name"] = "backup"
    raw["litellm_settings"] = {
        "drop_params": True,
        "num_retries": "3",
        "request_timeout": 30,
        "allowed_fails": 1,
        "fallbacks": [{"gpt-4o-mini": ["backup"]}],
        "context_window_fallbacks": [{"gpt-4o-mini": ["backup"]}],
        "success_callback": ["langfuse"],
    }
    raw["router_settings"] = {"allowed_fails": 5}  # router_settings wins, as in LiteLLM
    config = build_config(raw, env)
    router = config.router
    assert (router.num_retries, router.timeout, router.allowed_fails) == (3, 30, 5)
    assert router.fallbacks_for("gpt-4o-mini") == ["backup"]
    assert router.fallbacks_for("gpt-4o-mini", "context_window_fallbacks") == ["backup"]
    assert [k for k in config.ignored_keys if k.startswith("litellm_settings")] == [
        "litellm_settings.drop_params",
        "litellm_settings.success_callback",
    ]

    raw["litellm_settings"] = {"num_retries": -1, "fallbacks": [{"gpt-4o-mini": ["gpt-5"]}]}
    with pytest.raises(ConfigError) as raised:
        build_config(raw, env)
    assert raised.value.problems == [
        "litellm_settings.num_retries: Input should be greater than or equal to 0",
        "litellm_settings.fallbacks: no model_name 'gpt-5'",
    ]


def test_a_deployment_id_names_one_deployment(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["model_list"][0]["model_info"]["id"] = "openai-east"
    raw["model_list"][1]["model_info"] = {"id": "openai-east"}
    with pytest.raises(ConfigError) as raised:
        build_config(raw, env)
    assert raised.value.problems == [
        "model_list[1]: model_info.id 'openai-east' is already model_list[0]'s"
    ]
    raw["model_list"][1]["model_info"]["id"] = "local-vllm"
    labels = [d.label for d in build_config(raw, env).deployments["gpt-4o-mini"]]
    assert labels == ["openai-east", "local-vllm"]


def test_settings_may_come_from_the_environment(env, monkeypatch):
    # LiteLLM reads os.environ/NAME anywhere in its file, not only in keys and bases.
    monkeypatch.setenv("GW_RETRIES", "1")
    monkeypatch.setenv("GW_STREAM_TIMEOUT", "7.5")
    monkeypatch.setenv("GW_LOG_MODE", "sync")
    raw = yaml.safe_load(LITELLM_FILE)
    raw["router_settings"]["num_retries"] = "os.environ/GW_RETRIES"
    raw["model_list"][0]["litellm_params"]["stream_timeout"] = "os.environ/GW_STREAM_TIMEOUT"
    raw["general_settings"]["log_mode"] = "os.environ/GW_LOG_MODE"
    config = build_config(raw, env)
    assert config.router.num_retries == 1
    assert config.deployments["gpt-4o-mini"][0].stream_timeout_s == 7.5
    assert config.service.log_mode == "sync"

    raw["router_settings"]["cooldown_time"] = "os.environ/GW_UNSET_COOLDOWN"
    with pytest.raises(ConfigError) as raised:
        build_config(raw, env)
    assert raised.value.problems == [
        "router_settings.cooldown_time: environment variable GW_UNSET_COOLDOWN is not set"
    ]


def test_deployment_timeouts_are_bounded(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["model_list"][0]["litellm_params"].update(timeout=float("nan"), stream_timeout=-1)
    raw["model_list"][1]["litellm_params"].update(timeout="inf")
    raw["model_list"][1]["model_info"] = {"input_cost_per_token": float("inf")}
    with pytest.raises(ConfigError) as raised:
        build_config(raw, env)
    assert raised.value.problems == [
        "model_list[0] ('gpt-4o-mini'): litellm_params.timeout: Input should be a finite number",
        "model_list[0] ('gpt-4o-mini'): litellm_params.stream_timeout: "
        "Input should be greater than or equal to 0",
        "model_list[1] ('gpt-4o-mini'): litellm_params.timeout: Input should be a finite number",
        "model_list[1] ('gpt-4o-mini').input_cost_per_token: "
        "must be a finite number, not negative (inf)",
    ]
    raw["model_list"][0]["litellm_params"].update(timeout=0, stream_timeout="2.5")
    raw["model_list"][1]["litellm_params"].update(timeout=None)
    raw["model_list"][1]["model_info"] = {}
    config = build_config(raw, env)
    first, second = config.deployments["gpt-4o-mini"]
    assert (first.timeout_s, first.stream_timeout_s) == (None, 2.5)  # 0: unset, as LiteLLM
    assert (second.timeout_s, second.stream_timeout_s) == (None, None)
    assert not [key for key in config.ignored_keys if "timeout" in key]


def test_settings_are_typed_bounded_and_named_by_path(env):
    raw = yaml.safe_load(LITELLM_FILE)
    raw["general_settings"].update(
        health_requires_auth="false",  # a string from a templated file: still False
        metrics_requires_auth="yes",
        writer={"batch_size": 0, "flush_intervall_ms": 5},  # out of bounds, misspelled
        pool_size=1000,
    )
    with pytest.raises(ConfigError) as raised:
        build_config(raw, env)
    problems = "\n".join(raised.value.problems)
    assert "general_settings.writer.batch_size: Input should be greater than or equal to 1" in (
        problems
    )
    assert "general_settings.writer.flush_intervall_ms: Extra inputs are not permitted" in (
        problems
    )
    assert "general_settings.pool_size: Input should be less than or equal to 100" in problems

    raw["general_settings"].update(writer={}, pool_size=10)
    config = build_config(raw, env)
    assert config.service.health_requires_auth is False
    assert config.service.metrics_requires_auth is True
    assert config.database.pool_size == 10
