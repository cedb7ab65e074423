"""One settings model per role, read from a TOML file with environment overrides.

Precedence, highest first: explicit overrides (CLI flags), environment (``COCOON_<ROLE>_<FIELD>``, nested
with ``__``), the TOML file, defaults. Every field has a description: ``cocoon <role> --help`` shows them.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cocoon.attestation.policy import AttestationPolicy
from cocoon.chain.network import ChainReads, Network
from cocoon.chain.ratelimit import DEFAULT_KEY_RPS
from cocoon.engines.config import EngineSettings
from cocoon.errors import ConfigError, first_problem

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("cocoon_config_file", default=None)


def cocoon_home() -> Path:
    """Where cocoon keeps keys, stores and caches: ``$COCOON_HOME`` or ``~/.cocoon``."""
    return Path(os.environ.get("COCOON_HOME") or Path.home() / ".cocoon")


class RoleSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", env_nested_delimiter="__")

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _CONFIG_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Self:
        """Settings from ``config_file`` (TOML), the environment and ``overrides`` (``None`` values skipped).

        Raises ``ConfigError`` naming the file and field when anything is wrong.
        """
        if config_file is not None:
            if not config_file.is_file():
                raise ConfigError(f"config file {config_file} does not exist")
            try:
                tomllib.loads(config_file.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            where, message = first_problem(exc)
            source = f" in {config_file}" if config_file else ""
            raise ConfigError(f"invalid {cls.__name__} option {where!r}{source}: {message}") from exc
        finally:
            _CONFIG_FILE.reset(token)


class TlsServing(BaseSettings):
    """HTTPS (and WSS) on a role's own listening port, for a proxy or sidecar reached over a network."""

    tls_certfile: Path | None = Field(
        None, description="PEM certificate chain to serve HTTPS/WSS with (with tls_keyfile); empty: plain HTTP"
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of tls_certfile")

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsServing:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set tls_certfile and tls_keyfile together, or neither")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a file")
        return self


class TlsTrust(BaseSettings):
    """Whom a role trusts when it dials a proxy over HTTPS/WSS: the system's roots and this CA file."""

    tls_ca_file: Path | None = Field(
        None, description="PEM CA certificates to trust for proxies' HTTPS/WSS, besides the system's (private CA)"
    )


class ChainAccess(BaseSettings):
    """How a role reaches the chain, beside its ``chain_url``: the same fields for the worker, proxy and client."""

    chain_api_key: str | None = Field(None, description="toncenter API key, if the endpoint wants one")
    network: Network = Field(
        "devnet",
        description="the TON network chain_url must serve (devnet, testnet, mainnet); checked against the chain's "
        "global id at start",
    )
    chain_rps: float = Field(
        DEFAULT_KEY_RPS, gt=0, description="requests a second chain_api_key's plan allows (toncenter's free plan: 10)"
    )
    chain_reads: ChainReads = Field(
        "auto",
        description="how chain state is read: http (trust chain_url), liteserver (Merkle proofs, get-methods run "
        "locally), auto (liteserver on mainnet, http elsewhere)",
    )
    liteserver_config: Path | None = Field(
        None,
        description="TON global config JSON listing liteservers (ton.org/global.config.json), for liteserver reads",
    )


class WorkerSettings(RoleSettings, ChainAccess, TlsTrust):
    """A GPU (or CPU) operator's node: engines it serves and the proxies it dials."""

    model_config = SettingsConfigDict(env_prefix="COCOON_WORKER_")

    proxies: list[str] = Field(
        default_factory=lambda: ["ws://127.0.0.1:8700/v1/worker/connect"],
        description="proxy WebSocket URLs to dial (the worker needs no public IP); with registry set, the "
        "registry's proxies are dialled instead",
    )
    registry: str | None = Field(
        None,
        description="the network's registry contract: with chain_url set, dial proxy_count of the proxies it lists "
        "(re-read every proxy_refresh_s) instead of proxies",
    )
    proxy_count: int = Field(2, ge=1, le=64, description="proxies from the registry this worker serves at once")
    proxy_repick_s: float = Field(
        60.0, gt=0, description="a registry proxy unreachable this many seconds is swapped for another listed one"
    )
    proxy_refresh_s: float = Field(30.0, gt=0, description="seconds between reads of the registry's proxies")
    engines: list[EngineSettings] = Field(
        default_factory=lambda: [EngineSettings()], description="models this worker serves"
    )
    slots: int = Field(2, ge=1, le=1024, description="jobs run at once; more wait in the worker's queue")
    max_queue: int = Field(64, ge=0, description="jobs allowed to wait for a slot before the worker says busy")
    chunk_pad_bytes: int = Field(
        128, ge=0, le=65536, description="pad sealed chunks to multiples of this many bytes (0: off): sizes hide tokens"
    )
    chunk_coalesce_ms: float = Field(
        0.0, ge=0, le=1000, description="after the first text, merge the text of this many ms into one chunk (0: off)"
    )
    price_coefficient: int = Field(1000, ge=1, description="price multiplier, 1000 = 1x the registry price")
    region: str = Field("", description="region label clients may route by, e.g. eu-west")
    keys_file: Path = Field(
        default_factory=lambda: cocoon_home() / "worker" / "keys.json",
        description="node keys (made on first start; inside a TEE they never leave it)",
    )
    attestation: Literal["auto", "simulated", "tdx", "sev-snp"] = Field(
        "auto",
        description="attestation provider: auto picks the TEE configfs-tsm names (TDX, SEV-SNP), else the "
        "simulated dev authority when dev_attestation_url is set",
    )
    tsm_root: Path = Field(
        Path("/sys/kernel/config/tsm/report"), description="configfs-tsm report directory the evidence comes from"
    )
    tdx_pccs_url: str = Field(
        "https://api.trustedservices.intel.com",
        description="where TDX collateral is fetched (Intel PCS, or your PCCS); cached under ~/.cache/cocoon",
    )
    gpu_attestation: int = Field(
        0, ge=0, le=8, description="NVIDIA GPUs (in confidential-computing mode) whose evidence the worker presents"
    )
    dev_attestation_url: str | None = Field(
        None,
        description="simulated attestation only: the dev authority that signs this worker's quotes (`cocoon up` "
        "serves one on loopback and sets it); the authority key never leaves that process",
    )
    status_port: int = Field(
        0, ge=0, le=65535, description="serve /healthz, /readyz and /metrics on this port for monitoring (0: off)"
    )
    status_host: str = Field("127.0.0.1", description="address the status endpoints listen on")
    heartbeat_interval: float = Field(0.5, gt=0, description="seconds between heartbeats")
    reconnect_max_backoff: float = Field(10.0, gt=0, description="cap of the reconnect backoff, seconds")
    wallet_file: Path = Field(
        default_factory=lambda: cocoon_home() / "worker" / "wallet.json",
        description="payout wallet key (made on first use); proxies pay the worker's share to its address",
    )
    chain_url: str | None = Field(None, description="toncenter v2 API, for `cocoon worker claim`")
    chaos_bad_receipts: Literal["", "response-digest", "signature", "inflated-tokens"] = Field(
        "",
        description="TEST AND CHAOS ONLY: sign receipts that must fail the client's check (a wrong response "
        "digest, or a key other than the attested one), or that overstate the tokens (signed with the attested "
        "key), to prove clients pay nothing for them and no charge exceeds its reservation",
    )
    chaos_serve_model_path: Path | None = Field(
        None,
        description="TEST AND CHAOS ONLY: load this GGUF for every llamacpp engine while attesting (and signing "
        "receipts for) the configured model's weights hash, as a worker cheating with a cheaper model would; "
        "proves canaries catch it",
    )


class ProxySettings(RoleSettings, ChainAccess, TlsServing):
    """The router and cashier: directory of workers, routing, relaying sealed bytes."""

    model_config = SettingsConfigDict(env_prefix="COCOON_PROXY_")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8700, ge=0, le=65535, description="port for clients, workers, /metrics")
    policy: AttestationPolicy = Field(
        default_factory=AttestationPolicy, description="attestation policy workers must satisfy"
    )
    heartbeat_timeout: float = Field(2.0, gt=0, description="drop a worker silent for this many seconds")
    first_byte_timeout: float = Field(30.0, gt=0, description="seconds a worker may take to its first chunk")
    chunk_timeout: float = Field(30.0, gt=0, description="seconds allowed between two chunks")
    dispatch_timeout: float = Field(5.0, gt=0, description="seconds allowed to hand a job to a worker's socket")
    reputation_half_life_s: float = Field(
        900.0, gt=0, description="evidence about a worker loses half its weight in this many seconds"
    )
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest sealed request accepted")
    data_dir: Path = Field(default_factory=lambda: cocoon_home() / "proxy", description="store and keys of the proxy")
    store_url: str | None = Field(
        None, description="database for the books: sqlite:///path or postgresql://...; empty: SQLite in data_dir"
    )
    chain_url: str | None = Field(
        None, description="toncenter v2 API (devnet: http://127.0.0.1:8790); empty: a free proxy that bills nobody"
    )
    registry: str | None = Field(None, description="address of the registry contract (prices, proxy fee)")
    settle_min_amount: int = Field(10**9, ge=0, description="claim a channel once this many nanoton are unsettled")
    settle_max_age: float = Field(3600.0, gt=0, description="or once its oldest unsettled voucher is this old, s")
    settle_interval: float = Field(5.0, gt=0, description="seconds between checks for channels due to settle")
    unpaid_grace_s: float = Field(
        10.0, gt=0, description="a client with a receipt unpaid this long gets no new request until it pays"
    )
    credit_limit: int = Field(
        10**9,
        ge=0,
        description="nanoton a channel may hold at risk at once: requests in flight, receipts unpaid, and every "
        "receipt its client ever rejected (rejections use the limit up); past it the client gets 402",
    )
    channel_recheck_s: float = Field(
        30.0, gt=0, description="a client channel in use is read back from the chain this often (a close, a withdrawal)"
    )
    policy_from_chain: bool = Field(
        True,
        description="with chain_url and registry set, take the allowed measurements and models from the registry "
        "(re-read every policy_refresh_s; a worker it no longer admits is evicted) instead of policy",
    )
    policy_refresh_s: float = Field(30.0, gt=0, description="seconds between reads of the registry's policy")
    max_price_coefficient: int = Field(
        4000, ge=1, description="workers asking more than this price coefficient (1000 = 1x) are refused"
    )
    canary_rate: float = Field(
        0.02,
        ge=0,
        le=1,
        description="share of client requests followed by a canary (a sealed check request the proxy pays for "
        "itself) to a worker of the same model; 0 with canary_min_interval_s 0 turns canaries off",
    )
    canary_min_interval_s: float = Field(
        180.0, ge=0, description="and at least one canary per worker this often, seconds (0: only by rate)"
    )
    canary_window: int = Field(8, ge=1, le=256, description="canaries a worker is judged on (its last ones)")
    operator_key: str | None = Field(
        None,
        description="secret operators send as `Authorization: Bearer <key>` to read /v1/books and any channel; "
        "unset: only loopback callers may (clients always see their own channel by signing)",
    )


class ClientSettings(RoleSettings, ChainAccess, TlsServing, TlsTrust):
    """The app developer's side: the OpenAI-compatible sidecar and SDK defaults."""

    model_config = SettingsConfigDict(env_prefix="COCOON_CLIENT_")

    host: str = Field("127.0.0.1", description="sidecar listen address")
    port: int = Field(8080, ge=0, le=65535, description="sidecar port (OpenAI base URL: http://host:port/v1)")
    proxy_url: str = Field("http://127.0.0.1:8700", description="proxy base URL")
    proxy_urls: list[str] = Field(
        default_factory=list,
        description="several proxy base URLs (used instead of proxy_url when set): each request goes to the "
        "healthiest, and moves to another when one fails before its first byte",
    )
    proxies_from_registry: bool = Field(
        False,
        description="with registry and chain_url set, use the proxies the registry lists (their endpoints), "
        "re-read every proxy_refresh_s, instead of proxy_url / proxy_urls",
    )
    proxy_refresh_s: float = Field(
        60.0, gt=0, description="seconds between reads of the registry's proxies (with proxies_from_registry)"
    )
    max_proxies: int = Field(
        8,
        ge=1,
        le=64,
        description="registry proxies the client uses at most (with proxies_from_registry): a connection and a "
        "channel each; those held stay, then the registry's order",
    )
    policy: AttestationPolicy = Field(
        default_factory=AttestationPolicy, description="attestation policy workers must satisfy"
    )
    candidates: int = Field(3, ge=1, le=16, description="workers each request is sealed to (failover set)")
    timeout: float = Field(120.0, gt=0, description="default request timeout, seconds (COCOON's `timeout`)")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_prompt_chars: int = Field(
        1024 * 1024,
        ge=1,
        description="longest prompt accepted, in characters (all messages, or all embedding inputs, together); "
        "a longer one is a 413 before anything is sealed",
    )
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when a request leaves it out")
    api_key: str | None = Field(
        None,
        description="one shared secret apps must send as a bearer token, with no budget; API keys "
        "(`cocoon client keys create`, require_keys) replace it and refuse to start beside it",
    )
    require_keys: bool = Field(
        False,
        description="every OpenAI endpoint needs one of the sidecar's API keys (`cocoon client keys`) even while "
        "none exists; once one exists, or on a host other than loopback, they are needed anyway",
    )
    data_dir: Path = Field(
        default_factory=lambda: cocoon_home() / "client",
        description="the sidecar's store: API keys (hashed), their budgets, reservations and usage; and the "
        "secret salt of its prefix hashes and prompt-cache scope (prefix-salt.json), kept across restarts",
    )
    store_url: str | None = Field(
        None,
        description="database of the API keys: sqlite:///path or postgresql://... (sidecars sharing keys); "
        "empty: SQLite keys.sqlite3 in data_dir",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="web origins (e.g. http://localhost:3000) whose pages may call the sidecar; requests with any "
        "other Origin header are refused, so a web page cannot spend the deposit through the user's browser",
    )
    chain_url: str | None = Field(
        None, description="toncenter v2 API to read prices and pay from; empty: use only free proxies"
    )
    registry: str | None = Field(
        None,
        description="the network's registry contract: with chain_url set, workers are judged by its allowed "
        "measurements and models (re-read every policy_refresh_s) instead of policy",
    )
    policy_refresh_s: float = Field(30.0, gt=0, description="seconds between reads of the registry's policy")
    wallet_file: Path = Field(
        default_factory=lambda: cocoon_home() / "client" / "wallet.json",
        description="the client's wallet key: pays deposits and signs vouchers (made on first use)",
    )
    max_coefficient: int = Field(
        4000, ge=1, description="never pay a worker whose price coefficient is above this (1000 = 1x; COCOON's 4x)"
    )

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> ClientSettings:
        if self.api_key and self.require_keys:
            raise ValueError("set api_key or require_keys, not both: API keys replace the shared api_key")
        return self
