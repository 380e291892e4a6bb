"""Read what a rendered HTML page carries: its CSRF token, the errors beside its fields."""

from __future__ import annotations

import re


def csrf_of(html: str) -> str:
    """The CSRF token a rendered page carries in its forms."""
    match = re.search(r'name="_csrf" value="([0-9a-f]{64})"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def field_errors(html: str) -> dict[str, str]:
    """The inline error shown beside each field, by field name."""
    return dict(re.findall(r'<p class="field-error" id="e-([a-z_]+)">([^<]*)</p>', html))
