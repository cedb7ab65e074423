"""``cocoon worker doctor``'s checks on a machine the test makes up: a fake configfs-tsm, a PATH with or without
an ``nvidia-smi``, a RAM reading monkeypatched small, a closed port for a proxy. Each finding says what to do."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.attestation import tsm
from cocoon.config import WorkerSettings
from cocoon.worker import doctor, host
from tests.helpers.tsm import FakeTsm


def settings(tmp_path: Path, **options: object) -> WorkerSettings:
    base: dict[str, object] = {
        "keys_file": tmp_path / "keys.json",
        "wallet_file": tmp_path / "wallet.json",
        "tsm_root": tmp_path / "no-tsm",
    }
    return WorkerSettings(**(base | options))  # type: ignore[arg-type]


@pytest.fixture
def configfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTsm]:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    kernel = FakeTsm(root)
    monkeypatch.setattr(tsm, "_make_entry", kernel.make_entry)
    monkeypatch.setattr(tsm, "_remove_entry", kernel.remove_entry)
    yield kernel


@pytest.mark.parametrize(("provider", "name"), [("tdx_guest", "Intel TDX"), ("sev_guest", "AMD SEV-SNP")])
async def test_tee_names_the_provider_configfs_tsm_reports(
    configfs: FakeTsm, tmp_path: Path, provider: str, name: str
) -> None:
    configfs.provider = provider
    [finding] = await doctor.check_tee(settings(tmp_path, tsm_root=configfs.root), [])
    assert finding.status == "ok" and name in finding.message
    assert configfs.removed == configfs.entries  # the probe's entry is gone again


async def test_no_tee_and_no_dev_authority_is_a_failure_that_says_where_to_run(tmp_path: Path) -> None:
    [finding] = await doctor._guarded("tee", 5, doctor.check_tee, settings(tmp_path), [])
    assert finding.status == "fail" and "TDX or SEV-SNP guest" in finding.message


async def test_simulated_attestation_is_a_warning_that_only_dev_networks_accept(tmp_path: Path) -> None:
    options = settings(tmp_path, dev_attestation_url="http://127.0.0.1:1/quote")
    [finding] = await doctor.check_tee(options, [])
    assert finding.status == "warn" and "allow_simulated" in finding.fix


async def test_a_machine_without_nvidia_smi_has_no_gpu_line_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    [finding] = await doctor.check_gpu(settings(tmp_path), [])
    assert finding.status == "warn" and "no NVIDIA GPU" in finding.message
    [wanted] = await doctor.check_gpu(settings(tmp_path, gpu_attestation=1), [])
    assert wanted.status == "fail" and "gpu_attestation" in wanted.fix


def fake_nvidia_smi(folder: Path, cc: str, ready: str) -> None:
    """An ``nvidia-smi`` answering the three queries the doctor makes, as a Hopper GPU in a CC guest does."""
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *query-gpu*) echo "0, NVIDIA H100 80GB HBM3, 81559";;\n'
        f'  *-grs*) echo "Confidential Compute GPUs Ready state: {ready}";;\n'
        f'  *-f*) echo "CC status: {cc}";;\n'
        "esac\n"
    )
    script.chmod(0o755)


async def test_a_gpu_in_cc_mode_and_ready_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, "ON", "ready")
    monkeypatch.setenv("PATH", str(tmp_path))
    found = await doctor.check_gpu(settings(tmp_path, gpu_attestation=1), [])
    assert [f.status for f in found] == ["ok", "ok"]
    assert "H100" in found[0].message and "79.6 GiB" in found[0].message
    assert "confidential computing on" in found[1].message


async def test_a_gpu_with_cc_off_cannot_present_evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, "OFF", "not-ready")
    monkeypatch.setenv("PATH", str(tmp_path))
    found = await doctor.check_gpu(settings(tmp_path, gpu_attestation=1), [])
    assert found[1].status == "fail" and "--set-cc-mode=on" in found[1].fix


async def test_a_model_bigger_than_the_ram_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "big.gguf"
    gguf.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(host, "ram_available_bytes", lambda: 1024)
    engine = {"kind": "llamacpp", "model": "big", "model_path": str(gguf)}
    [finding] = await doctor.check_memory(settings(tmp_path, engines=[engine]), [])
    assert finding.status == "fail" and "GGUF is 4.0 KiB" in finding.message
    assert "but 1.0 KiB is available" in finding.message and "smaller quantisation" in finding.fix


async def test_a_model_that_fits_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "small.gguf"
    gguf.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(host, "ram_available_bytes", lambda: 2**30)
    engine = {"kind": "llamacpp", "model": "small", "model_path": str(gguf)}
    [finding] = await doctor.check_memory(settings(tmp_path, engines=[engine]), [])
    assert finding.status == "ok"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nothing listens there


async def test_an_unreachable_proxy_fails_without_hiding_the_other_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/v1/worker/connect"
    monkeypatch.setenv("PATH", str(tmp_path))
    options = settings(tmp_path, proxies=[url], engines=[{"kind": "synthetic", "model": "synthetic"}])
    findings = await doctor.examine(options)
    [proxy] = [f for f in findings if f.check == "proxy"]
    assert proxy.status == "fail" and "nothing listens" in proxy.message and proxy.fix
    assert {f.check for f in findings} == {"tee", "gpu", "memory", "engine", "proxy", "wallet", "price"}
    assert not doctor.can_earn(findings)


async def test_a_check_that_breaks_is_its_own_failure(tmp_path: Path) -> None:
    async def broken(_settings: WorkerSettings, _proxies: list[str]) -> list[doctor.Finding]:
        raise RuntimeError("surprise")

    [finding] = await doctor._guarded("gpu", 5, broken, settings(tmp_path), [])
    assert finding.status == "fail" and "RuntimeError: surprise" in finding.message


def test_ram_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    assert host.ram_available_bytes(meminfo) == 8_000_000 * 1024


async def test_the_price_is_the_registrys_times_the_coefficient_less_the_fee(tmp_path: Path) -> None:
    from cocoon.worker.network_checks import _price_finding

    pricing = {"m": {"prompt": 1_000_000, "cached": 0, "completion": 2_000_000}}
    options = settings(tmp_path, price_coefficient=1500)
    finding = await _price_finding("m", "http://proxy", {"proxy_fee_bps": 500}, pricing, options)
    # 2 000 000 nanoton per million completion tokens x1.5 = 3 000 000, less 5% = 2 850 000
    assert finding.status == "ok" and "2850000 nanoton per million completion tokens" in finding.message
    assert "1425000 per million prompt tokens" in finding.message and "x1.5" in finding.message
    unknown = await _price_finding("other", "http://proxy", {"proxy_fee_bps": 500}, pricing, options)
    assert unknown.status == "warn" and "chain_url" in unknown.fix
