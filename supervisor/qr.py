"""QR string -> PNG data URL, SVG, terminal text (segno). The raw QR string is a credential: callers never log it."""

from __future__ import annotations

import functools
import io

import segno


def _make(qr: str) -> segno.QRCode:
    # Error level L is what WhatsApp Web renders; a larger code scans worse from a laptop screen.
    return segno.make(qr, error="l", boost_error=False)


# Renderings are cached by QR string: a web app polls GET /qr every second or two while a QR (valid ~20 s) is shown,
# and rendering costs ~1-2 ms of the event loop each time. Small bound: a QR is only live while its tenant waits for
# a scan, so entries go stale within a minute; 64 covers many tenants pairing at once at a few hundred KiB at most.
_CACHE_SIZE = 64


@functools.lru_cache(maxsize=_CACHE_SIZE)
def png_bytes(qr: str, scale: int = 6) -> bytes:
    buf = io.BytesIO()
    _make(qr).save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()


@functools.lru_cache(maxsize=_CACHE_SIZE)
def png_data_url(qr: str, scale: int = 6) -> str:
    return _make(qr).png_data_uri(scale=scale, border=4)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def svg(qr: str, scale: int = 6) -> str:
    buf = io.BytesIO()
    _make(qr).save(buf, kind="svg", scale=scale, border=4, xmldecl=True)
    return buf.getvalue().decode("utf-8")


def terminal_text(qr: str, *, compact: bool = True) -> str:
    """Text for a terminal (half-block characters when compact); print it as is."""
    buf = io.StringIO()
    _make(qr).terminal(out=buf, compact=compact, border=2)
    return buf.getvalue()
