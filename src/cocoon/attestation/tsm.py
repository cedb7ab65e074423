"""Evidence from the guest's own hardware through Linux configfs-tsm, shared by TDX and SEV-SNP guests.

The kernel (6.7+, ``CONFIG_TSM_REPORTS``) offers one interface for both: make a directory under
``/sys/kernel/config/tsm/report``, write 64 bytes of report data to its ``inblob``, read the quote (TDX) or
attestation report (SEV-SNP) from ``outblob``. This module only collects; ``tdx.py`` and the SNP verifier judge.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cocoon.errors import AttestationFailed

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
REPORT_DATA_BYTES = 64
PROVIDERS: dict[str, Literal["tdx", "sev-snp"]] = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}


@dataclass(frozen=True, slots=True)
class TsmReport:
    """What the kernel's TSM provider produced for one request."""

    provider: str  # "tdx_guest", "sev_guest", ...
    generation: int  # the entry's write count when outblob was read
    outblob: bytes  # the TDX quote or the SEV-SNP attestation report
    auxblob: bytes | None  # SEV-SNP: the certificate table the host supplied, if any; TDX: None


def collect_report(report_data: bytes, *, root: Path = DEFAULT_ROOT, expected_provider: str | None = None) -> TsmReport:
    """A fresh report committing to ``report_data`` (up to 64 bytes, zero-padded) from the configfs-tsm provider.

    Creates its own entry under ``root`` and removes it afterwards. Raises ``AttestationFailed`` when configfs-tsm
    is absent, access is denied, the provider is not ``expected_provider`` (``"tdx_guest"``, ``"sev_guest"``), the
    kernel fails the request, or another writer raced us on the entry (its generation moved by more than our one
    write). Nothing in the report is verified here. Blocking: the provider may take a while to answer.
    """
    if len(report_data) > REPORT_DATA_BYTES:
        raise AttestationFailed(f"report data is {len(report_data)} bytes; a TSM report holds at most 64")
    _require_configfs(root)
    entry = root / f"cocoon-{os.getpid()}-{secrets.token_hex(8)}"
    _create(entry, root)
    try:
        provider = _provider(entry)
        if expected_provider is not None and provider != expected_provider:
            raise AttestationFailed(
                f"configfs-tsm provider is {provider!r}, expected {expected_provider!r}: this guest is not the "
                "kind of TEE the worker is configured for; fix the attestation setting"
            )
        before = _generation(entry)
        _write(entry / "inblob", report_data.ljust(REPORT_DATA_BYTES, b"\x00"))
        outblob = _read(entry / "outblob")
        auxblob = _read(entry / "auxblob") if (entry / "auxblob").exists() else None
        after = _generation(entry)
        provider_after = _provider(entry)
    finally:
        _remove(entry)
    if provider_after != provider:
        raise AttestationFailed(f"configfs-tsm provider changed from {provider!r} to {provider_after!r} mid-request")
    if after != before + 1:
        raise AttestationFailed(
            f"configfs-tsm entry {entry} was written {after - before} times while we used it, not once: another "
            "process raced us and the report may not be ours; retry"
        )
    if not outblob:
        raise AttestationFailed(f"configfs-tsm provider {provider!r} returned an empty report")
    return TsmReport(provider, after, outblob, auxblob or None)


def detect_provider(root: Path = DEFAULT_ROOT) -> Literal["tdx", "sev-snp"] | None:
    """Which TEE this guest is, from its configfs-tsm provider; ``None`` when there is no configfs-tsm.

    Raises ``AttestationFailed`` when configfs-tsm exists but cannot be used (permission) or names a provider
    cocoon does not support, so that ``attestation = "auto"`` never falls back to simulated on real hardware.
    """
    if not root.is_dir():
        return None
    entry = root / f"cocoon-probe-{os.getpid()}-{secrets.token_hex(8)}"
    _create(entry, root)
    try:
        provider = _provider(entry)
    finally:
        _remove(entry)
    if provider not in PROVIDERS:
        raise AttestationFailed(
            f"configfs-tsm provider {provider!r} is not supported (supported: {', '.join(PROVIDERS)}); "
            "set the attestation provider explicitly"
        )
    return PROVIDERS[provider]


def _require_configfs(root: Path) -> None:
    if not root.is_dir():
        raise AttestationFailed(
            f"{root} does not exist: this machine is no TDX/SEV-SNP guest, or the kernel lacks configfs-tsm "
            "(CONFIG_TSM_REPORTS, Linux 6.7+), or configfs is not mounted: mount -t configfs none /sys/kernel/config"
        )


def _create(entry: Path, root: Path) -> None:
    try:
        _make_entry(entry)
    except PermissionError as exc:
        raise AttestationFailed(
            f"permission denied creating {entry}: run the worker as root or give it write access to {root}"
        ) from exc
    except OSError as exc:
        raise AttestationFailed(f"cannot create configfs-tsm entry {entry}: {exc}") from exc


def _make_entry(entry: Path) -> None:
    """mkdir in configfs: the kernel creates the entry's attribute files (a seam the tests stand in for)."""
    entry.mkdir(mode=0o700)


def _remove_entry(entry: Path) -> None:
    """rmdir in configfs: the kernel drops the entry with its attribute files (a seam the tests stand in for)."""
    entry.rmdir()


def _remove(entry: Path) -> None:
    try:
        _remove_entry(entry)
    except OSError as exc:
        # A leftover entry costs a little kernel memory and nothing else; the report (or its error) matters more.
        log.warning("could not remove configfs-tsm entry entry=%s error=%s", entry, exc)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError as exc:
        raise AttestationFailed(f"permission denied reading {path}: run the worker as root") from exc
    except OSError as exc:
        raise AttestationFailed(f"configfs-tsm failed reading {path}: {exc}") from exc


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except PermissionError as exc:
        raise AttestationFailed(f"permission denied writing {path}: run the worker as root") from exc
    except OSError as exc:
        raise AttestationFailed(f"configfs-tsm failed writing {path}: {exc}") from exc


def _provider(entry: Path) -> str:
    return _read(entry / "provider").decode(errors="replace").strip()


def _generation(entry: Path) -> int:
    text = _read(entry / "generation").decode(errors="replace").strip()
    if not text.isdigit():
        raise AttestationFailed(f"configfs-tsm generation of {entry} is {text!r}, not a number")
    return int(text)
