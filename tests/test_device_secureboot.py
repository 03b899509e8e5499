"""pvs@2 signatures on the real device (pantavisor.md §1.8, §3.4, §3.5, §7.2): the daemon checks
every state with `shared.signatures.verify_state`, its trust read from `--truststore` and
certificates checked at the wall clock. Intake refuses with 422 and the exact outcome string and
leaves nothing behind; LOCAL_RUN of a state that no longer verifies ends WONTGO; a try-boot of one
ends ERROR and rolls back. The first tests need no root (the verdict function itself)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from devicekit import Daemon, Revisions, need_device, tree_digest
from pki import issue

from pvreal.device.secureboot import TrustOptions, make_verifier, signature_problem
from shared import canonical
from shared.engine.config import Config
from shared.signatures import Signer, TrustConfig, Truststore, add_signature

UNCOVERED = "State not fully covered by signatures"
INVALID = "Signature validation failed"
# Certificates valid around the real present: the daemon checks them at its wall clock.
TODAY = dt.datetime.now(dt.UTC)
VALIDITY = {"not_before": TODAY - dt.timedelta(days=2), "not_after": TODAY + dt.timedelta(days=30)}


def _pki():
    root = issue("pvtwin device test root", ca=True, **VALIDITY)
    signer = issue("pvtwin device test signer", issuer=root, **VALIDITY)
    stranger = issue("pvtwin stranger", ca=True, **VALIDITY)  # self-signed, trusted by nobody
    return root, signer, stranger


def sign(doc: dict, issued, name: str = "all") -> dict:
    """Every entry covered (strict needs it); the signature's own file is excluded."""
    signer = Signer(issued.key, (issued.cert,))
    return add_signature(doc, signer, name=name, include=["**"], exclude=[f"_sigs/{name}.json"])


def write(path: Path, doc: dict) -> Path:
    path.write_bytes(canonical.dump_bytes(doc))
    return path


def tampered(doc: dict) -> dict:
    """The same state with a covered value changed after signing (a group timeout)."""
    out = json.loads(json.dumps(doc))
    out["groups.json"][0]["timeout"] += 1
    return out


# ------------------------------------------------------------------ the verdict (no root)


def test_verdict_function_follows_the_mode():
    root, signer, stranger = _pki()
    doc = {"#spec": "pantavisor-service-system@1", "bsp/run.json": {"linux": "k"}}
    signed = sign(doc, signer)
    trust = TrustConfig(truststore=Truststore.from_bytes([root.cert_pem]))
    strict = make_verifier(trust, "strict")
    assert strict(signed) is None
    assert strict(doc) == UNCOVERED
    assert strict(sign(doc, stranger)) == INVALID
    bad = dict(signed, **{"bsp/run.json": {"linux": "other"}})
    assert strict(bad) == INVALID
    assert make_verifier(trust, "lenient")(doc) is None
    assert make_verifier(trust, "lenient")(bad) == INVALID
    assert make_verifier(trust, "audit")(doc) is None
    # the wall clock matters: the same signature is refused once the certificate expired
    later = make_verifier(trust, "strict", clock=lambda: TODAY + dt.timedelta(days=60))
    assert later(signed) == INVALID
    # a Config without a verifier checks against empty trust; disabled checks nothing
    assert signature_problem(doc, Config(secureboot_mode="strict")) == UNCOVERED
    assert signature_problem(signed, Config(secureboot_mode="lenient")) == INVALID
    assert signature_problem(bad, Config(secureboot_mode="disabled")) is None


def test_trust_options_read_the_store_and_fail_on_a_bad_path(tmp_path):
    root, _, _ = _pki()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "root.pem").write_bytes(root.cert_pem)
    trust = TrustOptions(truststore=tmp_path / "store").load()
    assert [c.subject for c in trust.truststore.certificates] == [root.cert.subject]
    from pvreal.truststore import TrustError

    with pytest.raises(TrustError) as err:
        TrustOptions(truststore=tmp_path / "missing").load()
    assert str(tmp_path / "missing") in str(err.value)


# ------------------------------------------------------------------ the device (root)


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    need_device()
    base = tmp_path_factory.mktemp("sigrevs")
    revs = Revisions(base, group_timeout=3)
    root, signer, stranger = _pki()
    store = base / "truststore"
    store.mkdir()
    (store / "root.pem").write_bytes(root.cert_pem)
    s0 = json.loads(revs.state("sb0", {"app1": {"tag": "a1"}}).read_text())
    s1 = json.loads(revs.state("sb1", {"app1": {"tag": "a2"}}).read_text())
    return {
        "revs": revs,
        "store": store,
        "s0": write(base / "s0-signed.json", sign(s0, signer)),
        "s1": s1,
        "s1_signed": sign(s1, signer),
        "s1_stranger": sign(s1, stranger),
    }


@pytest.fixture
def device(tmp_path, material):
    made: list[Daemon] = []

    def make(mode: str, state: Path | None = None, **kw) -> Daemon:
        d = Daemon(
            tmp_path / f"dev{len(made)}",
            extra_args=("--truststore", str(material["store"]), "--secureboot-mode", mode),
            **kw,
        )
        made.append(d)
        d.init(state or material["s0"], material["revs"].objects)
        d.start()
        return d

    yield make
    for d in made:
        d.stop()
        assert d.leftovers() == [], d.tail()


def upload_objects(d: Daemon, doc: dict, objects: Path) -> None:
    for key, value in doc.items():
        if isinstance(value, str) and len(value) == 64 and not key.startswith("#"):
            assert d.client.put_object(value, objects / value).ok


def settled_after_boot(d: Daemon, boots: int, timeout: float = 30.0) -> dict:
    """The status once the daemon has booted `boots` times and settled (before that, /status
    may still show the boot that asked for the reboot)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = d.wait_settled(timeout)
        if status["boots"] >= boots:
            return status
        time.sleep(0.05)
    raise AssertionError(f"not {boots} boots: {d.status()}\n{d.tail()}")


@pytest.mark.xdist_group("real")
def test_strict_accepts_signed_and_refuses_the_rest_changing_nothing(device, material):
    d = device("strict", network=False)
    objects = material["revs"].objects
    upload_objects(d, material["s1"], objects)
    d.wait_settled()
    before = tree_digest(d.storage)
    refused = {
        "locals/unsigned": (material["s1"], UNCOVERED),
        "locals/stranger": (material["s1_stranger"], INVALID),
        "locals/tampered": (tampered(material["s1_signed"]), INVALID),
    }
    for rev, (doc, message) in refused.items():
        answer = d.client.put_step(rev, canonical.dump_bytes(doc))
        assert (answer.status, answer.error) == (422, message), (rev, answer.error)
    d.wait_settled()
    assert tree_digest(d.storage) == before
    assert not (d.storage / "trails" / "locals" / "unsigned").exists()
    # the correctly signed one is taken, and runs
    answer = d.client.put_step("locals/good", canonical.dump_bytes(material["s1_signed"]))
    assert answer.ok, answer.error
    assert d.client.progress("locals/good")["status-msg"] == "Update ready to be run"
    assert d.client.command("LOCAL_RUN", "locals/good").ok
    record = d.client.wait("locals/good", ("UPDATED",), timeout=30)
    assert record["status"] == "UPDATED", (record, d.tail())


@pytest.mark.xdist_group("real")
def test_lenient_takes_unsigned_but_not_a_broken_signature(device, material):
    d = device("lenient", network=False)
    upload_objects(d, material["s1"], material["revs"].objects)
    answer = d.client.put_step(
        "locals/broken", canonical.dump_bytes(tampered(material["s1_signed"]))
    )
    assert (answer.status, answer.error) == (422, INVALID)
    answer = d.client.put_step("locals/plain", canonical.dump_bytes(material["s1"]))
    assert answer.ok, answer.error
    assert d.client.progress("locals/plain")["status-msg"] == "Update ready to be run"


@pytest.mark.xdist_group("real")
def test_local_run_and_try_boot_check_the_state_on_disk(device, material):
    d = device("strict", network=False)
    upload_objects(d, material["s1"], material["revs"].objects)
    signed = canonical.dump_bytes(material["s1_signed"])
    bad = canonical.dump_bytes(tampered(material["s1_signed"]))
    # accepted on intake, altered on disk afterwards: LOCAL_RUN loads it again → WONTGO
    assert d.client.put_step("locals/later", signed).ok
    (d.storage / "trails" / "locals" / "later" / ".pvr" / "json").write_bytes(bad)
    assert d.client.command("LOCAL_RUN", "locals/later").ok
    record = d.client.wait("locals/later", ("WONTGO",), timeout=30)
    assert (record["status"], record["status-msg"]) == ("WONTGO", INVALID), d.tail()
    assert d.status()["running"] == "0"
    # UPDATED, then altered before the reboot: the try-boot refuses it → ERROR, rollback to 0
    assert d.client.put_step("locals/tried", signed).ok
    assert d.client.command("LOCAL_RUN", "locals/tried").ok
    record = d.client.wait("locals/tried", ("UPDATED",), timeout=30)
    assert record["status"] == "UPDATED", (record, d.tail())
    (d.storage / "trails" / "locals" / "tried" / ".pvr" / "json").write_bytes(bad)
    assert d.client.command("REBOOT_DEVICE").ok
    record = d.client.wait("locals/tried", ("ERROR",), timeout=30)
    assert (record["status"], record["status-msg"]) == ("ERROR", INVALID), d.tail()
    status = settled_after_boot(d, 3)  # factory, the try-boot, the rollback boot
    assert (
        status["boots"] == 3
        and status["running"] == "0"
        and status["pv_rev"] == "0"
        and status["pv_try"] == ""
    )
