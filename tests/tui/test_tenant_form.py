"""The tenant form (e, or enter on a tenant's row): weight and limits set on the real server.

Checked on the server, not only on screen: the PATCH changed exactly the fields edited, an emptied
limit went back to the default (null), and a refused value left the tenant as it was, with the
error shown under the form and the form still open for a correction.
"""

from __future__ import annotations

from textual.widgets import Input

from tests.tui.helpers import connected, dashboard, http, http_async, message, type_into, wait_until
from tui.screens.tenant_limits import TenantLimitsScreen
from tui.widgets.tenants_table import TenantsTable

SIZE = (100, 30)
NAME = "limits-tui"


async def _tenant(server) -> dict:
    _, body = await http_async(server, "GET", "/admin/tenants")
    return next(t for t in body["tenants"] if t["name"] == NAME)


async def _open_form(pilot, app) -> TenantLimitsScreen:
    table = app.query_one(TenantsTable)
    await wait_until(pilot, lambda: any(r[0] == NAME for r in table.cells()), "the tenant's row")
    table.focus()
    table.move_cursor(row=[r[0] for r in table.cells()].index(NAME))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, TenantLimitsScreen), "the tenant form")
    return app.screen


def _error(screen: TenantLimitsScreen) -> str:
    return str(screen.query_one("#limits-error").render())


async def test_edit_weight_and_limits_of_a_tenant(server):
    status, body = http(server, "POST", "/admin/tenants", {"name": NAME, "max_queued_tokens": 5000,
                                                           "token_quota_per_day": 100000})
    assert status == 201, body
    app = dashboard(server)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        form = await _open_form(pilot, app)
        assert form.query_one("#max_queued_tokens", Input).value == "5000"
        assert form.query_one("#weight", Input).value == "1"
        await type_into(pilot, "#weight", "2.5")
        await type_into(pilot, "#max_concurrent_requests", "3")
        await type_into(pilot, "#max_queued_tokens", "")  # emptied: back to the server's default
        await pilot.click("#submit")
        await wait_until(pilot, lambda: not isinstance(app.screen, TenantLimitsScreen), "the form to close")
        assert f"tenant '{NAME}' updated" in message(app) and "weight 2.5" in message(app), message(app)
        tenant = await _tenant(server)
        assert (tenant["weight"], tenant["max_concurrent_requests"], tenant["max_queued_tokens"],
                tenant["token_quota_per_day"]) == (2.5, 3, None, 100000)

        form = await _open_form(pilot, app)
        assert form.query_one("#weight", Input).value == "2.5"
        await type_into(pilot, "#weight", "heavy")
        await pilot.press("enter")
        await wait_until(pilot, lambda: "weight: enter a positive number" in _error(form), "the local error")
        assert form.query_one("#weight", Input).has_class("-invalid")
        await type_into(pilot, "#weight", "5000")  # a number, but past the server's bound
        await pilot.press("enter")
        await wait_until(pilot, lambda: "weight must be a number from" in _error(form), "the refusal")
        assert isinstance(app.screen, TenantLimitsScreen)
        assert form.query_one("#weight", Input).has_class("-invalid")
        await pilot.press("escape")
        assert not isinstance(app.screen, TenantLimitsScreen)
    assert (await _tenant(server))["weight"] == 2.5
