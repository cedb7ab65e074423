"""``cocoon worker doctor``: what this machine can serve and what it still lacks to earn, one finding per check.

Checks, each a small coroutine under its own timeout: the TEE (configfs-tsm and its provider), the GPUs and
their confidential-computing mode, memory against each model's size, each engine (an upstream's ``/models``,
a GGUF that loads), each proxy (TCP, then its ``/healthz``), the payout wallet (and its balance on chain), and
the price each proxy's network would pay. A check that fails, times out or breaks becomes a ✗ finding of its
own; it never hides the others. The worker can earn when no finding is a failure.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from cocoon.attestation.collect import resolve_provider
from cocoon.chain import TON
from cocoon.chain.address import address_text, parse_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.pricing import COEFFICIENT_ONE, PER_MILLION, Prices, cost_of, split
from cocoon.chain.registry import Registry
from cocoon.config import WorkerSettings
from cocoon.engines import EngineSettings, build_engine
from cocoon.engines.bundled import bundled_gguf
from cocoon.errors import CocoonError
from cocoon.protocol.tls import trust_context
from cocoon.worker import host
from cocoon.worker.discovery import registry_worker_urls
from cocoon.worker.earnings import payout_wallet, proxy_http_url

log = logging.getLogger("cocoon.worker.doctor")

Status = Literal["ok", "warn", "fail"]
HTTP_TIMEOUT_S = 5.0
RAM_HEADROOM = 1.2  # a GGUF needs its size and then some: KV cache, buffers, the process itself


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the doctor's answer: what was checked, how it stands, and what to do when it is not ok."""

    check: str
    status: Status
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix}


def can_earn(findings: list[Finding]) -> bool:
    """Whether nothing the doctor found stops this worker from serving and being paid."""
    return all(f.status != "fail" for f in findings)


Check = Callable[[WorkerSettings, list[str]], Awaitable[list[Finding]]]


async def examine(settings: WorkerSettings) -> list[Finding]:
    """Every check's findings, in a fixed order, the slow ones run at once."""
    proxies, listing = await _proxy_urls(settings)
    checks: list[tuple[str, float, Check]] = [
        ("tee", 10, check_tee),
        ("gpu", 30, check_gpu),
        ("memory", 300, check_memory),
        ("engine", 300, check_engines),
        ("proxy", 15, check_proxies),
        ("wallet", 20, check_wallet),
        ("price", 30, check_prices),
    ]
    results = await asyncio.gather(*(_guarded(name, t, check, settings, proxies) for name, t, check in checks))
    return [*listing, *(f for found in results for f in found)]


async def _guarded(
    name: str, timeout: float, check: Check, settings: WorkerSettings, proxies: list[str]
) -> list[Finding]:
    """``check``'s findings, or one ✗ saying how it broke: a check never takes the others down with it."""
    try:
        async with asyncio.timeout(timeout):
            return await check(settings, proxies)
    except TimeoutError:
        return [Finding(name, "fail", f"the check did not finish in {timeout:g}s", "run it again; see the log")]
    except CocoonError as exc:
        return [Finding(name, "fail", exc.message)]
    except Exception as exc:  # a bug or a surprise of this machine: shown as the check's failure, and logged
        log.exception("doctor check %s broke", name)
        return [Finding(name, "fail", f"the check broke: {type(exc).__name__}: {exc}", "report it with the log")]


async def _proxy_urls(settings: WorkerSettings) -> tuple[list[str], list[Finding]]:
    """The proxy sockets this worker would dial (the registry's when it has one), and a finding if that failed."""
    if not (settings.registry and settings.chain_url):
        return list(settings.proxies), []
    try:
        async with asyncio.timeout(20):
            return await registry_worker_urls(settings, settings.registry), []
    except (CocoonError, OSError, httpx.HTTPError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, CocoonError) else f"{type(exc).__name__}: {exc}"
        fix = "check chain_url and registry, or list proxies explicitly"
        return [], [Finding("proxy", "fail", f"cannot read the registry's proxies: {reason}", fix)]


# ---- the machine ---------------------------------------------------------------------------------------


async def check_tee(settings: WorkerSettings, _proxies: list[str]) -> list[Finding]:
    dev = bool(settings.dev_attestation_url)
    root = settings.tsm_root
    provider = await asyncio.to_thread(resolve_provider, settings.attestation, tsm_root=root, dev_authority=dev)
    if provider == "simulated":
        return [
            Finding(
                "tee",
                "warn",
                f"no TEE: simulated attestation from the dev authority at {settings.dev_attestation_url} "
                f"(no configfs-tsm at {settings.tsm_root})",
                "only dev networks (allow_simulated) accept it; to earn on a real network run in a TDX or SEV-SNP "
                "guest",
            )
        ]
    name = {"tdx": "Intel TDX", "sev-snp": "AMD SEV-SNP"}[provider]
    return [Finding("tee", "ok", f"{name} guest (configfs-tsm at {settings.tsm_root})")]


async def check_gpu(settings: WorkerSettings, _proxies: list[str]) -> list[Finding]:
    wanted = settings.gpu_attestation
    binary = host.nvidia_smi()
    if binary is None:
        status: Status = "fail" if wanted else "warn"
        fix = "install the NVIDIA driver (nvidia-smi) or set gpu_attestation = 0" if wanted else ""
        return [Finding("gpu", status, "no NVIDIA GPU (nvidia-smi is not on PATH): CPU engines only", fix)]
    report = await host.read_gpus(binary)
    if not report.gpus:
        return [Finding("gpu", "fail" if wanted else "warn", "nvidia-smi lists no GPU", "check the driver")]
    found = [Finding("gpu", "ok", f"GPU {g.index}: {g.name}, {_gib(g.memory_bytes)} VRAM") for g in report.gpus]
    if report.cc_mode in ("on", "devtools") and report.ready is not False:
        devtools = report.cc_mode == "devtools"
        found.append(
            Finding(
                "gpu",
                "warn" if devtools else "ok",
                f"confidential computing {report.cc_mode}"
                + ("" if report.ready is None else ", GPUs ready")
                + (": debugging is open, verifiers may refuse it" if devtools else ""),
                "set the CC mode to on (nvidia_gpu_tools.py --set-cc-mode=on)" if devtools else "",
            )
        )
    elif report.cc_mode in ("on", "devtools"):
        found.append(
            Finding(
                "gpu",
                "fail",
                "confidential computing is on but the GPUs are not ready",
                "set the ready state: nvidia-smi conf-compute -srs 1",
            )
        )
    else:
        mode = "off" if report.cc_mode == "off" else "unknown (this driver has no `nvidia-smi conf-compute`)"
        found.append(
            Finding(
                "gpu",
                "fail" if wanted else "warn",
                f"confidential computing is {mode}: GPU evidence cannot be presented",
                "turn CC mode on (NVIDIA gpu-admin-tools: nvidia_gpu_tools.py --set-cc-mode=on) and set "
                "gpu_attestation to the GPU count",
            )
        )
    if wanted > len(report.gpus):
        found.append(
            Finding(
                "gpu",
                "fail",
                f"gpu_attestation = {wanted} but {len(report.gpus)} GPUs are present",
                f"set gpu_attestation = {len(report.gpus)}",
            )
        )
    return found


def gguf_path(engine: EngineSettings) -> Path:
    """The GGUF a llamacpp engine loads: its ``model_path``, or the bundled file of its model (assembled once)."""
    return engine.model_path if engine.model_path is not None else bundled_gguf(engine.model, progress=False)


async def check_memory(settings: WorkerSettings, _proxies: list[str]) -> list[Finding]:
    available = host.ram_available_bytes()
    found, total = [], 0
    for engine in settings.engines:
        if engine.kind == "synthetic":
            found.append(Finding("memory", "ok", f"{engine.model}: synthetic, needs no memory"))
            continue
        if engine.kind == "openai_upstream":
            found.append(
                Finding("memory", "ok", f"{engine.model}: held by the upstream at {engine.upstream_url} (its VRAM)")
            )
            continue
        path = await asyncio.to_thread(gguf_path, engine)
        if not path.is_file():
            found.append(Finding("memory", "fail", f"{engine.model}: {path} is not a file", "fix model_path"))
            continue
        size = path.stat().st_size
        total += size
        need = int(total * RAM_HEADROOM)
        if need > available:
            found.append(
                Finding(
                    "memory",
                    "fail",
                    f"{engine.model}: its GGUF is {_gib(size)}; with the engines before it this worker needs "
                    f"~{_gib(need)} of RAM but {_gib(available)} is available",
                    "free memory, serve a smaller quantisation, or fewer engines on this machine",
                )
            )
        else:
            found.append(Finding("memory", "ok", f"{engine.model}: GGUF {_gib(size)}, {_gib(available)} RAM available"))
    return found


# ---- the engines ---------------------------------------------------------------------------------------


async def check_engines(settings: WorkerSettings, _proxies: list[str]) -> list[Finding]:
    return [await _engine_finding(engine, settings) for engine in settings.engines]


async def _engine_finding(engine: EngineSettings, settings: WorkerSettings) -> Finding:
    if engine.kind == "synthetic":
        return Finding("engine", "ok", f"{engine.model}: synthetic (benchmarks only; no network allows its hash)")
    if engine.kind == "openai_upstream":
        return await _upstream_finding(engine, settings)
    loaded = build_engine(engine.model_copy(update={"parallel": 1, "embeddings": False}))
    try:
        await loaded.start()
        digest = loaded.info.model_hash
    except CocoonError as exc:
        return Finding("engine", "fail", f"{engine.model}: llama.cpp cannot load it: {exc.message}", "fix model_path")
    finally:
        await loaded.close()
    return Finding("engine", "ok", f"{engine.model}: the GGUF loads in llama.cpp (sha256 {digest[:16]}…)")


async def _upstream_finding(engine: EngineSettings, settings: WorkerSettings) -> Finding:
    base = (engine.upstream_url or "").rstrip("/")
    wanted = engine.upstream_model or engine.model
    headers = {"authorization": f"Bearer {engine.upstream_api_key}"} if engine.upstream_api_key else {}
    fix = f"start the upstream server (vLLM, SGLang, …) or fix upstream_url ({base or 'unset'})"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=_verify(settings)) as http:
            response = await http.get(f"{base}/models", headers=headers)
    except httpx.HTTPError as exc:
        return Finding("engine", "fail", f"{engine.model}: the upstream at {base} does not answer: {exc!r}", fix)
    if response.status_code != 200:
        return Finding(
            "engine",
            "fail",
            f"{engine.model}: GET {base}/models answered {response.status_code}",
            "check upstream_api_key and that upstream_url ends in /v1",
        )
    served = [str(m.get("id")) for m in _json(response).get("data", []) if isinstance(m, dict)]
    if wanted not in served:
        return Finding(
            "engine",
            "fail",
            f"{engine.model}: the upstream at {base} serves {served}, not {wanted!r}",
            "set upstream_model to one of them",
        )
    return Finding("engine", "ok", f"{engine.model}: the upstream at {base} serves {wanted!r}")


# ---- the network ---------------------------------------------------------------------------------------


async def check_proxies(settings: WorkerSettings, proxies: list[str]) -> list[Finding]:
    if not proxies:
        return [Finding("proxy", "fail", "no proxy to dial", "set proxies, or registry with chain_url")]
    return list(await asyncio.gather(*(_proxy_finding(url, settings) for url in proxies)))


async def _proxy_finding(url: str, settings: WorkerSettings) -> Finding:
    base = proxy_http_url(url)
    parts = urlsplit(base)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(HTTP_TIMEOUT_S):
            _, writer = await asyncio.open_connection(parts.hostname, port)
        writer.close()
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return Finding(
            "proxy",
            "fail",
            f"{url}: nothing listens at {parts.hostname}:{port} ({reason})",
            "check the proxy URL, the firewall's outbound rules, and that the proxy runs",
        )
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=_verify(settings)) as http:
            response = await http.get(f"{base}/healthz")
    except httpx.HTTPError as exc:
        return Finding("proxy", "fail", f"{url}: {base}/healthz failed: {exc!r}", "check TLS (tls_ca_file) and the URL")
    if response.status_code != 200:
        status = response.status_code
        return Finding("proxy", "fail", f"{url}: {base}/healthz answered {status}", "is it a cocoon proxy?")
    body = _json(response)
    return Finding(
        "proxy", "ok", f"{url}: answers (cocoon {body.get('version', '?')}, {body.get('workers', '?')} workers)"
    )


async def check_wallet(settings: WorkerSettings, _proxies: list[str]) -> list[Finding]:
    path = settings.wallet_file
    if not path.is_file():
        return [
            Finding(
                "wallet",
                "warn",
                f"no payout wallet at {path} yet",
                "the worker makes it on first start; back it up: it is where proxies pay you",
            )
        ]
    address = payout_wallet(settings).address  # the file exists: nothing is made
    shown = address_text(address, bounceable=False)
    if not settings.chain_url:
        return [
            Finding("wallet", "ok", f"payout wallet {shown} ({path})"),
            Finding("wallet", "warn", "no chain_url: balance not read", "set chain_url to read it and to claim"),
        ]
    async with chain_for(settings) as chain:
        balance = await chain.get_balance(address)
    return [Finding("wallet", "ok", f"payout wallet {shown}: {balance / TON:g} TON on chain")]


async def check_prices(settings: WorkerSettings, proxies: list[str]) -> list[Finding]:
    found: list[Finding] = []
    for url in proxies:
        base = proxy_http_url(url)
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=_verify(settings)) as http:
                terms = await http.get(f"{base}/v1/payment")
                listed = await http.get(f"{base}/v1/models") if terms.status_code == 200 else None
        except httpx.HTTPError as exc:
            found.append(Finding("price", "warn", f"{base}: prices not read ({type(exc).__name__})"))
            continue
        if terms.status_code == 404:
            found.append(Finding("price", "warn", f"{base} is a free proxy: it relays jobs and pays nothing"))
            continue
        payment = _json(terms)
        pricing = {str(m.get("id")): m.get("pricing") for m in _json(listed).get("data", [])} if listed else {}
        for engine in settings.engines:
            found.append(await _price_finding(engine.model, base, payment, pricing, settings))
    return found


async def _price_finding(
    model: str, base: str, payment: dict[str, Any], pricing: dict[str, Any], settings: WorkerSettings
) -> Finding:
    prices: Prices | None = None
    if settings.chain_url and payment.get("registry"):
        async with chain_for(settings) as chain:
            entry = await Registry(chain, parse_address(str(payment["registry"]))).get_model(model)
        if entry is None:
            return Finding(
                "price",
                "fail",
                f"{model}: the registry prices no such model, so no request to it is paid",
                "serve a model the registry lists (`cocoon chain policy`), or ask its owner to add it",
            )
        prices = Prices(entry.price_prompt, entry.price_cached, entry.price_completion)
    elif isinstance(pricing.get(model), dict):
        table = pricing[model]
        prices = Prices(int(table["prompt"]), int(table["cached"]), int(table["completion"]))
    if prices is None:
        return Finding("price", "warn", f"{model}: prices unknown at {base}", "set chain_url to read the registry")
    fee = int(payment.get("proxy_fee_bps", 0))
    coefficient = settings.price_coefficient
    prompt = split(cost_of(PER_MILLION, 0, 0, prices, coefficient).total, fee)[0]
    completion = split(cost_of(0, 0, PER_MILLION, prices, coefficient).total, fee)[0]
    return Finding(
        "price",
        "ok",
        f"{model} at {base}: {completion} nanoton per million completion tokens, {prompt} per million prompt "
        f"tokens (price x{coefficient / COEFFICIENT_ONE:g}, after the proxy's {fee / 100:g}% fee)",
    )


def _verify(settings: WorkerSettings) -> ssl.SSLContext:
    return trust_context(settings.tls_ca_file)


def _json(response: httpx.Response | None) -> dict[str, Any]:
    if response is None:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"
