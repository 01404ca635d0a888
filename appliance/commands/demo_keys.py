"""The demo's two keys: a fresh tenant key for its curl lines, and the admin key of its dashboard.

The control store keeps only hashes. The dashboard's admin key needs its plaintext on this machine
(the demo hands it to the dashboard, and prints it where there is no terminal), so it lives in
`<data dir>/demo-admin.key`, created 0600 before a byte is written to it and swapped in by rename.
A second `make run` on the same data dir reuses that key while it still authenticates as an admin and
the file is private; otherwise (file missing or unreadable, key revoked, a fresh control.db, the file
readable by others) it revokes the earlier demo admin keys and writes a new one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from appliance.server.store import ADMIN_TENANT, ControlStore

TENANT = "demo"
TENANT_KEY_NAME = "demo"
ADMIN_KEY_FILE = "demo-admin.key"
ADMIN_KEY_NAME = "demo-dashboard"


def tenant_key(store: ControlStore) -> str:
    """A fresh key for the `demo` tenant; earlier demo keys are revoked so they do not pile up."""
    store.create_tenant(TENANT, exist_ok=True)
    _revoke_named(store, TENANT, TENANT_KEY_NAME)
    return store.create_key(TENANT, "tenant", TENANT_KEY_NAME)[1]


def dashboard_key(store: ControlStore, data_dir: str | Path) -> str:
    """The demo dashboard's admin key: the one in the key file if it still works, else a new one."""
    path = admin_key_path(data_dir)
    key = _read_private(path)
    if key is not None and _is_admin(store, key):
        return key
    _revoke_named(store, ADMIN_TENANT, ADMIN_KEY_NAME)
    key = store.create_key(ADMIN_TENANT, "admin", ADMIN_KEY_NAME)[1]
    write_private(path, key + "\n")
    return key


def admin_key_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / ADMIN_KEY_FILE


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only from the first byte; replaces atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_private(path: Path) -> str | None:
    """The key in the file, or None when it is missing, empty, unreadable or readable by others."""
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            return None
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _is_admin(store: ControlStore, key: str) -> bool:
    principal = store.authenticate(key)
    return principal is not None and principal.is_admin


def _revoke_named(store: ControlStore, tenant: str, name: str) -> None:
    for old in store.list_keys(tenant):
        if old["name"] == name and not old["revoked_at"]:
            store.revoke_key(old["id"])
