"""configfs-tsm evidence collection, on a fake configfs tree in tmp_path.

The gap, named: there is no real configfs here. On a guest, ``mkdir`` of an entry makes the kernel create its
attribute files and ``rmdir`` drops them; a plain directory does neither, so ``FakeTsm`` stands in for exactly
those two calls (``tsm._make_entry`` / ``tsm._remove_entry``). Its ``outblob`` is a FIFO: as on the kernel, the
report is produced when the reader opens it, from whatever ``inblob`` holds then, and ``generation`` counts the
writes. What the kernel's TDX/SNP drivers put in the report is not exercised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.attestation import tsm
from cocoon.errors import AttestationFailed
from tests.helpers.tsm import FakeTsm


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTsm]:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    kernel = FakeTsm(root)
    monkeypatch.setattr(tsm, "_make_entry", kernel.make_entry)
    monkeypatch.setattr(tsm, "_remove_entry", kernel.remove_entry)
    yield kernel
    assert list(root.iterdir()) == [], "an entry was left behind"


def test_report_commits_to_the_zero_padded_report_data(fake: FakeTsm) -> None:
    report = tsm.collect_report(b"nonce", root=fake.root, expected_provider="tdx_guest")
    assert report.outblob == b"REPORT(" + b"nonce" + bytes(59) + b")"
    assert report.provider == "tdx_guest"
    assert report.generation == 1
    assert report.auxblob is None


def test_each_report_uses_a_fresh_entry_that_is_removed_afterwards(fake: FakeTsm) -> None:
    tsm.collect_report(bytes(64), root=fake.root)
    tsm.collect_report(bytes(64), root=fake.root)
    assert len(set(fake.entries)) == 2
    assert fake.removed == fake.entries


def test_sev_snp_certificates_come_back_as_auxblob(fake: FakeTsm) -> None:
    fake.provider, fake.auxblob = "sev_guest", b"certificate table"
    report = tsm.collect_report(bytes(64), root=fake.root, expected_provider="sev_guest")
    assert report.auxblob == b"certificate table"


def test_report_data_longer_than_64_bytes_is_refused(fake: FakeTsm) -> None:
    with pytest.raises(AttestationFailed, match="65 bytes"):
        tsm.collect_report(bytes(65), root=fake.root)
    assert fake.entries == []


def test_another_provider_than_expected_is_refused(fake: FakeTsm) -> None:
    fake.provider = "sev_guest"
    with pytest.raises(AttestationFailed, match="provider is 'sev_guest', expected 'tdx_guest'"):
        tsm.collect_report(bytes(64), root=fake.root, expected_provider="tdx_guest")
    assert fake.removed == fake.entries


def test_a_racing_writer_makes_the_report_refused(fake: FakeTsm) -> None:
    fake.other_writes = 1
    with pytest.raises(AttestationFailed, match=r"written 2 times.*raced"):
        tsm.collect_report(bytes(64), root=fake.root)
    assert fake.removed == fake.entries


def test_missing_configfs_tsm_says_this_is_no_guest_and_how_to_mount(tmp_path: Path) -> None:
    with pytest.raises(AttestationFailed, match=r"no TDX/SEV-SNP guest.*mount -t configfs"):
        tsm.collect_report(bytes(64), root=tmp_path / "absent")


def test_permission_denied_says_to_run_as_root(fake: FakeTsm, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(entry: Path) -> None:
        raise PermissionError(13, "Permission denied", str(entry))

    monkeypatch.setattr(tsm, "_make_entry", denied)
    with pytest.raises(AttestationFailed, match=r"permission denied.*run the worker as root"):
        tsm.collect_report(bytes(64), root=fake.root)


@pytest.mark.parametrize(("provider", "kind"), [("tdx_guest", "tdx"), ("sev_guest", "sev-snp")])
def test_detect_provider_names_the_tee(fake: FakeTsm, provider: str, kind: str) -> None:
    fake.provider = provider
    assert tsm.detect_provider(fake.root) == kind
    assert fake.removed == fake.entries


def test_detect_provider_is_none_without_configfs_tsm(tmp_path: Path) -> None:
    assert tsm.detect_provider(tmp_path / "absent") is None


def test_detect_provider_refuses_an_unsupported_provider(fake: FakeTsm) -> None:
    fake.provider = "arm_cca_guest"
    with pytest.raises(AttestationFailed, match="'arm_cca_guest' is not supported"):
        tsm.detect_provider(fake.root)
