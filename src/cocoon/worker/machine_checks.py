"""The doctor's checks of the machine itself: its TEE (configfs-tsm and the provider it names), its GPUs and
their confidential-computing mode, its memory against each model's size, and each engine (an upstream that
answers ``/models``, a GGUF that loads in llama.cpp)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from cocoon.attestation.collect import resolve_provider
from cocoon.config import WorkerSettings
from cocoon.engines import EngineSettings, build_engine
from cocoon.engines.bundled import bundled_gguf
from cocoon.errors import CocoonError
from cocoon.worker import host
from cocoon.worker.findings import HTTP_TIMEOUT_S, Finding, Status, json_body, size_text, verify

RAM_HEADROOM = 1.2  # a GGUF needs its size and then some: KV cache, buffers, the process itself


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
    found = [Finding("gpu", "ok", f"GPU {g.index}: {g.name}, {size_text(g.memory_bytes)} VRAM") for g in report.gpus]
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
                    f"{engine.model}: its GGUF is {size_text(size)}; with the engines before it this worker needs "
                    f"~{size_text(need)} of RAM but {size_text(available)} is available",
                    "free memory, serve a smaller quantisation, or fewer engines on this machine",
                )
            )
        else:
            found.append(
                Finding("memory", "ok", f"{engine.model}: GGUF {size_text(size)}, {size_text(available)} RAM available")
            )
    return found


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
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify(settings)) as http:
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
    served = [str(m.get("id")) for m in json_body(response).get("data", []) if isinstance(m, dict)]
    if wanted not in served:
        return Finding(
            "engine",
            "fail",
            f"{engine.model}: the upstream at {base} serves {served}, not {wanted!r}",
            "set upstream_model to one of them",
        )
    return Finding("engine", "ok", f"{engine.model}: the upstream at {base} serves {wanted!r}")
