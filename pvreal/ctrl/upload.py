"""Put a revision on a running device over pv-ctrl (`pvreal ctl put`): the objects it lacks,
then the state as `steps/<rev>` (not run yet)."""

from __future__ import annotations

from pvreal.ctrl.client import CtrlClient, CtrlError
from pvreal.objectstore import ObjectStore, is_sha
from shared import canonical


def upload_revision(
    client: CtrlClient, rev: str, data: bytes, objects: ObjectStore, source: str
) -> int:
    """Upload the state `data` (read from `source`) as `rev`; returns how many objects were sent."""
    state = canonical.loads_object(data, source=source)
    present = {o["sha256"] for o in client.checked("GET", "/objects").json()}
    uploaded = 0
    for sha in sorted({v for k, v in state.items() if k != "#spec" and is_sha(v)} - present):
        answer = client.put_object(sha, objects.path(sha))
        if not answer.ok:
            raise CtrlError(f"object {sha}: {answer.status} {answer.error}", source=str(client.path))
        uploaded += 1
    answer = client.put_step(rev, data)
    if not answer.ok:
        raise CtrlError(f"{rev}: {answer.status} {answer.error}", source=source)
    return uploaded
