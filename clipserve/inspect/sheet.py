"""A plan's contact sheet as PNG bytes: decode with the PyAV executor, draw (``render``), encode."""

from __future__ import annotations

from clipserve.plan_models import ClipPlan


def contact_sheet_png(path: str, clip_plan: ClipPlan) -> bytes:
    """Decode ``clip_plan`` from ``path`` with the PyAV executor and draw its contact sheet (PNG bytes).

    The service runs it in a contact-sheet process (``ServiceState.submit_contact_sheet``).
    """
    from clipserve.executors.pyav import execute_plan
    from clipserve.inspect.render import encode_png, render_contact_sheet

    return encode_png(render_contact_sheet(clip_plan, execute_plan(path, clip_plan)))
