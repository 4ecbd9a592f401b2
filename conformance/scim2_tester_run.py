"""Run scim2-tester (PyPI) against a running scimgate and fail unless every check passes.

Usage: scim2_tester_run.py URL TOKEN

scim2-tester 0.5.x has no generator for dateTime attributes: it fills them with a random UUID string, which its
own pydantic models then refuse before any request is sent (a client-side error, whatever the server does).
scimgate's workforce extension has startDate/endDate, so without help every check touching a User fails in the
tester itself. The shim below gives dateTime attributes a real datetime and changes nothing else; the checks
themselves run unmodified. `run.sh` also runs the stock `scim2 test` CLI, with no shim, against a gateway
loaded with the RFC 7643 schemas only.
"""

import datetime
import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient

import scim2_tester.checkers.patch_add as patch_add
import scim2_tester.checkers.patch_replace as patch_replace
import scim2_tester.filling as filling
from scim2_tester import Status, check_server

_original = filling.generate_random_value


def _with_datetimes(context, path, mutability=None, required=None):
    value = _original(context, path, mutability=mutability, required=required)
    if value is None:
        return value
    binding = path.resolve()
    if binding is not None and binding.target_type is datetime.datetime:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        return [now] if binding.target_is_multivalued else now
    return value


filling.generate_random_value = _with_datetimes
patch_add.generate_random_value = _with_datetimes
patch_replace.generate_random_value = _with_datetimes


def main() -> int:
    url, token = sys.argv[1], sys.argv[2]
    client = SyncSCIMClient(Client(base_url=url, headers={"Authorization": f"Bearer {token}"}))
    results = check_server(client)
    failed = 0
    for r in results:
        ok = r.status == Status.SUCCESS
        failed += 0 if ok else 1
        print(f"{r.status.name} {r.title}")
        if r.reason and not ok:
            print(f"  {r.reason}")
    passed = len(results) - failed
    print(f"scim2-tester: {passed} passed, {failed} failed")
    if not results:
        print("scim2-tester ran no checks")
        return 1
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
