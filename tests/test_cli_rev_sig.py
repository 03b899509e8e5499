"""`pvreal rev sign` / `pvreal rev verify` on real files."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pki import NOW, chain, issue, key

from pvreal.cli import run
from pvreal.cli.rev import sig as cli_rev_sig
from pvreal.truststore import TrustError, load_truststore
from shared import canonical
from shared.signatures import parse_signature

REPO = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef" * 4
AT = ["--now", NOW.isoformat()]


def cli(*argv: str) -> int:
    """Run only this module's verbs, so other command groups cannot interfere."""
    parser = argparse.ArgumentParser(prog="pvreal rev")
    cli_rev_sig.register(parser.add_subparsers(dest="verb", required=True))
    return run(parser, [str(a) for a in argv])


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    root, inter, leaf = chain()
    paths = {
        "state": tmp_path / "state.json",
        "key": tmp_path / "leaf.key",
        "cert": tmp_path / "leaf.pem",
        "chain": tmp_path / "inter.pem",
        "trust": tmp_path / "trust",
    }
    state = {
        "#spec": "pantavisor-service-system@1",
        "app/run.json": {"name": "app"},
        "app/root.squashfs": SHA,
        "app/src.json": {"x": 1},
        "_config/app/etc/conf": SHA,
        "device.json": {"groups": []},
    }
    # pretty-printed on purpose: a failed sign must keep these exact bytes
    paths["state"].write_text(json.dumps(state, indent=4) + "\n")
    paths["key"].write_bytes(leaf.key_pem)
    paths["cert"].write_bytes(leaf.cert_pem)
    paths["chain"].write_bytes(inter.cert_pem)
    paths["trust"].mkdir()
    (paths["trust"] / "root.crt").write_bytes(root.cert_pem)
    return paths


def sign(files, *extra: str) -> int:
    return cli(
        "sign",
        files["state"],
        "--key",
        files["key"],
        "--cert",
        files["cert"],
        "--chain",
        files["chain"],
        *extra,
    )


def test_sign_part_then_verify(files, capsys):
    assert sign(files, "--part", "app") == 0
    data = files["state"].read_bytes()
    assert canonical.is_canonical(data)
    state = canonical.loads_object(data)
    header = parse_signature("_sigs/app.json", state["_sigs/app.json"]).header
    assert header["pvs"] == {
        "include": ["app/**", "_config/app/**"],
        "exclude": ["app/src.json", "_sigs/app.json"],
    }
    capsys.readouterr()
    assert cli("verify", files["state"], "--truststore", files["trust"], *AT, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["ok", "message", "protected", "excluded", "notseen", "signatures"]
    assert out["ok"] is True and out["message"] is None
    assert out["protected"] == ["_config/app/etc/conf", "app/root.squashfs", "app/run.json"]
    assert out["notseen"] == ["#spec", "device.json"]


def test_strict_mode_reports_uncovered_entries(files, capsys):
    assert sign(files, "--include", "app/**", "--exclude", "app/src.json", "--name", "apponly") == 0
    capsys.readouterr()
    assert (
        cli("verify", files["state"], "--truststore", files["trust"], *AT, "--mode", "strict") == 1
    )
    out = capsys.readouterr().out
    assert "State not fully covered by signatures (mode strict)" in out
    assert "not seen: _config/app/etc/conf" in out
    assert (
        cli("verify", files["state"], "--truststore", files["trust"], *AT, "--mode", "audit") == 0
    )


def test_tampered_state_fails_verify(files, capsys):
    assert sign(files, "--part", "app") == 0
    state = canonical.loads_object(files["state"].read_bytes())
    state["app/root.squashfs"] = "f" * 64
    files["state"].write_bytes(canonical.dump_bytes(state))
    capsys.readouterr()
    assert cli("verify", files["state"], "--truststore", files["trust"], *AT, "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["message"] == "Signature validation failed"
    assert "does not match" in out["signatures"][0]["error"]


def test_expired_certificate_fails_verify(files, capsys):
    assert sign(files, "--part", "app") == 0
    assert cli("verify", files["state"], "--truststore", files["trust"], "--now", "2031-01-01") == 1
    assert "expired" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["--part", "nothing"], id="selects-nothing"),
        pytest.param(["--part", "app", "--chain", "/nonexistent/ca.pem"], id="missing-chain"),
    ],
)
def test_sign_errors_leave_the_file_byte_identical(files, extra, capsys):
    before = files["state"].read_bytes()
    assert sign(files, *extra) == 1
    assert files["state"].read_bytes() == before
    assert "error" in capsys.readouterr().err
    assert [p.name for p in files["state"].parent.iterdir() if p.name.startswith(".state")] == []


def test_wrong_certificate_for_the_key_changes_nothing(files, capsys):
    before = files["state"].read_bytes()
    files["cert"].write_bytes(issue("someone else").cert_pem)
    assert sign(files, "--part", "app") == 1
    assert files["state"].read_bytes() == before
    assert "does not match the signing key" in capsys.readouterr().err


def test_bad_key_file_is_named(files, capsys):
    before = files["state"].read_bytes()
    files["key"].write_text("not a key")
    assert sign(files, "--part", "app") == 1
    assert files["state"].read_bytes() == before
    assert str(files["key"]) in capsys.readouterr().err


def test_invalid_state_json_is_named(files, capsys):
    files["state"].write_text('{"a": 1, "a": 2}')
    assert sign(files, "--part", "app") == 1
    err = capsys.readouterr().err
    assert str(files["state"]) in err and "duplicate" in err
    assert files["state"].read_text() == '{"a": 1, "a": 2}'


@pytest.mark.parametrize(
    "argv",
    [
        ["--include", "a/**"],  # no --name and no --part
        ["--part", "app", "--include", "a/**"],
        ["--name", "x", "--noconfig"],
    ],
)
def test_usage_errors_exit_2(files, argv):
    before = files["state"].read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        sign(files, *argv)
    assert exit_info.value.code == 2
    assert files["state"].read_bytes() == before


def test_public_key_signature_without_x5c(files, tmp_path, capsys):
    private = key("P-256", 7)
    (tmp_path / "k.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "pub.pem").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert cli("sign", files["state"], "--key", tmp_path / "k.pem", "--part", "app") == 0
    assert cli("verify", files["state"], "--pubkey", tmp_path / "pub.pem") == 0
    assert cli("verify", files["state"], "--truststore", files["trust"]) == 1


def test_oem_truststore_options(files, tmp_path):
    oem_root = issue("CLI OEM Root", ca=True)
    oem_leaf = issue("pv-oem-cli", issuer=oem_root)
    (tmp_path / "oem.key").write_bytes(oem_leaf.key_pem)
    (tmp_path / "oem.pem").write_bytes(oem_leaf.cert_pem)
    (tmp_path / "oem").mkdir()
    (tmp_path / "oem" / "oem-root.pem").write_bytes(oem_root.cert_pem)
    assert (
        cli(
            "sign",
            files["state"],
            "--key",
            tmp_path / "oem.key",
            "--cert",
            tmp_path / "oem.pem",
            "--part",
            "app",
        )
        == 0
    )
    base = ["verify", files["state"], "--truststore", files["trust"], *AT]
    assert cli(*base) == 1  # the default store does not know the OEM root
    assert cli(*base, "--oem-truststore", tmp_path / "oem", "--oem-name", "pv-oem-cli") == 0
    assert cli(*base, "--oem-truststore", tmp_path / "oem", "--oem-name", "other") == 1


def test_verify_reads_trail_directories_and_stdin(files, tmp_path, monkeypatch):
    assert sign(files, "--part", "app") == 0
    trail = tmp_path / "trails" / "3"
    (trail / ".pvr").mkdir(parents=True)
    (trail / ".pvr" / "json").write_bytes(files["state"].read_bytes())
    assert cli("verify", trail, "--truststore", files["trust"], *AT) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(files["state"].read_bytes())))
    assert cli("verify", "-", "--truststore", files["trust"], *AT) == 0


def test_truststore_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrustError, match="no certificate files"):
        load_truststore(empty)
    (empty / "junk.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(TrustError) as err:
        load_truststore(empty)
    assert err.value.source == str(empty / "junk.pem")
    with pytest.raises(TrustError, match="not found"):
        load_truststore(tmp_path / "missing")


def test_truststore_bundle_and_der(tmp_path):
    root, inter, _ = chain()
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_bytes(root.cert_pem + inter.cert_pem)
    assert len(load_truststore(bundle).certificates) == 2
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "root.cer").write_bytes(root.cert.public_bytes(serialization.Encoding.DER))
    assert load_truststore(tmp_path / "d").certificates == (root.cert,)


def test_real_conformance_state_verifies_from_the_command_line(conformance_dir, tmp_path):
    """awconnect.json as pvr signed it; its chain end (the leaf) is the only anchor we have."""
    state = canonical.loads_object((conformance_dir / "resources" / "awconnect.json").read_bytes())
    anchor = parse_signature("_sigs/awconnect.json", state["_sigs/awconnect.json"]).x5c[-1]
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "anchor.pem").write_bytes(anchor.public_bytes(serialization.Encoding.PEM))
    path = conformance_dir / "resources" / "awconnect.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pvreal",
            "rev",
            "verify",
            str(path),
            "--truststore",
            str(tmp_path / "trust"),
            "--now",
            "2023-01-01T00:00:00+00:00",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] is True and len(out["protected"]) == 9
