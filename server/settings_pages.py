"""The settings page and the theme switch."""

from __future__ import annotations

from aiohttp import web

from core.errors import Invalid
from models.settings import SettingsInvalid
from server.forms import (
    CHOICES,
    SETTINGS_FIELDS,
    FormInvalid,
    read_fields,
    settings_form_values,
    settings_input,
)
from server.keys import COMMANDS, STATE
from server.page_support import (
    THEME_COOKIE,
    YEAR,
    form_of,
    redirect,
    render,
    safe_next,
    url_of,
)


async def settings_page(request: web.Request) -> web.Response:
    """Every global setting in one form."""
    values = settings_form_values(request.app[STATE].settings)
    return render(request, "settings.html", {"values": values, "errors": {},
                                             "choices": CHOICES})


async def settings_save(request: web.Request) -> web.StreamResponse:
    """Validate and save the settings as one event; they apply without a restart."""
    values, too_long = read_fields(await form_of(request), SETTINGS_FIELDS)
    try:
        if too_long:
            raise FormInvalid(too_long)
        await request.app[COMMANDS].change_settings(settings_input(values))
    except (FormInvalid, SettingsInvalid, Invalid) as err:
        errors = getattr(err, "errors", None) or {"_": str(err)}
        errors = {("retention" if k in ("default_retention",) else k): v
                  for k, v in errors.items()}
        return render(request, "settings.html",
                      {"values": values, "errors": errors, "choices": CHOICES}, status=422)
    return redirect(url_of(request, "settings"), ("ok", "Settings saved."))


async def theme_switch(request: web.Request) -> web.StreamResponse:
    """Remember this browser's theme choice (system, light or dark) in a cookie."""
    form = await form_of(request)
    theme = form.get("theme")
    back = safe_next(request, form.get("next"), url_of(request, "dashboard"))
    response = redirect(back)
    if theme in CHOICES["theme"]:
        response.set_cookie(THEME_COOKIE, str(theme), max_age=YEAR, path="/",
                            samesite="Strict", httponly=True)
    return response


def setup_settings_routes(app: web.Application) -> None:
    """Declare the settings and theme routes, by name."""
    r = app.router
    r.add_get("/settings", settings_page, name="settings")
    r.add_post("/settings", settings_save, name="settings-save")
    r.add_post("/theme", theme_switch, name="theme")
