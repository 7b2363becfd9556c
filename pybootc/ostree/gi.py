"""libostree through PyGObject, loaded once with the GIR version this project uses."""

import gi

gi.require_version("OSTree", "1.0")

from gi.repository import Gio, GLib, OSTree  # noqa: E402

__all__ = ["GLib", "Gio", "OSTree"]
